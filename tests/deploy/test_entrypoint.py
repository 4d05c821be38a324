"""The scripts the Dockerfile and docker-compose.yml run, run for real: the service
entrypoint (empties the Prometheus multiprocess directory, then Gunicorn answers) and
the trainer's train-missing script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import requests
import yaml

from tests.deploy.project import ROOT
from tests.observability.stack import Server, wait_for

TRAIN_MISSING = ROOT / "deploy" / "train-missing.sh"


def test_entrypoint_empties_the_metrics_dir_and_serves(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    server = Server(repo, tmp_path, workers=1)
    server.multiproc_dir.mkdir()
    # a previous run's files: stale counters would otherwise be summed into /metrics
    stale = server.multiproc_dir / "counter_4242.db"
    stale.write_bytes(b"\x00" * 64)
    keep = server.multiproc_dir / "README"
    keep.write_text("not a metrics file")
    server.start()
    try:

        def alive():
            assert server.proc.poll() is None, server.log()
            return requests.get(f"{server.url}/healthz", timeout=2).status_code == 200

        wait_for(alive, 180, interval=0.5, what="/healthz")
        assert not stale.exists()
        assert keep.read_text() == "not a metrics file"  # only *.db files are removed
        ready = requests.get(f"{server.url}/readyz", timeout=5)
        assert ready.status_code == 503  # an empty repository is never ready
        metrics = requests.get(f"{server.url}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert "layerscope_requests_total" in metrics.text
        assert 'endpoint="/readyz"' in metrics.text
        # the worker writes its files into the directory the entrypoint prepared
        assert any(p.name.startswith("counter_") for p in server.multiproc_dir.iterdir())
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_train_missing_skips_models_that_have_a_version(tmp_path):
    repo = tmp_path / "models"
    (repo / "fraud" / "3").mkdir(parents=True)
    (repo / "fraud" / "3" / "metadata.json").write_text("{}")
    result = subprocess.run(
        [str(TRAIN_MISSING), "fraud"],
        env={**os.environ, "LAYERSCOPE_MODEL_REPOSITORY": str(repo)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "fraud already has a version" in result.stdout
    assert sorted(p.name for p in (repo / "fraud").iterdir()) == ["3"]


def test_train_missing_refuses_a_model_without_config(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    result = subprocess.run(
        [str(TRAIN_MISSING), "nosuchmodel"],
        env={**os.environ, "LAYERSCOPE_MODEL_REPOSITORY": str(repo)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "nosuchmodel/model.yaml" in result.stderr


def test_train_missing_trains_a_missing_model(tmp_path):
    """A real (tiny) training run publishes version 1; a second run leaves it alone."""
    repo = tmp_path / "models"
    (repo / "digits").mkdir(parents=True)
    config = yaml.safe_load((ROOT / "tests" / "configs" / "digits.yaml").read_text())
    config["training"]["epochs"] = 1
    (repo / "digits" / "model.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "LAYERSCOPE_MODEL_REPOSITORY": str(repo),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    result = subprocess.run(
        [str(TRAIN_MISSING), "digits"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    meta = json.loads((repo / "digits" / "1" / "metadata.json").read_text())
    assert meta["name"] == "digits" and meta["version"] == 1
    again = subprocess.run(
        [str(TRAIN_MISSING), "digits"], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "already has a version" in again.stdout
    assert not (repo / "digits" / "2").exists()
    shutil.rmtree(repo)
