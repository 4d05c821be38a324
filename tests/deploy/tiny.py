"""Small real things for the container tests: the default models trained for one epoch on
a slice of their data sets, tiny copies of the data set files for the compose trainer,
and a deliberately slow model (requests that are surely in flight when a signal comes)."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np

from tests.deploy.project import ROOT

DEFAULT_MODELS = ("fraud", "fashion", "mnist")
# rows of each data set the tiny versions train on (stratified; the test split is cut alike)
LIMITS = {"fraud": 600, "fashion": 1000, "mnist": 1000}


def data_dir() -> Path:
    return Path(os.environ.get("LAYERSCOPE_DATA_DIR", ROOT.parent / "shared" / "datasets"))


def train_default(repo: Path, name: str, seed: int = 0) -> Path:
    """``models/<name>/model.yaml`` as committed, one epoch on a slice of its real data set,
    published into ``repo/<name>`` by the training pipeline; returns the version folder."""
    from training.train import train

    (repo / name).mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "models" / name / "model.yaml", repo / name / "model.yaml")
    return train(
        repo / name,
        models_root=repo,
        data_dir=data_dir(),
        overrides={
            "training.epochs": 1,
            "training.seed": seed,
            "dataset.limit": LIMITS[name],
        },
    )


def publish_slow(repo: Path, name: str = "slow") -> Path:
    """An image model with wide convolutions (~1 s for 64 images on one core), published
    with training/publish.py."""
    import keras

    from training.publish import layer_table, stage_version

    keras.utils.set_random_seed(3)
    inp = keras.Input((28, 28, 1), name="input")
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(inp)
    x = keras.layers.Conv2D(128, 3, activation="relu", name="conv2d_1")(x)
    x = keras.layers.Conv2D(256, 3, activation="relu", name="conv2d_2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_avg_pool_1")(x)
    out = keras.layers.Dense(10, activation="softmax", name="output")(x)
    model = keras.Model(inp, out)
    x_ref = np.random.default_rng(3).integers(0, 256, (8, 28, 28, 1)).astype(np.float32)
    with stage_version(repo / name, name) as staged:
        model.save(staged.path / "model.keras")
        np.savez(staged.path / "reference.npz", x=x_ref, y=np.zeros(8, np.int64))
        staged.metadata.update(
            format_version=1,
            task="multiclass_classification",
            class_names=[str(i) for i in range(10)],
            threshold=None,
            input={"kind": "image", "shape": [28, 28, 1], "dtype": "float32",
                   "value_range": [0, 255]},
            output={"activation": "softmax", "units": 10},
            layers=layer_table(model),
            metrics={},
        )
    return Path(staged.final_path)


def reference_rows(version: Path, n: int = 4) -> list:
    """The first ``n`` rows of a version's reference sample, as JSON-ready lists."""
    with np.load(version / "reference.npz") as ref:
        return ref["x"][:n].tolist()


def copy_version(version: Path, model_dir: Path, number: int) -> Path:
    """Copy a published version into ``model_dir`` as version ``number`` the way a
    publisher does: staged under a hidden name, metadata.json's version set, renamed."""
    staging = model_dir / f".tmp-copy-{number}"
    shutil.copytree(version, staging)
    meta = json.loads((staging / "metadata.json").read_text())
    meta["version"] = number
    (staging / "metadata.json").write_text(json.dumps(meta))
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    final = model_dir / str(number)
    os.rename(staging, final)
    return final


# -- tiny data set files (the layouts training/data.py reads) -------------------------------
def _idx_images(path: Path, x: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(x), x.shape[1], x.shape[2]))
        f.write(np.ascontiguousarray(x, np.uint8).tobytes())


def _idx_labels(path: Path, y: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", 2049, len(y)))
        f.write(np.ascontiguousarray(y, np.uint8).tobytes())


def write_tiny_datasets(dst: Path, n_train: int = 1200, n_test: int = 200,
                        n_rows: int = 600) -> Path:
    """Slices of the real data sets in ``data_dir()`` written in their own layouts to
    ``dst`` (creditcard/, mnist/, fashion-mnist/), readable by any user."""
    from training.data import load_dataset

    src = data_dir()
    for name, folder in (("mnist", "mnist"), ("fashion_mnist", "fashion-mnist")):
        ds = load_dataset(name, data_dir=src)
        x, y = ds.x[:n_train, :, :, 0], ds.y[:n_train]
        xt, yt = ds.x_test[:n_test, :, :, 0], ds.y_test[:n_test]
        out = dst / folder
        out.mkdir(parents=True, exist_ok=True)
        if name == "mnist":
            np.savez_compressed(out / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
        else:
            _idx_images(out / "train-images-idx3-ubyte.gz", x)
            _idx_labels(out / "train-labels-idx1-ubyte.gz", y)
            _idx_images(out / "t10k-images-idx3-ubyte.gz", xt)
            _idx_labels(out / "t10k-labels-idx1-ubyte.gz", yt)
    out = dst / "creditcard"
    out.mkdir(parents=True, exist_ok=True)
    with (src / "creditcard" / "creditcard_sample.csv").open() as f:
        rows = list(csv.reader(f))
    step = max(1, (len(rows) - 1) // n_rows)
    with (out / "creditcard_sample.csv").open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *rows[1::step][:n_rows]])
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst
