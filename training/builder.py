"""Build a named Keras functional model from a validated config.

Layer names follow docs/DESIGN.md (``input``, ``normalization``/``rescaling``, the hidden
names from the config, ``output``) because the service addresses layers by name. Activations
are layer arguments (no Activation layers) and there are no Lambda layers, so the saved model
loads with ``safe_mode=True`` and a dense layer's output is its activated output.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from training.config import ModelConfig, load_config


def _regularizer(l1: float, l2: float):
    if not l1 and not l2:
        return None
    return keras.regularizers.L1L2(l1=l1, l2=l2)


def make_layer(spec: dict[str, Any]) -> keras.layers.Layer:
    """One hidden layer from its validated spec (see training.config.LAYER_FIELDS)."""
    kind, name = spec["kind"], spec["name"]
    if kind == "dense":
        return keras.layers.Dense(spec["units"], activation=spec["activation"],
                                  use_bias=spec["use_bias"],
                                  kernel_regularizer=_regularizer(spec["l1"], spec["l2"]),
                                  name=name)
    if kind == "dropout":
        return keras.layers.Dropout(spec["rate"], name=name)
    if kind == "batch_norm":
        return keras.layers.BatchNormalization(momentum=spec["momentum"], name=name)
    if kind == "layer_norm":
        return keras.layers.LayerNormalization(name=name)
    if kind == "conv2d":
        return keras.layers.Conv2D(spec["filters"], tuple(spec["kernel"]),
                                   strides=tuple(spec["strides"]), padding=spec["padding"],
                                   activation=spec["activation"], use_bias=spec["use_bias"],
                                   kernel_regularizer=_regularizer(spec["l1"], spec["l2"]),
                                   name=name)
    if kind in ("max_pool", "avg_pool"):
        cls = keras.layers.MaxPooling2D if kind == "max_pool" else keras.layers.AveragePooling2D
        strides = tuple(spec["strides"]) if spec["strides"] else None
        return cls(tuple(spec["pool"]), strides=strides, padding=spec["padding"], name=name)
    if kind == "flatten":
        return keras.layers.Flatten(name=name)
    if kind == "global_avg_pool":
        return keras.layers.GlobalAveragePooling2D(name=name)
    if kind == "global_max_pool":
        return keras.layers.GlobalMaxPooling2D(name=name)
    if kind in RECURRENT:
        return RECURRENT[kind](
            spec["units"],
            return_sequences=spec["return_sequences"],
            dropout=spec["dropout"],
            recurrent_dropout=spec["recurrent_dropout"],
            name=name,
        )
    raise ValueError(f"Unknown layer kind. Received: kind={kind!r}")


RECURRENT = {
    "lstm": keras.layers.LSTM,
    "gru": keras.layers.GRU,
    "simple_rnn": keras.layers.SimpleRNN,
}


def build_model(config: ModelConfig | dict, *, input_shape: tuple[int, ...],
                num_classes: int, adapt_data: np.ndarray | None = None) -> keras.Model:
    """The functional model; ``adapt_data`` (training split only) fits the normalisation."""
    cfg = load_config(config)
    data = cfg.get_config()
    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="input")
    x = inputs
    if data["input"] == "tabular":
        if data["preprocessing"]["normalize"]:
            norm = keras.layers.Normalization(axis=-1, name="normalization")
            if adapt_data is not None:
                norm.adapt(np.asarray(adapt_data, dtype="float32"))
            else:
                # Identity statistics, so an un-adapted model is still well defined (tests).
                norm = keras.layers.Normalization(axis=-1, mean=np.zeros(input_shape[-1]),
                                                  variance=np.ones(input_shape[-1]),
                                                  name="normalization")
            x = norm(x)
    else:
        x = keras.layers.Rescaling(data["preprocessing"]["rescale"], name="rescaling")(x)
    for spec in data["hidden"]:
        if spec["kind"] in RECURRENT and len(x.shape) == 4:  # image rows as time steps
            h, w, c = x.shape[1:]
            x = keras.layers.Reshape((h, w * c), name="to_sequence")(x)
        x = make_layer(spec)(x)
    out = data["output"]
    units = 1 if cfg.is_binary else num_classes
    outputs = keras.layers.Dense(units, activation=out["activation"],
                                 kernel_regularizer=_regularizer(out["l1"], out["l2"]),
                                 name="output")(x)
    return keras.Model(inputs, outputs, name=cfg.name.replace("-", "_"))


def make_optimizer(training: dict, steps_per_epoch: int | None = None):
    """The configured optimizer; ``cosine`` decays the rate to 0 over all epochs, which
    steadies the last epochs (needs ``steps_per_epoch``)."""
    lr, wd = training["learning_rate"], training["weight_decay"]
    if training.get("lr_schedule", "constant") == "cosine":
        if not steps_per_epoch:
            raise ValueError("lr_schedule=cosine needs steps_per_epoch. "
                             f"Received: steps_per_epoch={steps_per_epoch}")
        lr = keras.optimizers.schedules.CosineDecay(
            lr, decay_steps=max(1, training["epochs"] * steps_per_epoch))
    name = training["optimizer"]
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=wd or 0.004)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd or None)
    raise ValueError(f"Unknown optimizer. Received: optimizer={name!r}")


def compile_model(model: keras.Model, config: ModelConfig,
                  steps_per_epoch: int | None = None) -> keras.Model:
    """Loss and metrics whose logged names match config.monitor_choices()."""
    smoothing = config.training.get("label_smoothing", 0.0)
    if config.is_binary:
        loss = (keras.losses.BinaryCrossentropy(label_smoothing=smoothing) if smoothing
                else "binary_crossentropy")
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"),
                   keras.metrics.AUC(curve="PR", name="pr_auc"),
                   keras.metrics.AUC(curve="ROC", name="roc_auc")]
    elif smoothing:  # smoothing needs one-hot targets: fit on fit_labels(...)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        loss = "sparse_categorical_crossentropy"
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=make_optimizer(config.training, steps_per_epoch), loss=loss,
                  metrics=metrics)
    return model


# --------------------------------------------------------------------------- fit inputs


def fit_labels(config: ModelConfig, y: np.ndarray, num_classes: int) -> np.ndarray:
    """The targets ``fit`` needs for this config's loss: the class indices, or one-hot rows
    when a multiclass model is trained with label smoothing (see :func:`compile_model`)."""
    if config.is_binary or not config.training.get("label_smoothing", 0.0):
        return y
    return np.eye(num_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]


def augment_batch(x: np.ndarray, spec: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """A randomly changed copy of a batch of raw images (N, H, W, C), per
    ``training.augment``: a mirror image with probability 1/2 (``flip_horizontal``), a shift
    of up to ``translate`` pixels each way (zero fill), a zeroed ``cutout`` x ``cutout``
    square centred anywhere in the image. The input pipeline applies it to training
    batches only; the model never holds it."""
    x = np.array(x, dtype=np.float32, copy=True)
    n, h, w = x.shape[:3]
    if spec.get("flip_horizontal"):
        flip = rng.random(n) < 0.5
        x[flip] = x[flip, :, ::-1]
    shift = spec.get("translate", 0)
    if shift:
        padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
        dy = rng.integers(0, 2 * shift + 1, n)
        dx = rng.integers(0, 2 * shift + 1, n)
        for code in np.unique(dy * (2 * shift + 1) + dx):  # one slice per distinct shift
            i, j = divmod(int(code), 2 * shift + 1)
            rows = (dy == i) & (dx == j)
            x[rows] = padded[rows, i:i + h, j:j + w]
    side = spec.get("cutout", 0)
    if side:
        top = rng.integers(0, h, n) - side // 2
        left = rng.integers(0, w, n) - side // 2
        ii, jj = np.arange(h), np.arange(w)
        in_rows = (ii >= top[:, None]) & (ii < top[:, None] + side)
        in_cols = (jj >= left[:, None]) & (jj < left[:, None] + side)
        x[in_rows[:, :, None] & in_cols[:, None, :]] = 0.0
    return x


def augmented(batches: Any, spec: dict[str, Any], seed: int) -> Any:
    """A ``keras.utils.PyDataset`` of ``batches`` (a PyDataset of (x, y[, w]) batches) with
    :func:`augment_batch` applied to every x; the random draws depend on (seed, epoch,
    batch) alone, so a run is repeatable."""

    class Augmented(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0

        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, k: int):
            x, *rest = batches[k]
            rng = np.random.default_rng([int(seed), self.epoch, int(k)])
            return (augment_batch(x, spec, rng), *rest)

        def on_epoch_end(self):
            self.epoch += 1
            batches.on_epoch_end()

    return Augmented()
