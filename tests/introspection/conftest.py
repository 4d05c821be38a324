"""Fixtures: a tmp repository with trained tiny models and their loaded runtimes."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from training.builder import build_model

from .helpers import (
    FEATURES,
    image_config,
    patch_images,
    publish,
    tabular_config,
    transactions,
)


@pytest.fixture(scope="session")
def repo(tmp_path_factory) -> Path:
    """A repository with a trained tiny image model ``patch`` and tabular model ``txn``."""
    root = tmp_path_factory.mktemp("repo")
    keras.utils.set_random_seed(0)

    x, y, _ = patch_images(640, seed=1)
    img = build_model(image_config(), input_shape=(28, 28, 1), num_classes=2)
    img.compile(keras.optimizers.Adam(0.003), "sparse_categorical_crossentropy")
    img.fit(x, y, epochs=6, batch_size=32, verbose=0)
    publish(
        root,
        img,
        name="patch",
        task="multiclass_classification",
        class_names=["empty", "patch"],
        input_spec={
            "kind": "image",
            "shape": [28, 28, 1],
            "dtype": "float32",
            "value_range": [0, 255],
        },
        ref_x=x[:64],
        ref_y=y[:64],
        config=image_config(),
        threshold=None,
    )

    # its own seed: the MLP's weights must not depend on how many draws the image model's
    # stack (models/fashion/model.yaml, shrunk) took before it
    keras.utils.set_random_seed(2)
    tx, ty = transactions(1500, seed=2)
    mlp = build_model(tabular_config(), input_shape=(30,), num_classes=2, adapt_data=tx)
    mlp.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    mlp.fit(tx, ty, epochs=15, batch_size=64, verbose=0)
    publish(
        root,
        mlp,
        name="txn",
        task="binary_classification",
        class_names=["legit", "fraud"],
        input_spec={"kind": "tabular", "features": FEATURES, "shape": [30], "dtype": "float32"},
        ref_x=tx[:128],
        ref_y=ty[:128],
        config=tabular_config(),
        threshold=0.5,
    )
    return root


@pytest.fixture(scope="session")
def runtimes(repo):
    """Loaded KerasRuntime per model name."""
    from service.runtime import KerasRuntime

    out = {}
    for name in ("patch", "txn"):
        rt = KerasRuntime(repo / name / "1")
        rt.load()
        out[name] = rt
    return out
