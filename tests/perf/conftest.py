"""Fixtures: tiny models trained by the real pipeline (digits CNN, fraud MLP on a slice of
the card data) in a session repository, with their test splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "configs"
DATA_DIR = Path(os.environ.get("LAYERSCOPE_DATA_DIR", ROOT.parent / "shared" / "datasets"))
HAVE_CARDS = (DATA_DIR / "creditcard").is_dir()


def test_split(config: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test split the training run held out (same config, same seed)."""
    from training.config import load_config
    from training.train import load_data, split_data

    cfg = load_config(config)
    splits = split_data(load_data(cfg, data_dir=DATA_DIR), cfg)
    return splits.x_test, splits.y_test


@pytest.fixture(scope="session")
def perf_repo(tmp_path_factory) -> Path:
    """``digits/1`` always; ``fraud-small/1`` when the card data is present."""
    from training.train import train

    root = tmp_path_factory.mktemp("perf-models")
    train(CONFIGS / "digits.yaml", models_root=root, data_dir=DATA_DIR)
    if HAVE_CARDS:
        train(CONFIGS / "fraud_small.yaml", models_root=root, data_dir=DATA_DIR)
    return root


@pytest.fixture(scope="session")
def splits(perf_repo) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {"digits": test_split(CONFIGS / "digits.yaml")}
    if HAVE_CARDS:
        out["fraud-small"] = test_split(CONFIGS / "fraud_small.yaml")
    return out


@pytest.fixture(scope="session")
def model_names(perf_repo) -> list[str]:
    return sorted(p.name for p in perf_repo.iterdir() if (p / "1").is_dir())
