"""The zoo: Keras 3 models none of us wrote, built with random weights at small sizes.

Each builder returns ``(model, sample)``: the model (random weights, seeded) and a small
batch it takes (an array, or a dict by input name for multi-input models). The
architectures cover what issue 16 asks the service to open up: ``keras.applications``
networks (residual CNNs with nested blocks' merges), a multi-input tabular model with
Add / Concatenate / Multiply and a layer called twice, an Embedding + LSTM / GRU text model
on int32 tokens, a Sequential holding a functional backbone, a regression head, a
multi-output model and a subclassed model (``tests.zoo.custom``)."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

SEED = 16
BATCH = 3


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(SEED + offset)


def mobilenet():
    """keras.applications MobileNetV2, alpha 0.35, 32 x 32 RGB, 5 classes (~0.4 M params)."""
    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5
    )
    return model, _rng(1).uniform(0, 255, (BATCH, 32, 32, 3)).astype(np.float32)


def resnet():
    """keras.applications ResNet50 at 32 x 32 RGB, 5 classes (23.6 M params, 177 layers)."""
    keras.utils.set_random_seed(SEED)
    model = keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=5)
    return model, _rng(2).uniform(0, 255, (BATCH, 32, 32, 3)).astype(np.float32)


def tabular():
    """Two tabular inputs, residual blocks (Add), a gate (Multiply), a Concatenate, and one
    Dense layer called on two tensors (``shared`` and ``shared@1``); binary output."""
    keras.utils.set_random_seed(SEED)
    numeric = keras.Input((8,), name="numeric")
    extra = keras.Input((4,), name="extra")
    a = keras.layers.Dense(16, activation="relu", name="proj_numeric")(numeric)
    b = keras.layers.Dense(16, activation="tanh", name="proj_extra")(extra)
    shared = keras.layers.Dense(16, activation="relu", name="shared")
    a2 = keras.layers.Add(name="residual_a")([a, shared(a)])
    b2 = keras.layers.Add(name="residual_b")([b, shared(b)])
    gate = keras.layers.Dense(16, activation="sigmoid", name="gate")(b2)
    gated = keras.layers.Multiply(name="gated")([a2, gate])
    merged = keras.layers.Concatenate(name="merged")([gated, b2])
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(merged)
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    model = keras.Model([numeric, extra], out, name="tabular_residual")
    rng = _rng(3)
    sample = {
        "numeric": rng.normal(size=(BATCH, 8)).astype(np.float32),
        "extra": rng.normal(size=(BATCH, 4)).astype(np.float32),
    }
    return model, sample


VOCAB = 50
STEPS = 12


def text():
    """int32 token ids -> Embedding -> LSTM (every step) -> GRU (last step; its hidden
    states are served as ``gru:sequence``) -> 3 classes."""
    keras.utils.set_random_seed(SEED)
    tokens = keras.Input((STEPS,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, 8, name="embedding")(tokens)
    x = keras.layers.LSTM(6, return_sequences=True, name="lstm")(x)
    x = keras.layers.GRU(5, name="gru")(x)
    out = keras.layers.Dense(3, activation="softmax", name="label")(x)
    model = keras.Model(tokens, out, name="text_rnn")
    return model, _rng(4).integers(0, VOCAB, (BATCH, STEPS)).astype(np.int32)


def sequential():
    """A Sequential holding a functional conv backbone (its layers are ``backbone/...``)
    and a Dense head; 16 x 16 grey images, 4 classes."""
    keras.utils.set_random_seed(SEED)
    inp = keras.Input((16, 16, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inp)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    backbone = keras.Model(inp, x, name="backbone")
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1), name="image"),
            backbone,
            keras.layers.Dense(12, activation="relu", name="neck"),
            keras.layers.Dense(4, activation="softmax", name="classes"),
        ],
        name="seq_with_backbone",
    )
    return model, _rng(5).uniform(0, 255, (BATCH, 16, 16, 1)).astype(np.float32)


def regression():
    """Tabular regression: 6 features -> 2 raw outputs (no activation)."""
    keras.utils.set_random_seed(SEED)
    inp = keras.Input((6,), name="features")
    x = keras.layers.Dense(10, activation="gelu", name="dense_a")(inp)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.Dense(10, activation="elu", name="dense_b")(x)
    out = keras.layers.Dense(2, name="target")(x)
    model = keras.Model(inp, out, name="regressor")
    return model, _rng(6).normal(size=(BATCH, 6)).astype(np.float32)


def multi_output():
    """One tabular input, three heads: binary ``churn``, 4-class ``segment``, raw ``spend``."""
    keras.utils.set_random_seed(SEED)
    inp = keras.Input((10,), name="customer")
    trunk = keras.layers.Dense(12, activation="relu", name="trunk")(inp)
    churn = keras.layers.Dense(1, activation="sigmoid", name="churn")(trunk)
    segment = keras.layers.Dense(4, activation="softmax", name="segment")(trunk)
    spend = keras.layers.Dense(1, name="spend")(trunk)
    model = keras.Model(inp, [churn, segment, spend], name="multi_head")
    return model, _rng(7).normal(size=(BATCH, 10)).astype(np.float32)


def subclassed():
    """``tests.zoo.custom.TinyResidual`` built on 6 features: no static graph."""
    from tests.zoo.custom import TinyResidual

    keras.utils.set_random_seed(SEED)
    model = TinyResidual(units=8, classes=3, name="tiny_residual")
    sample = _rng(8).normal(size=(BATCH, 6)).astype(np.float32)
    model(sample)  # builds it (records the input shape saved with the model)
    return model, sample


# name in the repository -> builder
ZOO: dict[str, Callable] = {
    "mobilenet": mobilenet,
    "resnet": resnet,
    "tabular": tabular,
    "text": text,
    "sequential": sequential,
    "regression": regression,
    "multi-output": multi_output,
    "subclassed": subclassed,
}
GRAPH_MODELS = [n for n in ZOO if n != "subclassed"]


def drop_bare(repo, name: str, model) -> None:
    """``repo/<name>/1/model.keras`` and nothing else: a bare version."""
    from pathlib import Path

    folder = Path(repo) / name / "1"
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
