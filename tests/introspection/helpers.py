"""Helpers for the introspection tests: tiny real models built by training/builder.py from the
committed model.yaml layer stacks (shrunk), trained a few epochs, published into a tmp
repository with training/publish.py, and loaded by the service's KerasRuntime."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from training.publish import layer_table, stage_version  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]
PATCH = 7  # side of the bright square in the image data set


def _yaml(name: str) -> dict | None:
    path = ROOT / "models" / name / "model.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def image_config() -> dict:
    """fashion's model.yaml with every width shrunk (same layer kinds and order)."""
    cfg = _yaml("fashion") or {
        "name": "fashion",
        "task": "multiclass_classification",
        "dataset": {"name": "fashion_mnist"},
        "input": "image",
        "hidden": [
            {"kind": "conv2d", "filters": 32},
            {"kind": "batch_norm"},
            {"kind": "max_pool"},
            {"kind": "conv2d", "filters": 64},
            {"kind": "batch_norm"},
            {"kind": "max_pool"},
            {"kind": "flatten"},
            {"kind": "dropout", "rate": 0.3},
            {"kind": "dense", "units": 128},
            {"kind": "dropout", "rate": 0.3},
        ],
    }
    cfg = dict(cfg, name="patch")
    small = {32: 4, 64: 8, 128: 16}
    cfg["hidden"] = [
        dict(h, **{k: small.get(h[k], 8) for k in ("filters", "units") if k in h})
        for h in cfg["hidden"]
    ]
    for h in cfg["hidden"]:  # few training steps: let batch-norm statistics converge
        if h["kind"] == "batch_norm":
            h["momentum"] = 0.8
    return cfg


def last_conv() -> str:
    """The name the training config gives the last conv2d layer of :func:`image_config`
    (grad-CAM's default layer)."""
    from training.config import load_config

    return [s["name"] for s in load_config(image_config())["hidden"] if s["kind"] == "conv2d"][-1]


def tabular_config() -> dict:
    """fraud's model.yaml (when committed) shrunk; else the same kinds of layers by hand."""
    cfg = _yaml("fraud") or {
        "name": "fraud",
        "task": "binary_classification",
        "dataset": {"name": "creditcard"},
        "input": "tabular",
        "preprocessing": {"normalize": True},
        "hidden": [
            {"kind": "dense", "units": 64, "activation": "relu"},
            {"kind": "dropout", "rate": 0.2},
            {"kind": "dense", "units": 32, "activation": "relu"},
            {"kind": "dense", "units": 16, "activation": "tanh"},
        ],
    }
    cfg = dict(cfg, name="txn")
    cfg["hidden"] = [
        dict(h, **({"units": min(h["units"], 12)} if "units" in h else {})) for h in cfg["hidden"]
    ]
    return cfg


def patch_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw 0..255 images 28x28x1: noise; class 1 adds a bright square inside one quadrant.
    Returns (x, y, quadrant) with quadrant 0..3 = TL, TR, BL, BR (-1 for class 0)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 90, size=(n, 28, 28, 1)).astype(np.float32)
    y = np.arange(n) % 2
    quad = np.where(y == 1, (np.arange(n) // 2) % 4, -1)
    for i in np.flatnonzero(y):
        top = (quad[i] // 2) * 14 + rng.integers(1, 14 - PATCH)
        left = (quad[i] % 2) * 14 + rng.integers(1, 14 - PATCH)
        x[i, top : top + PATCH, left : left + PATCH, 0] = 255.0
    return x, y, quad


def transactions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Card-transaction-shaped rows (Time, V1..V28, Amount) with a learnable rule."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 30)).astype(np.float32)
    x[:, 0] = rng.uniform(0, 170_000, n)
    x[:, 29] = rng.exponential(80.0, n)
    y = ((x[:, 1] + 0.8 * x[:, 2] - 0.6 * x[:, 3] + x[:, 29] / 200) > 1.0).astype(np.int32)
    return x, y


def publish(
    root: Path,
    model: keras.Model,
    *,
    name: str,
    task: str,
    class_names: list[str],
    input_spec: dict,
    ref_x: np.ndarray,
    ref_y: np.ndarray,
    config: dict,
    threshold: float | None,
) -> Path:
    """One version in the DESIGN.md layout (metadata.json written last by stage_version)."""
    with stage_version(root / name) as staged:
        model.save(staged.path / "model.keras")
        np.savez(staged.path / "reference.npz", x=ref_x, y=ref_y)
        (staged.path / "history.json").write_text("{}")
        out = model.layers[-1]
        staged.metadata.update(
            {
                "task": task,
                "config": config,
                "class_names": class_names,
                "input": input_spec,
                "threshold": threshold,
                "layers": layer_table(model),
                "output": {"activation": out.activation.__name__, "units": out.units},
                "dataset": {"name": "test", "synthetic": True},
                "metrics": {},
            }
        )
    return staged.final_path


# Headless Debian Chromium as the explorer tests launch it: no background connections (this
# machine reaches no network but the package registries).
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
