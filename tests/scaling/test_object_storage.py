"""An s3:// model repository (service/storage.py) through a real Gunicorn and a real S3
server (rclone serve s3): versions served from the store, a half-uploaded or corrupt
version never loads, deleted versions are unloaded, an unreachable store leaves the
server serving and reported (log, metric, GET /models), and training publishes there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from s3server import BUCKET, ROOT, delete_prefix, publish_to_store, upload_folder

from tests.reliability.helpers import Server, metric_samples, wait_for

PREFIX = "repo"
POLL = 0.5


@pytest.fixture(scope="module")
def served(s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("object-storage")
    url = s3.url(PREFIX)
    publish_to_store(url, tmp / "staging", "tabular", seed=1)
    server = Server(
        None,
        tmp,
        workers=2,  # two workers share one cache (one syncs at a time, under an flock)
        LAYERSCOPE_MODEL_REPOSITORY=url,
        LAYERSCOPE_REPOSITORY_CACHE_DIR=str(tmp / "cache"),
        LAYERSCOPE_POLL_INTERVAL=str(POLL),
        LAYERSCOPE_GRPC_PORT="0",
        LAYERSCOPE_PROBES_ON_LOAD="false",
        **s3.env(),
    )
    server.tmp_root = tmp
    try:
        server.wait_ready(120)
        yield server
    finally:
        server.stop()


def _models(server) -> dict:
    body = server.get("/models").json()
    return body


def _versions(server, name="fraud") -> dict[int, str]:
    for model in _models(server)["models"]:
        if model["name"] == name:
            return {v["version"]: v["status"] for v in model["versions"]}
    return {}


def _rows(n=2):
    return {"instances": np.random.default_rng(0).normal(size=(n, 30)).round(3).tolist()}


def test_serves_versions_from_the_store(served, s3):
    body = _models(served)
    assert body["repository"]["source"] == s3.url(PREFIX)
    assert body["repository"]["reachable"] is True
    assert body["repository"]["error"] is None
    assert body["repository"]["last_sync"] > time.time() - 30
    assert _versions(served) == {1: "ready"}
    r = served.post("/models/fraud/predict", json=_rows())
    assert r.status_code == 200, r.text
    text = served.get("/metrics").text
    assert metric_samples(text, "layerscope_repository_reachable")[0][1] == 1


def test_half_uploaded_and_corrupt_versions_never_load(served, s3, tmp_path):
    import svc_factory

    c = s3.client()
    folder = svc_factory.publish(tmp_path / "v2", "tabular", seed=2)
    key = f"{PREFIX}/fraud/2"
    # every file but metadata.json (a publisher still uploading, or one that died)
    upload_folder(c, folder, BUCKET, key, skip={"metadata.json"})
    time.sleep(POLL * 6)
    assert 2 not in _versions(served)
    assert not (served.tmp_root / "cache" / "fraud" / "2").exists()
    assert "fraud/2" in _models(served)["repository"]["incomplete"]
    # metadata.json uploaded, but model.keras in the store is not what it records
    good = (folder / "model.keras").read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    c.put_object(Bucket=BUCKET, Key=f"{key}/model.keras", Body=bytes(bad))
    meta = json.loads((folder / "metadata.json").read_text())
    meta["version"] = 2
    c.put_object(Bucket=BUCKET, Key=f"{key}/metadata.json", Body=json.dumps(meta).encode())
    wait_for(
        lambda: "fraud/2" in _models(served)["repository"]["rejected"],
        10,
        what="the corrupt version rejected",
    )
    assert "checksum" in _models(served)["repository"]["rejected"]["fraud/2"]
    assert 2 not in _versions(served)
    # the right bytes arrive: the version is complete and loads within a few polls
    started = time.monotonic()
    c.put_object(Bucket=BUCKET, Key=f"{key}/model.keras", Body=good)
    wait_for(lambda: _versions(served).get(2) == "ready", 60, what="v2 ready")
    print(f"v2 ready {time.monotonic() - started:.2f}s after its last object")
    r = served.post("/models/fraud/predict", json=_rows())
    assert r.status_code == 200 and r.json()["version"] == 2, r.text


def test_a_version_deleted_from_the_store_is_unloaded(served, s3):
    wait_for(lambda: _versions(served).get(2) == "ready", 60, what="v2 ready")
    delete_prefix(s3.client(), BUCKET, f"{PREFIX}/fraud/2")
    wait_for(lambda: 2 not in _versions(served), 20, what="v2 unloaded")
    assert not (served.tmp_root / "cache" / "fraud" / "2").exists()
    assert served.post("/models/fraud/predict", json=_rows()).json()["version"] == 1


def test_serving_yaml_is_mirrored_and_reloads_the_model(served, s3):
    def loaded_at():
        return next(v["loaded_at"] for v in served.get("/models/fraud").json()["versions"])

    before = loaded_at()
    key = f"{PREFIX}/fraud/serving.yaml"
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"threshold: 0.9\n")
    cached = served.tmp_root / "cache" / "fraud" / "serving.yaml"
    wait_for(cached.is_file, 10, what="serving.yaml mirrored")
    assert cached.read_text() == "threshold: 0.9\n"
    wait_for(lambda: loaded_at() != before, 30, what="the version reloaded with it")
    s3.client().delete_object(Bucket=BUCKET, Key=key)
    wait_for(lambda: not cached.exists(), 10, what="serving.yaml removed")


def test_an_unreachable_store_is_reported_and_the_cache_keeps_serving(served, s3):
    s3.stop()
    try:
        wait_for(
            lambda: _models(served)["repository"]["reachable"] is False,
            20,
            what="the store reported unreachable",
        )
        repo = _models(served)["repository"]
        assert "EndpointConnectionError" in repo["error"] or "Connect" in repo["error"]
        assert repo["source"] == s3.url(PREFIX)
        time.sleep(POLL * 3)
        for _ in range(10):  # the cached version keeps serving
            r = served.post("/models/fraud/predict", json=_rows())
            assert r.status_code == 200, r.text
        assert _versions(served) == {1: "ready"}
        assert served.get("/readyz").status_code == 200
        text = served.get("/metrics").text
        assert metric_samples(text, "layerscope_repository_reachable")[0][1] == 0
        errors = metric_samples(text, "layerscope_repository_sync_errors_total")
        assert sum(v for _, v in errors) >= 1, errors
        assert "unreachable, serving the cached versions" in served.logs(20000)
    finally:
        s3.start()  # the same port: the store comes back
    wait_for(
        lambda: _models(served)["repository"]["reachable"] is True, 20, what="reachable again"
    )
    assert _versions(served) == {1: "ready"}


def test_training_publishes_into_the_store(served, s3, tmp_path):
    """``python -m training train ... --models-root s3://...``: staged locally, uploaded
    with metadata.json last; the server loads it from the store."""
    env = {
        **os.environ,
        **s3.env(),
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "LAYERSCOPE_DATA_DIR": str(tmp_path / "no-data"),
    }
    shutil.copy(ROOT / "models" / "fraud" / "model.yaml", tmp_path / "model.yaml")
    proc = subprocess.run(
        [
            sys.executable, "-m", "training", "train", str(tmp_path / "model.yaml"),
            "--synthetic", "--rows", "3000", "--epochs", "1", "-q",
            "--models-root", s3.url(PREFIX),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"uploaded to {s3.url(PREFIX)}/fraud/" in proc.stdout + proc.stderr
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/fraud/")
    keys = {o["Key"] for o in listed["Contents"]}
    version = max(int(k.split("/")[2]) for k in keys if k.endswith("/metadata.json"))
    assert version == 2  # the next free number (the deleted 2 was freed)
    assert {f"{PREFIX}/fraud/{version}/{f}" for f in ("model.keras", "metadata.json",
                                                       "reference.npz")} <= keys
    meta = json.loads(
        s3.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/fraud/{version}/metadata.json")[
            "Body"].read()
    )
    assert meta["version"] == version and meta["name"] == "fraud"
    wait_for(lambda: _versions(served).get(version) == "ready", 90, what="trained version")
    assert not list(Path(served.tmp_root / "cache" / "fraud").glob(".sync-*"))


def test_import_publishes_into_the_store(served, s3, tmp_path):
    """``python -m training import model.keras --name NAME --model-dir s3://...``."""
    import keras

    inp = keras.Input((4,), name="input")
    out = keras.layers.Dense(1, activation="sigmoid", name="output")(
        keras.layers.Dense(3, activation="relu", name="dense_1")(inp)
    )
    keras.Model(inp, out).save(tmp_path / "tiny.keras")
    env = {**os.environ, **s3.env(), "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "training", "import", str(tmp_path / "tiny.keras"),
         "--name", "imported", "--model-dir", s3.url(PREFIX), "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"uploaded to {s3.url(PREFIX)}/imported/1" in proc.stdout + proc.stderr
    wait_for(lambda: _versions(served, "imported").get(1) == "ready", 60, what="imported v1")
    r = served.post("/models/imported/predict", json={"instances": [[0.1, 0.2, 0.3, 0.4]]})
    assert r.status_code == 200, r.text
