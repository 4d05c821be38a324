"""SIGTERM drains requests in flight: to one worker (it finishes its requests, exits and
is replaced) and to the Gunicorn master (every worker finishes, then a clean exit)."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .helpers import Server, publish_slow_image, svc_factory, wait_for

# 96 images: ~2 s a request when 8 share the 2 cores. With 48 (~1 s) the last request
# ended only ~0.45 s after the master's SIGTERM on a quiet machine, and a CI run with
# other load on the machine once saw every request end before signal + 0.2 s.
BATCH = svc_factory.image_samples(96, seed=31).tolist()
# Encoded once: 8 client threads each running json.dumps on 96 images took turns on the
# test process's GIL, and a CI run saw the last request reach the server only after the
# master's SIGTERM, 0.4 s after it was submitted (it then found no worker accepting).
BODY = json.dumps({"instances": BATCH}).encode()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sigterm")
    publish_slow_image(tmp / "models")
    server = Server(
        tmp / "models",
        tmp,
        workers=2,
        LAYERSCOPE_GRACEFUL_TIMEOUT="60",
        LAYERSCOPE_MAX_BATCH_SIZE=str(len(BATCH)),
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _slow(server):
    start = time.monotonic()
    try:
        r = requests.post(
            f"{server.url}/models/slow/predict",
            data=BODY,
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
        return start, time.monotonic(), r.status_code
    except requests.RequestException as exc:
        return start, time.monotonic(), type(exc).__name__


def _served_by(server, pid: int, path: str) -> int:
    """Access-log lines of ``pid`` answering ``path`` with 200."""
    n = 0
    for line in server.logs(10**7).splitlines():
        if '"layerscope.access"' not in line:
            continue
        entry = json.loads(line)
        if entry["pid"] == pid and entry["path"] == path and entry["status"] == 200:
            n += 1
    return n


def test_sigterm_to_a_worker_drains_its_requests(slow_server):
    server = slow_server
    t0 = time.monotonic()
    _slow(server)
    one = time.monotonic() - t0
    workers = server.worker_pids()
    victim = min(workers)
    before = _served_by(server, victim, "/models/slow/predict")
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_slow, server) for _ in range(8)]
        time.sleep(min(0.5, one / 3))
        os.kill(victim, signal.SIGTERM)
        signalled = time.monotonic()
        results = [f.result() for f in futures]
    assert [r[2] for r in results] == [200] * 8, results
    # the victim finished requests after it was told to stop
    assert _served_by(server, victim, "/models/slow/predict") > before
    assert any(end > signalled for _, end, _ in results)
    wait_for(lambda: victim not in server.worker_pids(), 30, what="the worker to exit")
    wait_for(lambda: len(server.worker_pids()) == 2, 30, what="a replacement")
    assert "Worker exiting" in server.logs(10**7) or "exiting" in server.logs(10**7).lower()


def test_sigterm_to_the_master_drains_every_request(slow_server):
    server = slow_server
    server.wait_ready(90)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_slow, server) for _ in range(8)]
        time.sleep(0.4)
        os.kill(server.proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        results = [f.result() for f in futures]
    assert [r[2] for r in results] == [200] * 8, results
    assert any(end > signalled + 0.2 for _, end, _ in results), "nothing was in flight"
    assert server.proc.wait(60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/healthz", timeout=5)
