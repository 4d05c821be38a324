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
    if config.is_binary:
        loss = "binary_crossentropy"
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"),
                   keras.metrics.AUC(curve="PR", name="pr_auc"),
                   keras.metrics.AUC(curve="ROC", name="roc_auc")]
    else:
        loss = "sparse_categorical_crossentropy"
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=make_optimizer(config.training, steps_per_epoch), loss=loss,
                  metrics=metrics)
    return model
