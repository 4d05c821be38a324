"""End to end through a real Gunicorn (2 workers) started by service/entrypoint.sh:
readiness before warm-up, predictions equal the trained model called in-process, hot reload of a new
version, a corrupt version reported while the old one serves, deletion, and bad input
never killing a worker."""

from __future__ import annotations

import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import svc_factory

from bench.server import LayerscopeServer, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Server(LayerscopeServer):
    def __init__(self, repo: Path, tmp: Path):
        super().__init__(
            repo,
            tmp,
            workers=2,
            threads=2,
            multiproc_dir=tmp / "metrics",
            env={"LAYERSCOPE_POLL_INTERVAL": "1", "LAYERSCOPE_MAX_BATCH_SIZE": "64"},
        )
        self.start()

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path, **kw):
        return requests.post(self.url + path, timeout=30, **kw)

    def answering_pids(self, attempts: int = 400) -> set[int]:
        """Worker pids seen answering /healthz; concurrent requests so that the kernel's
        accept() wake-ups cannot keep handing every connection to the same worker."""
        seen: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            for _ in range(attempts // 8):
                seen |= set(pool.map(lambda _: self.get("/healthz").json()["pid"], range(8)))
                if seen >= self.worker_pids():
                    break
        return seen

    def all_workers_ready(self) -> bool:
        """Every worker has answered /readyz with 200 (each loads its own models)."""
        ready: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                for r in pool.map(lambda _: self.get("/readyz"), range(8)):
                    if r.status_code == 200:
                        ready.add(r.json()["pid"])
                workers = self.worker_pids()
                if len(workers) == 2 and ready >= workers:
                    return True
        return False

    def concurrently(self, fn, n: int = 24) -> list:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: fn(), range(n)))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    repo = tmp / "models"
    svc_factory.train_real(repo, "fraud", epochs=1)  # the real training pipeline
    svc_factory.publish(repo, "image", seed=42)
    server = Server(repo, tmp)
    # /readyz from the first moment: connection refused while workers import, then 503
    # while models load and warm in the background, then 200.
    seen: list[int | str] = []
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, (tmp / "gunicorn.log").read_text()[-3000:]
            try:
                code = server.get("/readyz").status_code
            except requests.ConnectionError:
                code = "down"
            if not seen or seen[-1] != code:
                seen.append(code)
            if code == 200:
                break
            time.sleep(0.02)
        assert seen[-1] == 200, f"never ready: {seen}\n" + (tmp / "gunicorn.log").read_text()
        wait_for(server.all_workers_ready, 120, what="both workers ready")
        yield server, repo, seen
    finally:
        server.stop()


def test_readyz_503_until_models_are_warm(served):
    _, _, seen = served
    assert 503 in seen and seen.index(503) < seen.index(200), seen


def test_two_workers_answer(served):
    server, _, _ = served
    workers = server.worker_pids()
    assert len(workers) == 2
    assert server.answering_pids() == workers


def test_predictions_equal_model_in_process(served):
    server, repo, _ = served
    fraud = svc_factory.load_keras(repo / "fraud" / "1")
    fashion = svc_factory.load_keras(repo / "fashion" / "1")
    x = np.load(repo / "fraud" / "1" / "reference.npz")["x"][:32]  # real transactions
    expected = np.asarray(fraud(x, training=False))
    # concurrent requests, so both workers answer some of them
    for r in server.concurrently(
        lambda: server.post("/models/fraud/predict", json={"instances": x.tolist()})
    ):
        got = np.array([p["fraud_probability"] for p in r.json()["predictions"]])
        assert np.max(np.abs(got - expected[:, 0])) <= 1e-5
    for r in server.concurrently(
        lambda: server.post("/v1/models/fraud:predict", json={"instances": x.tolist()})
    ):
        assert np.max(np.abs(np.array(r.json()["predictions"]) - expected)) <= 1e-5
    xi = svc_factory.image_samples(8, seed=44)
    expected = np.asarray(fashion(xi, training=False))
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [8, 28, 28, 1],
                "datatype": "FP32",
                "data": xi.reshape(-1).tolist(),
            }
        ]
    }
    for r in server.concurrently(lambda: server.post("/v2/models/fashion/infer", json=body)):
        got = np.array(r.json()["outputs"][0]["data"]).reshape(8, 10)
        assert np.max(np.abs(got - expected)) <= 1e-5


def test_bad_input_never_kills_a_worker(served):
    server, _, _ = served
    before = server.worker_pids()
    assert len(before) == 2
    bad = [
        dict(data=b"{" * 100000, headers={"Content-Type": "application/json"}),
        dict(data=b"[" * 50000 + b"]" * 50000, headers={"Content-Type": "application/json"}),
        dict(json={"instances": [[[[[1]]]]] * 64}),
        dict(json={"instances": [[1e308] * 30]}),
        dict(data=b"\xff\xfe\x00garbage", headers={"Content-Type": "application/json"}),
        dict(data=b"x" * (11 * 1024 * 1024), headers={"Content-Type": "application/json"}),
        dict(files={"image": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100)}),
    ]
    for kwargs in bad:
        for path in (
            "/models/fraud/predict",
            "/models/fashion/predict",
            "/v1/models/fraud:predict",
            "/v2/models/fashion/infer",
        ):
            try:
                r = server.post(path, **kwargs)
            except requests.ConnectionError:  # 413 may close the socket mid-upload
                continue
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])
            assert "error" in r.json()
    assert server.worker_pids() == before  # no worker died or was replaced
    assert server.answering_pids() == before


def test_hot_reload_corrupt_version_and_delete(served):
    server, repo, _ = served
    x = svc_factory.tabular_samples(16, seed=45)

    def served_versions():
        return {
            r.json()["version"]
            for r in server.concurrently(
                lambda: server.post("/models/fraud/predict", json={"instances": x.tolist()})
            )
        }

    # a new version published while serving is picked up by every worker
    v2 = svc_factory.publish(repo, "tabular", seed=46)
    wait_for(lambda: served_versions() == {2}, 90, what="version 2 served by all workers")
    expected = np.asarray(svc_factory.load_keras(v2)(x, training=False))[:, 0]
    r = server.post("/models/fraud/predict", json={"instances": x.tolist()})
    got = np.array([p["fraud_probability"] for p in r.json()["predictions"]])
    assert np.max(np.abs(got - expected)) <= 1e-5
    r = server.post("/models/fraud/versions/1/predict", json={"instances": x.tolist()})
    assert r.json()["version"] == 1  # older versions stay addressable

    # a corrupt version 3: reported as failed by every worker, version 2 keeps serving
    svc_factory.publish_corrupt(repo, v2)

    def v3_failed():
        for r in server.concurrently(lambda: server.get("/models/fraud")):
            versions = {v["version"]: v for v in r.json()["versions"]}
            if 3 not in versions or versions[3]["status"] != "failed":
                return False
            assert "checksum mismatch" in versions[3]["reason"]
        return True

    wait_for(v3_failed, 90, what="version 3 reported failed")
    assert served_versions() == {2}
    status = server.get("/v1/models/fraud").json()["model_version_status"]
    assert status[0]["version"] == "3" and status[0]["state"] == "END"
    assert server.get("/readyz").status_code == 200

    # deleting version 2 unloads it: version 1 serves again
    shutil.rmtree(v2)
    wait_for(lambda: served_versions() == {1}, 90, what="fallback to version 1")
    listed = [v["version"] for v in server.get("/models/fraud").json()["versions"]]
    assert listed == [1, 3]
    assert (
        server.post("/models/fraud/versions/2/predict", json={"instances": x.tolist()}).status_code
        == 404
    )


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("process groups and /proc needed", allow_module_level=True)
