"""Data-parallel training (``--processes N``): Keras' DataParallel over jax.distributed,
real processes on 127.0.0.1 (the pytest process has Keras on TensorFlow, so every JAX run
is a subprocess).

* 2 processes train the same curve as 1 at the same global batch and seed; the chief
  alone publishes one version; every process exits 0; early stopping, class weights, the
  threshold and the baseline still work.
* a worker SIGKILLed after its first epoch fails the run in bounded time: non-zero status,
  no version, no staging folder, no process left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from training import distributed
from training.publish import STAGING_PREFIX

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / "tests/configs/fraud_small.yaml"
DATA_DIR = Path(os.environ.get("LAYERSCOPE_DATA_DIR", ROOT.parent / "shared/datasets"))
needs_cards = pytest.mark.skipif(not (DATA_DIR / "creditcard").is_dir(),
                                 reason=f"no card data under {DATA_DIR}")
# early stopping on val_pr_auc with patience 1, class_weight balanced, a recall@precision
# threshold and the HGB baseline: everything the chief must still do.
FRAUD_ARGS = ["--limit", "2000", "--epochs", "5", "--set",
              "training.early_stopping.patience=1"]


def _env() -> dict:
    env = dict(os.environ, LAYERSCOPE_DATA_DIR=str(DATA_DIR), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(ROOT))
    for key in (distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID,
                distributed.ENV_ADDRESSES, distributed.ENV_K8S_INDEX):
        env.pop(key, None)
    return env


def _train(root: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "training", "train", str(FRAUD), "--backend", "jax",
           "--models-root", str(root), *FRAUD_ARGS, *extra]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _versions(root: Path) -> list[str]:
    folder = root / "fraud-small"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    r1 = _train(one)
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    r2 = _train(two, "--processes", "2")
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    return (one, r1), (two, r2)


@needs_cards
def test_two_processes_train_the_curve_of_one_and_only_the_chief_publishes(runs):
    (one, _r1), (two, r2) = runs
    assert _versions(one) == ["1"] and _versions(two) == ["1"]  # no staging leftovers
    m1 = json.loads((one / "fraud-small/1/metadata.json").read_text())
    m2 = json.loads((two / "fraud-small/1/metadata.json").read_text())
    assert m1["training"]["backend"] == m2["training"]["backend"] == "jax"
    assert m1["training"]["processes"] == 1
    assert m2["training"] == {"backend": "jax", "processes": 2, "engine": distributed.ENGINE,
                              "global_batch_size": 64, "per_process_batch_size": 32,
                              "devices": 2}
    assert "jax" in m2["libraries"] and "jaxlib" in m2["libraries"]
    # Same global batches in the same order: the same curve (float reduction order aside).
    h1 = json.loads((one / "fraud-small/1/history.json").read_text())
    h2 = json.loads((two / "fraud-small/1/history.json").read_text())
    assert m1["epochs_run"] == m2["epochs_run"]  # early stopping decided the same
    assert set(h1) == set(h2) and "val_pr_auc" in h1
    for key in h1:
        np.testing.assert_allclose(h2[key], h1[key], rtol=2e-3, atol=1e-4, err_msg=key)
    assert abs(m1["threshold"] - m2["threshold"]) < 1e-3
    for key in ("pr_auc", "roc_auc", "f1"):
        assert abs(m1["metrics"]["test"][key] - m2["metrics"]["test"][key]) < 5e-3, key
    assert m2["metrics"]["baseline"]["test"]["pr_auc"] is not None  # chief ran the baseline
    assert m2["metrics"]["threshold_objective"]["objective"] == "recall_at_precision"
    out = r2.stdout
    for rank in (0, 1):  # progress lines of both, prefixed
        assert f"[p{rank}] [fraud-small] epoch 1/5" in out
    assert "[p1] [fraud-small] process 1 of 2 done" in out
    assert "[p0] == fraud-small v1 published" in out and "[p1] ==" not in out
    assert "[launch] all 2 processes exited 0" in out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@needs_cards
def test_a_worker_killed_midway_fails_the_run_and_publishes_nothing(tmp_path):
    cmd = [sys.executable, "-m", "training", "train", str(FRAUD), "--backend", "jax",
           "--models-root", str(tmp_path), "--limit", "2000", "--epochs", "200",
           "--set", "training.early_stopping=null", "--processes", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    pids: dict[int, int] = {}
    killed = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[launch] process ") and ": pid " in line:
                rank, pid = line[len("[launch] process "):].split(": pid ")
                pids[int(rank)] = int(pid)
            if not killed.is_set() and line.startswith("[p1] [fraud-small] epoch 1/"):
                os.kill(pids[1], signal.SIGKILL)
                killed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert killed.wait(180), "".join(lines[-40:])
        t0 = time.monotonic()
        status = proc.wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    out = "".join(lines)
    assert status != 0, out[-3000:]
    assert elapsed < 30, f"launcher took {elapsed:.1f}s to fail"
    assert "[launch] process 1 exited with status -9" in out, out[-3000:]
    assert "published" in out and "nothing was published" in out
    assert "== fraud-small v" not in out
    folder = tmp_path / "fraud-small"
    leftovers = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    assert leftovers == [], leftovers  # no version, no staging folder
    assert not any(n.startswith(STAGING_PREFIX) for n in leftovers)
    assert set(pids) == {0, 1} and not any(_alive(p) for p in pids.values())


def test_cluster_spec_reads_keras_environment_and_the_indexed_job_index():
    base = {distributed.ENV_NUM_PROCESSES: "3",
            distributed.ENV_ADDRESSES: "w0:1234,w1:1234,w2:1234"}
    assert distributed.cluster_spec({}) is None
    assert distributed.cluster_spec({distributed.ENV_NUM_PROCESSES: "1"}) is None
    spec = distributed.cluster_spec({**base, distributed.ENV_PROCESS_ID: "2"})
    assert (spec.num_processes, spec.process_id, spec.coordinator) == (3, 2, "w0:1234")
    spec = distributed.cluster_spec({**base, distributed.ENV_K8S_INDEX: "1"})
    assert spec.process_id == 1  # Kubernetes Indexed Job
    spec = distributed.cluster_spec({**base, distributed.ENV_PROCESS_ID: "0",
                                     distributed.ENV_K8S_INDEX: "2"})
    assert spec.process_id == 0  # the Keras variable wins
    for bad in ({**base}, {**base, distributed.ENV_PROCESS_ID: "3"},
                {**base, distributed.ENV_PROCESS_ID: "x"},
                {distributed.ENV_NUM_PROCESSES: "2", distributed.ENV_PROCESS_ID: "0"},
                {**base, distributed.ENV_ADDRESSES: "a:1,b:2", distributed.ENV_PROCESS_ID: "0"}):
        with pytest.raises(distributed.DistributionError):
            distributed.cluster_spec(bad)


def test_strip_option():
    assert distributed.strip_option(["train", "m", "--processes", "2", "-q"],
                                    "--processes") == ["train", "m", "-q"]
    assert distributed.strip_option(["--processes=2", "m"], "--processes") == ["m"]


def test_processes_needs_the_jax_backend_and_a_divisible_batch(tmp_path, capsys):
    from training.__main__ import main

    assert main(["train", str(FRAUD), "--processes", "2", "--models-root",
                 str(tmp_path)]) == 2
    assert "--backend jax" in capsys.readouterr().err
    assert main(["train", str(FRAUD), "--processes", "3", "--models-root",
                 str(tmp_path)]) == 2
    assert "multiple of --processes 3" in capsys.readouterr().err
    assert not (tmp_path / "fraud-small").exists()
