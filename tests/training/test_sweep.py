"""Sweeps: grid generation, the comparison table and plot, nothing published unless asked
(in one process; the KerasTuner chief and workers: test_sweep_distributed.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training.config import ConfigError, load_config
from training.sweep import feature_prefix, grid_variants, load_variants, run_sweep

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "tests/configs/digits.yaml"


def test_grid_keeps_the_conv_prefix_and_replaces_the_dense_head():
    cfg = load_config(DIGITS)
    assert [s["kind"] for s in feature_prefix(cfg["hidden"])] == ["conv2d", "max_pool",
                                                                  "flatten"]
    variants = grid_variants(cfg, [0, 1, 2], [8, 16], ["relu", "tanh"], dropout=0.1)
    labels = [v["label"] for v in variants]
    assert labels[0] == "d0" and labels.count("d0") == 1  # depth 0 is one model, not four
    assert len(variants) == 1 + 2 * 2 * 2
    v = next(v for v in variants if v["label"] == "d2-w16-tanh")
    kinds = [s["kind"] for s in v["hidden"]]
    assert kinds == ["conv2d", "max_pool", "flatten", "dense", "dropout", "dense", "dropout"]
    names = [s["name"] for s in load_config({**cfg.get_config(), "hidden": v["hidden"]})["hidden"]]
    assert names[3:] == ["dense_1", "dropout_1", "dense_2", "dropout_2"]


@pytest.mark.parametrize("args, message", [
    (([], [8], ["relu"]), "sweep.depths: expected at least one value"),
    (([1], [0], ["relu"]), "sweep.widths: expected an integer >= 1. Received: 0"),
    (([1], [8], ["swish"]), "sweep.activations: expected one of relu, tanh"),
])
def test_grid_rejects_bad_axes(args, message):
    with pytest.raises(ConfigError, match=message):
        grid_variants(load_config(DIGITS), *args)


def test_variants_file_is_validated_before_training(tmp_path):
    f = tmp_path / "v.yaml"
    f.write_text("- {label: ok, hidden: [{kind: flatten}]}\n"
                 "- {label: bad, hidden: [{kind: flatten}, {kind: dense, units: -1}]}\n")
    variants = load_variants(f)
    with pytest.raises(ConfigError, match=r"variants\[1\] \(bad\)\.hidden\[1\]\.units"):
        run_sweep(DIGITS, variants, out_dir=tmp_path / "out", models_root=tmp_path)
    assert not (tmp_path / "out").exists()


def test_sweep_on_digits_writes_table_csv_and_plot_and_publishes_nothing(tmp_path):
    cfg = load_config(DIGITS)
    variants = grid_variants(cfg, [1], [4, 24], ["relu"])
    res = run_sweep(DIGITS, variants, out_dir=tmp_path / "sweep", models_root=tmp_path / "m",
                    overrides={"dataset.limit": 400, "training.epochs": 2}, overfit_gap=0.0)
    assert [r["label"] for r in res.rows] == ["d1-w4-relu", "d1-w24-relu"]
    small, big = res.rows
    assert small["params"] < big["params"]
    for r in res.rows:
        assert 0.0 <= r["val_accuracy"] <= 1.0
        assert r["gap"] == pytest.approx(r["train_accuracy"] - r["val_accuracy"], abs=1e-3)
        assert r["overfit"] == (r["gap"] > 0.0) and r["version"] is None
    assert list(small) == ["label", "depth", "width", "activation", "params", "epochs",
                           "train_accuracy", "val_accuracy", "val_loss", "gap", "overfit",
                           "seconds", "synthetic", "version"]
    assert res.failed == [] and res.trials == 2  # KerasTuner's grid: each variant once
    with open(res.table_csv) as f:
        reader = csv.DictReader(f)
        table = list(reader)
    assert reader.fieldnames == list(small)
    assert [t["label"] for t in table] == ["d1-w4-relu", "d1-w24-relu"]
    md = res.table_md.read_text()
    assert "| label |" in md and "d1-w24-relu" in md and "Best on validation" in md
    assert res.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "m").exists()  # variants are not published unless asked


def _cli(*args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "training", "sweep", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_cli_sweep_with_publish_writes_versions_and_rejects_bad_axes(tmp_path):
    proc = _cli(str(DIGITS), "--activations", "swish", "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "Received: 'swish'" in proc.stderr
    assert not (tmp_path / "bad").exists()
    proc = _cli(str(DIGITS), "--depths", "1", "--widths", "8", "--activations", "elu",
                "--epochs", "1", "--limit", "200", "--out", str(tmp_path / "s"),
                "--models-root", str(tmp_path / "m"), "--publish", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "| d1-w8-elu |" in proc.stdout
    with open(tmp_path / "s" / "sweep.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["version"] == "1" and (tmp_path / "m/digits/1/metadata.json").is_file()
