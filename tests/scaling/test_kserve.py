"""Layerscope as KServe's predictor runtime, as far as it runs without a cluster: KServe's
storage initializer (the kserve-storage package) pulls the InferenceService's storageUri
from a real S3 server (rclone) into a folder, the server starts with the
ClusterServingRuntime's own container environment (deploy/kserve: /mnt/models as ONE
model named after the InferenceService, OIP v2) and is queried with KServe's own client
(kserve.InferenceRESTClient)."""

from __future__ import annotations

import json
import os
import stat

import kserve_env
import numpy as np
import pytest
import yaml
from s3server import ROOT, publish_to_store

from tests.reliability.helpers import Server

KSERVE = ROOT / "deploy" / "kserve"


def _runtime_env(isvc_name: str) -> dict[str, str]:
    runtime = yaml.safe_load((KSERVE / "clusterservingruntime.yaml").read_text())
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e["value"].replace("{{.Name}}", isvc_name) for e in container["env"]}
    assert env["LAYERSCOPE_PORT"] == "8080" and env["PROTOCOL"] == "v2"
    return env


def _read_only(folder) -> None:
    """/mnt/models is mounted read-only in the predictor."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="module")
def predictor(s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kserve")
    isvc = yaml.safe_load((KSERVE / "inferenceservice.yaml").read_text())
    name = isvc["metadata"]["name"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "layerscope" and model["protocolVersion"] == "v2"
    # the example's storageUri, moved to the test bucket: s3://<bucket>/kserve/<name>
    assert model["storageUri"].rstrip("/").endswith(f"/{name}")
    url = s3.url("kserve")
    first = publish_to_store(url, tmp / "staging", "tabular", seed=1, name=name)
    second = publish_to_store(url, tmp / "staging", "tabular", seed=2, name=name)
    assert first.endswith(f"/{name}/1") and second.endswith(f"/{name}/2")
    mnt = tmp / "mnt" / "models"
    mnt.mkdir(parents=True)
    pulled = kserve_env.run(kserve_env.DOWNLOAD, f"{url}/{name}", str(mnt), env=s3.env())
    assert str(mnt) in pulled
    _read_only(mnt)
    env = _runtime_env(name)
    for key in ("LAYERSCOPE_HOST", "LAYERSCOPE_PORT", "LAYERSCOPE_WORKERS",
                "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(key)  # the test's: loopback, a free port, one worker, its own folder
    env["LAYERSCOPE_MODEL_REPOSITORY"] = str(mnt)  # /mnt/models
    env["LAYERSCOPE_CACHE_DIR"] = str(tmp / "cache")
    server = Server(None, tmp, workers=1, LAYERSCOPE_PROBES_ON_LOAD="false", **env)
    try:
        server.wait_ready(150)
        yield server, name, mnt, tmp
    finally:
        server.stop()
        for path in [mnt, *mnt.rglob("*")]:
            os.chmod(path, 0o755)


def test_the_initializer_copied_one_models_version_folders(predictor):
    _, name, mnt, _ = predictor
    assert sorted(p.name for p in mnt.iterdir()) == ["1", "2"]
    assert (mnt / "2" / "metadata.json").is_file() and (mnt / "2" / "model.keras").is_file()


def test_the_server_serves_the_folder_as_one_model(predictor):
    server, name, _, _ = predictor
    body = server.get("/models").json()
    assert [m["name"] for m in body["models"]] == [name]
    (model,) = body["models"]
    assert model["default_version"] == 2
    assert [v["status"] for v in model["versions"]] == ["ready", "ready"]
    assert server.get("/v2/health/ready").status_code == 200
    assert server.get(f"/v2/models/{name}/ready").status_code == 200


def test_kserve_inference_rest_client_against_the_runtime(predictor):
    import svc_factory

    server, name, mnt, _ = predictor
    meta = server.get(f"/v2/models/{name}").json()
    (input_spec,) = meta["inputs"]
    rows = np.random.default_rng(3).normal(size=(5, 30)).astype(np.float32)
    out = json.loads(
        kserve_env.run(kserve_env.INFER, server.url, name, input_spec["name"],
                       stdin=json.dumps(rows.tolist()))
    )
    assert out["server_live"] and out["server_ready"] and out["model_ready"]
    # (kserve 0.21's REST client drops model_version from the answer; the server sends it)
    assert out["model_name"] == name
    assert out["id"] == "kserve-test"
    expected = svc_factory.load_keras(mnt / "2").predict(rows, verbose=0)
    (got,) = [np.asarray(v) for v in out["outputs"].values()]
    np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-5)  # v2's
    raw = server.post(f"/v2/models/{name}/infer", json={"inputs": [{
        "name": input_spec["name"], "shape": [5, 30], "datatype": "FP32",
        "data": rows.ravel().tolist()}]}).json()
    assert raw["model_name"] == name and raw["model_version"] == "2"
