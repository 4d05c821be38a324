"""End to end: train, publish, reload (safe_mode), same predictions; failures leave nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from training import train as train_mod
from training.config import load_config
from training.publish import sha256_file

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "tests/configs/digits.yaml"
FRAUD = ROOT / "tests/configs/fraud_small.yaml"
DATA_DIR = Path(os.environ.get("LAYERSCOPE_DATA_DIR", ROOT.parent / "shared/datasets"))
HAVE_CARDS = (DATA_DIR / "creditcard").is_dir()
needs_cards = pytest.mark.skipif(not HAVE_CARDS, reason=f"no card data under {DATA_DIR}")


def _published(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _check_version(folder: Path, result: train_mod.TrainResult) -> dict:
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["name"] == folder.parent.name and meta["version"] == int(folder.name)
    for key in ("format_version", "task", "created", "libraries", "config", "dataset", "splits",
                "metrics", "threshold", "class_names", "input", "output", "layers", "files",
                "training_seconds"):
        assert key in meta, key
    assert meta["config"] == result.config.get_config()
    assert meta["files"]["model.keras"]["sha256"] == sha256_file(folder / "model.keras")
    assert meta["splits"] == result.splits.sizes()
    assert [row["name"] for row in meta["layers"]] == [la.name for la in result.model.layers]
    hidden = [row["name"] for row in meta["layers"] if row["hidden"]]
    assert hidden == [spec["name"] for spec in result.config["hidden"]]
    assert {"training_curves.png", "confusion_matrix.png"} <= {
        p.name for p in (folder / "plots").iterdir()}
    history = json.loads((folder / "history.json").read_text())
    assert len(history["loss"]) == meta["epochs_run"] >= 1

    # Reload exactly as the service will, and compare predictions on the reference sample.
    loaded = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    ref = np.load(folder / "reference.npz")
    assert ref["x"].dtype == np.float32 and ref["x"].shape[1:] == tuple(meta["input"]["shape"])
    assert len(ref["x"]) == len(ref["y"]) == min(train_mod.REFERENCE_ROWS, meta["splits"]["train"])
    np.testing.assert_allclose(loaded.predict(ref["x"], verbose=0),
                               result.model.predict(ref["x"], verbose=0), atol=1e-6, rtol=0)
    return meta


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    result = train_mod.run_training(DIGITS, overrides={"dataset.limit": 500})
    return root, result, train_mod.publish(result, root / "digits")


def test_digits_publishes_a_version_that_reloads_with_same_predictions(digits_run):
    root, result, folder = digits_run
    assert folder == root / "digits" / "1"
    meta = _check_version(folder, result)
    assert meta["task"] == "multiclass_classification" and meta["threshold"] is None
    assert meta["input"] == {"kind": "image", "shape": [8, 8, 1], "dtype": "float32",
                             "value_range": [0, 255]}
    assert meta["output"] == {"activation": "softmax", "units": 10}
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["dataset"]["synthetic"] is False and meta["dataset"]["name"] == "digits"
    test = meta["metrics"]["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and len(test["confusion_matrix"]) == 10
    assert sum(map(sum, test["confusion_matrix"])) == meta["splits"]["test"]
    assert meta["layers"][1]["name"] == "rescaling"
    assert meta["layers"][1]["role"] == "preprocessing"
    # The raw 0..255 pixels go in: reference inputs are unscaled.
    assert np.load(folder / "reference.npz")["x"].max() > 1.0


def test_evaluate_recomputes_the_stored_test_metrics(digits_run):
    _, _, folder = digits_run
    report = train_mod.evaluate_version(folder.parent)  # newest version
    assert report["version"] == 1 and report["max_abs_diff"] <= 1e-6


def test_evaluate_refuses_a_model_file_that_does_not_match_its_checksum(digits_run, tmp_path):
    import shutil

    _, _, folder = digits_run
    copy = tmp_path / "digits" / "1"
    shutil.copytree(folder, copy)
    with open(copy / "model.keras", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="sha256 .* does not match metadata"):
        train_mod.evaluate_version(copy)


def test_splits_are_stratified_disjoint_and_reproducible():
    cfg = load_config(DIGITS)
    ds = train_mod.load_data(cfg)
    a, b = train_mod.split_data(ds, cfg), train_mod.split_data(ds, cfg)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert sum(a.sizes().values()) == len(ds.y)
    assert a.sizes()["test"] == pytest.approx(0.2 * len(ds.y), abs=2)
    train_rows = {r.tobytes() for r in a.x_train}
    assert not train_rows & {r.tobytes() for r in a.x_test}  # digits has few duplicates
    shares = [np.bincount(s, minlength=10) / len(s) for s in (a.y_train, a.y_val, a.y_test)]
    assert np.abs(shares[0] - shares[2]).max() < 0.02


@needs_cards
def test_fraud_slice_end_to_end_with_threshold_and_baseline(tmp_path):
    result = train_mod.run_training(FRAUD, data_dir=DATA_DIR)
    folder = train_mod.publish(result, tmp_path / "fraud-small")
    meta = _check_version(folder, result)
    assert meta["output"] == {"activation": "sigmoid", "units": 1}
    assert meta["class_names"] == ["legit", "fraud"]
    assert meta["input"]["features"][0] == "Time" and meta["input"]["features"][-1] == "Amount"
    assert meta["dataset"]["synthetic"] is False
    assert meta["dataset"]["sha256"] == sha256_file(DATA_DIR / "creditcard/creditcard_sample.csv")
    assert 0.0 < meta["threshold"] < 1.0
    test, base = meta["metrics"]["test"], meta["metrics"]["baseline"]
    for key in ("pr_auc", "roc_auc", "precision", "recall", "f1"):
        assert 0.0 <= test[key] <= 1.0 and 0.0 <= base["test"][key] <= 1.0
    assert test["threshold"] == meta["threshold"]
    assert (folder / "plots/pr_curve.png").stat().st_size > 1000
    # Normalisation was adapted on the training split only.
    norm = keras.saving.load_model(folder / "model.keras").get_layer("normalization")
    np.testing.assert_allclose(np.ravel(norm.mean), result.splits.x_train.mean(axis=0),
                               rtol=1e-3, atol=1e-3)
    assert not np.allclose(np.ravel(norm.mean),
                           np.concatenate([result.splits.x_train, result.splits.x_test]).mean(0),
                           rtol=1e-3, atol=1e-3)
    # Class weights are balanced on the training split.
    weights = train_mod.class_weights(result.config, result.splits.y_train, 2)
    counts = np.bincount(result.splits.y_train)
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1])


def test_synthetic_flag_set_when_and_only_when_synthetic_data_is_used(tmp_path, digits_run):
    over = {"dataset.synthetic": True, "dataset.rows": 1500, "dataset.fraud_rate": 0.05,
            "training.epochs": 1}
    cfg = {**load_config(FRAUD).get_config(), "name": "synth"}
    cfg["dataset"] = {"name": "creditcard"}
    folder = train_mod.train(cfg, models_root=tmp_path, overrides=over)
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["dataset"]["synthetic"] is True
    assert meta["dataset"]["name"] == "synthetic_creditcard"
    assert meta["config"]["dataset"]["synthetic"] is True
    assert meta["dataset"]["rows"] == 1500
    # ... and a real-data run is not flagged.
    _, _, real = digits_run
    assert json.loads((real / "metadata.json").read_text())["dataset"]["synthetic"] is False


class _Boom(keras.callbacks.Callback):
    """Fails the run in the middle of fit (after the first epoch)."""

    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("injected failure during fit")


def test_failure_during_fit_leaves_no_version_and_no_temp_folder(tmp_path):
    with pytest.raises(RuntimeError, match="injected failure during fit"):
        train_mod.train(DIGITS, models_root=tmp_path, callbacks=[_Boom()],
                        overrides={"dataset.limit": 200})
    assert _published(tmp_path / "digits") == []


def test_failure_while_writing_the_version_leaves_nothing(tmp_path, monkeypatch, digits_run):
    _, result, _ = digits_run
    root = tmp_path / "digits"
    first = train_mod.publish(result, root)
    seen = {}

    def failing_plot(history, path):
        # The model file is already staged when this runs: the failure really is midway.
        seen["staged"] = sorted(p.name for p in Path(path).parent.parent.iterdir())
        raise OSError("disk full (injected)")

    monkeypatch.setattr("training.plots.plot_history", failing_plot)
    with pytest.raises(OSError, match="disk full"):
        train_mod.publish(result, root)
    assert "model.keras" in seen["staged"]
    assert _published(root) == ["1"] and first.name == "1"
    monkeypatch.undo()
    assert train_mod.publish(result, root).name == "2"


def test_unwritable_target_fails_cleanly(tmp_path, digits_run):
    _, result, _ = digits_run
    blocker = tmp_path / "models"
    blocker.write_text("a file where the models folder should be")
    with pytest.raises(OSError):
        train_mod.publish(result, blocker / "digits")
    assert blocker.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_cli_train_prints_progress_and_summary_then_evaluate(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "training"]
    proc = subprocess.run([*cmd, "train", str(DIGITS), "--epochs", "2", "--limit", "300",
                           "--models-root", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "[digits] epoch 1/2" in proc.stdout and "[digits] epoch 2/2" in proc.stdout
    assert "== digits v1 published at" in proc.stdout and "accuracy=" in proc.stdout
    meta = json.loads((tmp_path / "digits/1/metadata.json").read_text())
    assert meta["config"]["training"]["epochs"] == 2 and meta["config"]["dataset"]["limit"] == 300
    proc = subprocess.run([*cmd, "evaluate", str(tmp_path / "digits/1")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "matches metadata.json" in proc.stdout
