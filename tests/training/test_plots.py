"""Every plot writes a decodable PNG, creating parent folders."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from training import plots


def assert_png(path, min_size=(200, 150)):
    assert path.is_file()
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        im.load()


def test_backend_is_agg():
    assert matplotlib.get_backend().lower() == "agg"


def test_plot_history(tmp_path):
    history = {
        "loss": [0.9, 0.6, 0.4], "val_loss": [1.0, 0.7, 0.6],
        "accuracy": [0.6, 0.8, 0.9], "val_accuracy": [0.55, 0.75, 0.8],
        "pr_auc": [0.3, 0.5, 0.7], "learning_rate": [0.001, 0.001, 0.0005],
    }
    path = tmp_path / "a" / "b" / "history.png"
    plots.plot_history(history, path)
    assert_png(path)


def test_plot_history_empty(tmp_path):
    plots.plot_history({}, tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png", (50, 50))


def test_plot_confusion(tmp_path):
    rng = np.random.default_rng(0)
    cm = (np.eye(10) * 900 + rng.integers(0, 20, (10, 10))).astype(int).tolist()
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    path = tmp_path / "plots" / "confusion.png"
    plots.plot_confusion(cm, names, path)
    assert_png(path)
    plots.plot_confusion([[5, 1], [0, 0]], ["legit", "fraud"], tmp_path / "binary.png")
    assert_png(tmp_path / "binary.png")


def test_plot_confusion_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="does not match 3 class names"):
        plots.plot_confusion([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "x.png")


def test_plot_pr_curve(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 400), 0, 1)
    b = np.clip(0.2 * y + rng.uniform(0, 0.8, 400), 0, 1)
    plots.plot_pr_curve(y, p, 0.5, tmp_path / "pr" / "pr_curve.png", baseline_p=b)
    assert_png(tmp_path / "pr" / "pr_curve.png")
    plots.plot_pr_curve(y, p.reshape(-1, 1), 0.99, tmp_path / "no_baseline.png")
    assert_png(tmp_path / "no_baseline.png")


def test_plot_pr_curve_needs_positives(tmp_path):
    with pytest.raises(ValueError, match="at least one positive"):
        plots.plot_pr_curve([0, 0], [0.1, 0.2], 0.5, tmp_path / "x.png")


def test_plot_sweep(tmp_path):
    rows = [
        {"label": "1x16 relu", "params": 513, "val_pr_auc": 0.71, "overfit": False},
        {"label": "2x64 relu", "params": 6209, "val_pr_auc": 0.78, "overfit": False},
        {"label": "4x256 tanh", "params": 205_569, "val_pr_auc": 0.74, "overfit": True},
        {"label": "failed", "params": 900, "val_pr_auc": None, "overfit": False},
    ]
    path = tmp_path / "sweep" / "sweep.png"
    plots.plot_sweep(rows, path, "val_pr_auc")
    assert_png(path)
    plots.plot_sweep([], tmp_path / "none.png", "val_accuracy")
    assert_png(tmp_path / "none.png", (50, 50))
