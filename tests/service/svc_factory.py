"""Tiny models published into temporary repositories for the service tests.

The layer stacks come from the committed model.yaml files (shrunk), built by
training/builder.py and published with training/publish.py, so the tests exercise the
real naming and publishing contract; weights are random (seeded) because the service
must reproduce whatever the model computes, not a good prediction."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from tests.observability.stack import publish_corrupt as _publish_corrupt  # noqa: E402
from tests.observability.stack import samples as tabular_samples  # noqa: E402, F401
from training.builder import build_model  # noqa: E402
from training.publish import layer_table, stage_version  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]
FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _config(name: str, fallback: dict) -> dict:
    path = ROOT / "models" / name / "model.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.is_file() else fallback
    small = {"filters": 2, "units": 6}
    cfg = dict(cfg)
    cfg["hidden"] = [dict(h, **{k: v for k, v in small.items() if k in h}) for h in cfg["hidden"]]
    return cfg


def tabular_config() -> dict:
    return _config(
        "fraud",
        {
            "name": "fraud",
            "task": "binary_classification",
            "dataset": {"name": "creditcard"},
            "input": "tabular",
            "preprocessing": {"normalize": True},
            "hidden": [
                {"kind": "dense", "units": 8, "activation": "relu"},
                {"kind": "dropout", "rate": 0.2},
                {"kind": "dense", "units": 8, "activation": "relu"},
            ],
        },
    )


def image_config() -> dict:
    return _config(
        "fashion",
        {
            "name": "fashion",
            "task": "multiclass_classification",
            "dataset": {"name": "fashion_mnist"},
            "input": "image",
            "preprocessing": {"rescale": 1 / 255},
            "hidden": [
                {"kind": "conv2d", "filters": 2, "kernel": 3, "activation": "relu"},
                {"kind": "max_pool", "pool": 2},
                {"kind": "flatten"},
                {"kind": "dense", "units": 6, "activation": "relu"},
            ],
        },
    )


def image_samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28, 1)).astype(np.float32)


def publish(repo: Path, kind: str, seed: int = 0, name: str | None = None) -> Path:
    """Build a seeded tiny model of ``kind`` ('tabular' or 'image') and publish the next
    version of ``name`` into ``repo``; returns the version folder."""
    keras.utils.set_random_seed(seed)
    if kind == "tabular":
        cfg = tabular_config()
        name = name or "fraud"
        x = tabular_samples(64, seed)
        model = build_model(cfg, input_shape=(30,), num_classes=2, adapt_data=x)
        input_spec = {"kind": "tabular", "features": FEATURES, "shape": [30], "dtype": "float32"}
        extra = {
            "task": "binary_classification",
            "class_names": ["legit", "fraud"],
            "threshold": 0.3,
            "output": {"activation": "sigmoid", "units": 1},
        }
    else:
        cfg = image_config()
        name = name or "fashion"
        x = image_samples(16, seed)
        model = build_model(cfg, input_shape=(28, 28, 1), num_classes=10)
        input_spec = {
            "kind": "image",
            "shape": [28, 28, 1],
            "dtype": "float32",
            "value_range": [0, 255],
        }
        extra = {
            "task": "multiclass_classification",
            "class_names": FASHION,
            "threshold": None,
            "output": {"activation": "softmax", "units": 10},
        }
    with stage_version(Path(repo) / name, name) as staged:
        model.save(staged.path / "model.keras")
        np.savez(staged.path / "reference.npz", x=x, y=np.zeros(len(x), np.int64))
        (staged.path / "history.json").write_text(json.dumps({"loss": [1.0]}))
        staged.metadata.update(
            format_version=1,
            config=cfg,
            dataset={"name": "synthetic", "synthetic": True},
            splits={},
            metrics={"test": {"accuracy": 0.5}},
            input=input_spec,
            layers=layer_table(model),
            **extra,
        )
    return Path(staged.final_path)


def publish_corrupt(repo: Path, source: Path) -> Path:
    """Copy a published version as the next version number with a flipped byte in
    model.keras, so its recorded sha256 no longer matches (renamed into place atomically,
    as a publisher would)."""
    return _publish_corrupt(source)


def load_keras(version_dir: Path):
    return keras.saving.load_model(version_dir / "model.keras", safe_mode=True, compile=False)


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def train_real(repo: Path, config: str = "fraud", epochs: int = 1) -> Path:
    """Publish a version trained by the real pipeline (training/train.py), few epochs."""
    from training.train import train

    data_dir = os.environ.get("LAYERSCOPE_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")
    return train(
        ROOT / "models" / config / "model.yaml",
        models_root=repo,
        data_dir=data_dir,
        overrides={"training": {"epochs": epochs}},
    )
