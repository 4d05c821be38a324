"""Distributed sweeps (docs/sweeps.md): a KerasTuner chief and workers as real processes on
127.0.0.1, no mocks. Every variant is trained exactly once and lands in the chief's table
with today's columns; the cluster's environment contract (LAYERSCOPE_SWEEP_INDEX 0 = the
chief, k = tuner<k-1>) works without a shared out folder; a killed worker comes back under
its tuner id and gets its trial back, and past its restarts its variant is reported failed
(exit 1), never dropped."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.config import ConfigError
from training.distributed import strip_option
from training.sweep import check_search, tuner_role

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "tests/configs/digits.yaml"
COLUMNS = ["label", "depth", "width", "activation", "params", "epochs", "train_accuracy",
           "val_accuracy", "val_loss", "gap", "overfit", "seconds", "synthetic", "version"]
TRIAL_LINE = re.compile(r"^\[sweep\] trial (\d+) (\S+): (\w+) on (\S+)", re.M)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
for _k in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT",
           "LAYERSCOPE_SWEEP_INDEX", "JOB_COMPLETION_INDEX"):
    ENV.pop(_k, None)


def _sweep_args(out, *extra):
    return [sys.executable, "-m", "training", "sweep", str(DIGITS), "--out", str(out),
            "--limit", "240", *extra]


def _table(out):
    with open(out / "sweep.csv") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


# --------------------------------------------------------------------------- roles


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"KERASTUNER_TUNER_ID": "tuner3"}, "tuner3"),
    ({"KERASTUNER_ORACLE_IP": "h", "LAYERSCOPE_SWEEP_INDEX": "0"}, "chief"),
    ({"KERASTUNER_ORACLE_IP": "h", "LAYERSCOPE_SWEEP_INDEX": "2"}, "tuner1"),
    ({"KERASTUNER_ORACLE_IP": "h", "JOB_COMPLETION_INDEX": "1"}, "tuner0"),
    ({"JOB_COMPLETION_INDEX": "1"}, None),  # an Indexed Job, but no oracle: one process
    ({"KERASTUNER_TUNER_ID": "chief", "LAYERSCOPE_SWEEP_INDEX": "3",
      "KERASTUNER_ORACLE_IP": "h"}, "chief"),
])
def test_the_role_comes_from_keras_tuner_or_the_job_index(env, expected):
    assert tuner_role(env=env) == expected


def test_bad_roles_and_searches_are_rejected_quoting_what_was_received():
    with pytest.raises(ConfigError, match=r"--tuner-id: expected 'chief' or 'tuner<k>'.*"
                                          r"Received: 'worker1'"):
        tuner_role("worker1", env={})
    with pytest.raises(ConfigError, match=r"LAYERSCOPE_SWEEP_INDEX=.-1."):
        tuner_role(env={"KERASTUNER_ORACLE_IP": "h", "LAYERSCOPE_SWEEP_INDEX": "-1"})
    with pytest.raises(ConfigError, match=r"--search: expected one of grid, random, "
                                          r"bayesian. Received: search='hyperband'"):
        check_search("hyperband", None, 4)
    with pytest.raises(ConfigError, match=r"\[1, 4\].*max_trials=5"):
        check_search("random", 5, 4)
    assert check_search("grid", None, 4) == 4 and check_search("bayesian", 2, 4) == 2
    assert strip_option(["sweep", "m", "--workers", "2", "--workers=3", "-q"], "--workers") == [
        "sweep", "m", "-q"]


def test_cli_rejects_workers_inside_a_distributed_sweep_and_bad_options(tmp_path):
    env = {**ENV, "KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": "1"}
    proc = subprocess.run(_sweep_args(tmp_path / "o", "--workers", "2"), env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already 'tuner0'" in proc.stderr, proc.stderr
    proc = subprocess.run(_sweep_args(tmp_path / "o", "--search", "tpe"), env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Received: search='tpe'" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- end to end


def test_two_workers_on_loopback_run_every_variant_once_and_publish_atomically(tmp_path):
    out, models = tmp_path / "sweep", tmp_path / "m"
    started = time.perf_counter()
    proc = subprocess.run(
        _sweep_args(out, "--depths", "1", "--widths", "4", "12", "--activations", "relu",
                    "tanh", "--epochs", "1", "--workers", "2", "--publish",
                    "--models-root", str(models)),
        env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=400)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    labels = ["d1-w4-relu", "d1-w4-tanh", "d1-w12-relu", "d1-w12-tanh"]
    ended = TRIAL_LINE.findall(proc.stdout)
    assert sorted(e[1] for e in ended) == sorted(labels)  # each variant once, no retry
    assert {e[2] for e in ended} == {"COMPLETED"}
    assert {e[3] for e in ended} <= {"tuner0", "tuner1"}
    columns, rows = _table(out)
    assert columns == COLUMNS  # today's table
    assert [r["label"] for r in rows] == labels  # grid order, whoever trained them
    assert all(0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    # every worker published its own: distinct complete versions, nothing half-staged
    versions = sorted(int(r["version"]) for r in rows)
    assert versions == [1, 2, 3, 4]
    assert sorted(p.name for p in (models / "digits").iterdir()) == ["1", "2", "3", "4"]
    assert all((models / "digits" / str(v) / "metadata.json").is_file() for v in versions)
    md = (out / "sweep.md").read_text()
    assert "| label | depth |" in md and "KerasTuner grid search" in md
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "keras-tuner" / "sweep").glob("trial_*"))) == 4
    print(f"\n2 workers, 4 variants: {seconds:.1f} s; trained by "
          + ", ".join(f"{e[1]}={e[3]}" for e in ended))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_cluster_contract_index_0_is_the_chief_and_no_folder_is_shared(tmp_path):
    env = {**ENV, "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(_free_port()), "LAYERSCOPE_SWEEP_BIND": "127.0.0.1"}
    args = ["--depths", "0", "1", "--widths", "6", "--activations", "elu", "--epochs", "1",
            "-q"]
    procs = [subprocess.Popen(_sweep_args(tmp_path / f"out{i}", *args),
                              env={**env, "LAYERSCOPE_SWEEP_INDEX": str(i)}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (1, 0)]  # the worker first: it waits for the chief
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    columns, rows = _table(tmp_path / "out0")  # the chief's, from the trials' metrics
    assert columns == COLUMNS and [r["label"] for r in rows] == ["d0", "d1-w6-elu"]
    assert not (tmp_path / "out1").exists()  # the worker writes no table
    assert "| d1-w6-elu |" in outputs[1]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _tuner_pid(chief: int, tuner_id: str) -> int | None:
    for pid in _children(chief):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"KERASTUNER_TUNER_ID={tuner_id}".encode() in env:
            return pid
    return None


def _kill_mid_trial(proc, out: Path, tuner_id: str, timeout: float = 200) -> None:
    """SIGKILL the worker once it has started a trial (its log says so)."""
    log = out / "workers" / f"{tuner_id}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and f"{tuner_id}: variant" in log.read_text(errors="replace"):
            pid = _tuner_pid(proc.pid, tuner_id)
            if pid:
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.05)
    raise AssertionError(f"{tuner_id} never started a trial: {log}")


@pytest.mark.parametrize("retries", [1, 0])
def test_a_killed_worker_is_restarted_or_its_variant_reported_failed(tmp_path, retries):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        _sweep_args(out, "--depths", "1", "--widths", "4", "8", "--activations", "relu",
                    "--epochs", "4", "--workers", "2", "--retries", str(retries)),
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _kill_mid_trial(proc, out, "tuner0")
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    held = re.search(r"tuner0 exited with -9 holding its trial (\d+) \((\S+)\)", stdout)
    assert held, stdout[-3000:]
    label = held.group(2)
    ended = TRIAL_LINE.findall(stdout)
    columns, rows = _table(out)
    assert columns == COLUMNS
    assert [r["label"] for r in rows] == ["d1-w4-relu", "d1-w8-relu"]
    statuses = {e[1]: e[2] for e in ended}
    assert sorted(e[1] for e in ended) == sorted(statuses)  # every variant ended once
    if retries:  # the same tuner id again: the oracle hands it the trial it held
        assert "starting it again (1/1)" in stdout
        assert proc.returncode == 0, stderr[-3000:]
        assert set(statuses.values()) == {"COMPLETED"}
        assert [e[3] for e in ended if e[1] == label] == ["tuner0"]
        assert all(r["val_accuracy"] for r in rows)
    else:  # reported, not dropped: an empty row, the reason, exit 1
        assert proc.returncode == 1, stderr[-3000:]
        assert statuses.pop(label) == "FAILED" and set(statuses.values()) == {"COMPLETED"}
        failed = next(r for r in rows if r["label"] == label)
        assert failed["val_accuracy"] == "" and failed["params"] == ""
        assert f"1 of 2 variants failed: {label}: worker tuner0 exited with status -9" in stderr
        md = (out / "sweep.md").read_text()
        assert "**FAILED**" in md and f"`{label}`: worker tuner0 exited" in md


def test_random_search_in_one_process_trains_max_trials_distinct_variants(tmp_path):
    from training.config import load_config
    from training.sweep import grid_variants, run_sweep

    variants = grid_variants(load_config(DIGITS), [0, 1], [4], ["relu", "tanh"])
    res = run_sweep(DIGITS, variants, out_dir=tmp_path / "s", search="random", max_trials=2,
                    seed=3, overrides={"dataset.limit": 200, "training.epochs": 1})
    assert res.trials == 2 and len(res.rows) == 2 and res.failed == []
    labels = [r["label"] for r in res.rows]
    assert len(set(labels)) == 2 and set(labels) <= {"d0", "d1-w4-relu", "d1-w4-tanh"}
    assert labels == [v["label"] for v in variants if v["label"] in labels]  # grid order
    assert list(res.rows[0]) == COLUMNS
    assert "KerasTuner random search, 2 variants" in res.table_md.read_text()


def test_two_workers_publish_into_an_s3_store_one_upload_at_a_time(tmp_path):
    """``--publish --models-root s3://...``: each worker stages its variant locally and
    uploads it under the chief's lock (S3 has no atomic rename: two uploads at once could
    take the same number), so every variant is one complete version of its own."""
    sys.path.insert(0, str(ROOT / "tests" / "scaling"))
    from s3server import BUCKET, RcloneS3

    from service.storage import ObjectStore

    server = RcloneS3(tmp_path / "s3", tmp_path / "rclone.log").start()
    try:
        url = server.url("repo")
        out = tmp_path / "sweep"
        proc = subprocess.run(
            _sweep_args(out, "--depths", "1", "--widths", "4", "8", "--activations", "relu",
                        "--epochs", "1", "--workers", "2", "--publish",
                        "--models-root", url),
            env={**ENV, **server.env()}, cwd=ROOT, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        _, rows = _table(out)
        assert sorted(int(r["version"]) for r in rows) == [1, 2]
        logs = "".join(p.read_text() for p in (out / "workers").glob("*.log"))
        assert logs.count(f"uploaded to {url}/digits/") == 2
        store = ObjectStore(url, s3=server.client())
        listed = store.list("digits")
        for r in rows:
            meta = json.loads(store.get_bytes(f"digits/{r['version']}/metadata.json"))
            assert meta["version"] == int(r["version"])
            for rel, info in meta["files"].items():  # complete: every file, its own bytes
                assert listed[f"digits/{r['version']}/{rel}"].size == info["bytes"]
        assert not list((tmp_path / "s3" / BUCKET).glob("repo/digits/.*"))
    finally:
        server.stop()


def test_the_bayesian_oracle_never_hands_out_a_variant_twice():
    """KerasTuner's GP may propose the optimum it has already tried; ours draws another."""
    from keras_tuner.src.engine import trial as trial_module

    from training.sweep import HP_NAME, make_oracle

    labels = [f"v{i}" for i in range(6)]
    oracle = make_oracle("bayesian", labels, "accuracy", 6, seed=1)
    oracle._set_project_dir(None, None)
    oracle.save = lambda: None
    oracle._save_trial = lambda trial: None
    seen = []
    for _ in range(8):
        trial = oracle.create_trial("tuner0")
        if trial.status == trial_module.TrialStatus.STOPPED:
            break
        label = trial.hyperparameters.get(HP_NAME)
        seen.append(label)
        oracle.update_trial(trial.trial_id, {"val_accuracy": 0.9 if label == "v2" else 0.1})
        trial.status = trial_module.TrialStatus.COMPLETED
        oracle.end_trial(trial)
    assert sorted(seen) == labels  # all six, each once, then STOPPED
