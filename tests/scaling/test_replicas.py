"""Two Layerscope replicas (one Gunicorn worker each, own cache folders) behind HAProxy
with active health checks, both reading one s3:// repository on a real S3 server:

* a version published while traffic flows is served by both within two poll intervals
  (plus its load time), with no failed request;
* a default-version pin set through one replica's admin API holds on the other (the admin
  state is an object in the store);
* one replica killed (SIGKILL) under load costs at most its in-flight requests, and no
  request fails once the balancer has marked it down.

The figures are printed (pytest -s) and written to $LAYERSCOPE_SCALING_FIGURES when set."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import numpy as np
import pytest
import requests
from balancer import HAProxy
from s3server import BUCKET, publish_to_store

from tests.reliability.helpers import Load, Server, wait_dead, wait_for

pytestmark = pytest.mark.skipif(HAProxy.binary() is None, reason="haproxy not installed "
                                "(make system-deps)")

PREFIX = "replicas"
POLL = 2.0  # s, LAYERSCOPE_POLL_INTERVAL of both replicas
TOKEN = "replica-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FIGURES: dict = {}


def _record(key: str, value) -> None:
    FIGURES[key] = value
    print(f"FIGURE {key}: {value}")
    path = os.environ.get("LAYERSCOPE_SCALING_FIGURES")
    if path:
        with open(path, "w") as handle:
            json.dump(FIGURES, handle, indent=1)


class Via:
    """A Load target: requests go to ``url`` (the balancer)."""

    def __init__(self, url: str):
        self.url = url


BODY = {"instances": np.random.default_rng(0).normal(size=(4, 30)).round(3).tolist()}
PREDICT = [("POST", "/models/fraud/predict", {"json": BODY})]


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    url = s3.url(PREFIX)
    publish_to_store(url, tmp / "staging", "tabular", seed=1)
    servers = {}
    try:
        for name in ("a", "b"):
            (tmp / name).mkdir()
            servers[name] = Server(
                None,
                tmp / name,
                workers=1,
                LAYERSCOPE_MODEL_REPOSITORY=url,
                LAYERSCOPE_REPOSITORY_CACHE_DIR=str(tmp / name / "cache"),
                LAYERSCOPE_POLL_INTERVAL=str(POLL),
                LAYERSCOPE_ADMIN_TOKEN=TOKEN,
                LAYERSCOPE_GRPC_PORT="0",
                LAYERSCOPE_PROBES_ON_LOAD="false",
                LAYERSCOPE_RUNTIME="keras",
                **s3.env(),
            )
        for server in servers.values():
            server.wait_ready(150)
        balancer = HAProxy({n: s.port for n, s in servers.items()}, tmp).start()
        wait_for(lambda: set(balancer.status().values()) == {"UP"}, 15, what="both UP")
        yield servers, balancer, tmp
    finally:
        for server in servers.values():
            server.stop()
        if "balancer" in locals():
            balancer.stop()


def _default(server) -> int | None:
    try:
        return server.get("/models/fraud", timeout=5).json()["default_version"]
    except (requests.RequestException, ValueError, KeyError):
        return None


def _state(server, version: int) -> dict | None:
    for v in server.get("/models/fraud").json()["versions"]:
        if v["version"] == version:
            return v
    return None


def test_a_new_version_reaches_both_replicas_within_two_polls(cluster, tmp_path):
    servers, balancer, _ = cluster
    with Load(Via(balancer.url), PREDICT, threads=4) as load:
        time.sleep(1.0)
        assert {_default(s) for s in servers.values()} == {1}
        published = time.monotonic()
        publish_to_store(f"s3://{BUCKET}/{PREFIX}", tmp_path, "tabular", seed=2)
        uploaded = time.monotonic()
        seen: dict[str, float] = {}
        ready: dict[str, float] = {}
        deadline = uploaded + 60
        while len(ready) < 2 and time.monotonic() < deadline:
            for name, server in servers.items():
                state = _state(server, 2)
                if state is not None and name not in seen:
                    seen[name] = time.monotonic() - uploaded
                if state is not None and state["status"] == "ready" and name not in ready:
                    ready[name] = time.monotonic() - uploaded
                    seen.setdefault(name, ready[name])
            time.sleep(0.05)
        time.sleep(0.5)
    assert len(ready) == 2, (seen, ready)
    load_seconds = max(_state(s, 2)["load_seconds"] for s in servers.values())
    failures = load.failures()
    _record("publish_requests_sent", load.count())
    _record("publish_requests_failed", len(failures))
    _record("upload_seconds", round(uploaded - published, 3))
    _record("new_version_seen_by_replica_s", {k: round(v, 2) for k, v in seen.items()})
    _record("new_version_ready_on_replica_s", {k: round(v, 2) for k, v in ready.items()})
    _record("new_version_load_seconds", load_seconds)
    assert failures == [], failures[:5]
    # discovered within two poll intervals of the last object; ready once it has loaded
    assert max(seen.values()) <= 2 * POLL + 0.5, seen
    assert max(ready.values()) <= 2 * POLL + load_seconds + 1.0, (ready, load_seconds)
    answers = [requests.post(balancer.url + PREDICT[0][1], json=BODY, timeout=10).json()
               for _ in range(10)]
    assert {a["version"] for a in answers} == {2}


def test_a_pin_set_through_one_replica_holds_on_the_other(cluster, s3):
    servers, balancer, _ = cluster
    a, b = servers["a"], servers["b"]
    wait_for(lambda: _default(a) == 2 and _default(b) == 2, 30, what="v2 default on both")
    started = time.monotonic()
    r = a.post("/admin/models/fraud/default", json={"version": 1}, headers=AUTH)
    # (PUT, not POST)
    assert r.status_code == 405
    r = requests.put(a.url + "/admin/models/fraud/default", json={"version": 1},
                     headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    assert _default(a) == 1  # the answering replica applied it before replying
    wait_for(lambda: _default(b) == 1, 2 * POLL + 2, interval=0.05, what="the pin on b")
    _record("pin_reached_other_replica_s", round(time.monotonic() - started, 2))
    stored = json.loads(
        s3.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/.admin-state.json")["Body"].read()
    )
    assert stored["models"]["fraud"]["default"] == 1
    answers = [requests.post(balancer.url + PREDICT[0][1], json=BODY, timeout=10).json()
               for _ in range(10)]
    assert {x["version"] for x in answers} == {1}
    # and back, through the other replica
    r = requests.delete(b.url + "/admin/models/fraud/default", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    wait_for(lambda: _default(a) == 2, 2 * POLL + 2, interval=0.05, what="unpinned on a")


def test_one_replica_killed_under_load_costs_only_its_in_flight_requests(cluster):
    servers, balancer, _ = cluster
    victim = servers["b"]
    workers = victim.worker_pids()
    with Load(Via(balancer.url), PREDICT, threads=6) as load:
        time.sleep(3.0)
        before = load.count()
        killed = time.monotonic()
        os.killpg(victim.proc.pid, signal.SIGKILL)  # the whole replica: master and worker
        victim.proc.wait(10)  # the master (our child), then its worker
        for pid in workers:
            with contextlib.suppress(AssertionError):
                wait_dead(pid, 10)
        # Until then its listening socket still completes handshakes: a request sent in
        # that window reached the dying replica, and is one of its in-flight requests.
        dead = time.monotonic()
        marked_down = None
        deadline = killed + 10
        while time.monotonic() < deadline:
            if balancer.status().get("b", "").startswith("DOWN"):
                marked_down = time.monotonic()
                break
            time.sleep(0.02)
        assert marked_down is not None, balancer.status()
        time.sleep(5.0)  # traffic on the survivor only
    results = list(load.results)
    failures = load.failures()
    after_down = [r for r in results if r[0] >= marked_down]
    failed_after_down = [r for r in failures if r[0] >= marked_down]
    _record("kill_requests_sent", len(results))
    _record("kill_requests_before_kill", before)
    _record("kill_requests_failed", len(failures))
    _record("kill_failed_after_marked_down", len(failed_after_down))
    _record("kill_requests_after_marked_down", len(after_down))
    _record("kill_process_gone_after_s", round(dead - killed, 3))
    _record("kill_marked_down_after_s", round(marked_down - killed, 3))
    _record("kill_failures", [(round(r[0] - killed, 3), r[2]) for r in failures][:10])
    # only requests that were in flight on the killed replica may fail: each was sent
    # before its processes were gone (until then its socket still took connections, and
    # a client thread may lose more than one request there), none after
    assert all(r[0] < dead for r in failures), [(r[0] - killed, r[2]) for r in failures]
    assert len(failures) < 0.05 * len(results), len(failures)
    assert failed_after_down == [] and len(after_down) > 50, len(after_down)
