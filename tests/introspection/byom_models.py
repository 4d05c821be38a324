"""Small bring-your-own Keras models with random weights (none of them from our training
pipeline), shared by test_byom.py and the explorer-page test, and ``save_zoo`` dropping
them bare (only ``model.keras``, plus a reference sample for some) into a repository."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402

VOCAB, DIM, UNITS = 40, 8, 6


@keras.saving.register_keras_serializable(package="layerscope_tests")
class TinySubclassed(keras.Model):
    """No static graph: predictions only."""

    def __init__(self, units: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.head = keras.layers.Dense(units, activation="softmax")

    def call(self, x):
        return self.head(self.hidden(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _cnn() -> keras.Model:
    inner = keras.Input((16, 16, 3), name="backbone_in")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(inner)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_b")(h)
    backbone = keras.Model(inner, h, name="backbone")
    image = keras.Input((16, 16, 3), name="image")
    feats = backbone(image)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(feats)
    out = keras.layers.Dense(3, activation="softmax", name="classes")(pooled)
    return keras.Model(image, out, name="cnn")


def _text() -> keras.Model:
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    e = keras.layers.Embedding(VOCAB, DIM, mask_zero=True, name="embedding")(tokens)
    h = keras.layers.LSTM(UNITS, name="lstm")(e)
    out = keras.layers.Dense(1, activation="sigmoid", name="positive")(h)
    return keras.Model(tokens, out, name="text")


def _two_inputs() -> keras.Model:
    a = keras.Input((4,), name="account")
    b = keras.Input((3,), name="usage")
    h = keras.layers.Concatenate(name="concat")([a, b])
    h = keras.layers.Dense(8, activation="relu", name="dense_1")(h)
    skip = keras.layers.Dense(8, name="skip")(a)
    h = keras.layers.Add(name="add")([h, skip])
    out = keras.layers.Dense(3, activation="softmax", name="plan")(h)
    return keras.Model([a, b], out, name="two_in")


def _regression() -> keras.Model:
    x = keras.Input((5,), name="x")
    h = keras.layers.Dense(8, activation="tanh", name="hidden")(x)
    out = keras.layers.Dense(2, name="value")(h)
    return keras.Model(x, out, name="reg")


def _two_outputs() -> keras.Model:
    x = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="relu", name="trunk")(x)
    churn = keras.layers.Dense(1, activation="sigmoid", name="churn")(h)
    spend = keras.layers.Dense(1, name="spend")(h)
    return keras.Model(x, [churn, spend], name="two_out")


def _subclassed() -> keras.Model:
    model = TinySubclassed(3)
    model(np.zeros((1, 5), np.float32))
    return model


def tokens(n: int, seed: int, length: int = 7) -> np.ndarray:
    """Token ids 1..VOCAB-1, the last positions of every other row padded with 0."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, VOCAB, (n, length)).astype(np.int32)
    x[1::2, length - 2 :] = 0
    return x


def build_zoo() -> dict[str, keras.Model]:
    keras.utils.set_random_seed(7)
    return {
        "cnn": _cnn(),
        "text": _text(),
        "two_in": _two_inputs(),
        "reg": _regression(),
        "two_out": _two_outputs(),
        "sub": _subclassed(),
    }


def save_zoo(root: Path) -> dict[str, keras.Model]:
    """Every zoo model as ``root/<name>/1/model.keras``; reference samples for cnn, text
    and two_in (reg, two_out and sub have none)."""
    rng = np.random.default_rng(0)
    models = build_zoo()
    for name, model in models.items():
        folder = root / name / "1"
        folder.mkdir(parents=True)
        model.save(folder / "model.keras")
    np.savez(
        root / "two_in" / "1" / "reference.npz",
        account=rng.normal(size=(40, 4)).astype(np.float32),
        usage=rng.normal(size=(40, 3)).astype(np.float32),
        y=rng.integers(0, 3, 40),
    )
    np.savez(root / "text" / "1" / "reference.npz", x=tokens(12, 1), y=np.arange(12) % 2)
    np.savez(
        root / "cnn" / "1" / "reference.npz",
        x=rng.uniform(0, 1, (10, 16, 16, 3)).astype(np.float32),
    )
    return models
