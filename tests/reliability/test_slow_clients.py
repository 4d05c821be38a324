"""Slow and hostile clients hold no thread (issue 22, service/workers.py): a real Gunicorn
with 2 workers x 4 threads started by service/entrypoint.sh, attacked from a child process
(tests/reliability/slowclients.py) with 300 connections sending a request head one byte
every 2 s, 50 trickling a large body after a complete head and 500 idle ones, all at once
and reopened as the server closes them, while a normal client posts predictions at
concurrency 4. Short timeouts (settings) keep it to about a minute."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest
import requests

from service.settings import Settings
from service.workers import _UNUSUAL, _Reading, chunked_end, head_fields

from . import slowclients
from .helpers import Server, metric_samples, rss_kb, svc_factory

HEADER_TIMEOUT = 5.0
BODY_TIMEOUT = 3.0
BODY_MIN_RATE = 1_000_000  # bytes/s: a 1 MB body gets 1 s on top of BODY_TIMEOUT
# s: the server sweeps every 0.1 s and the attack client polls every 0.05 s, but on a
# loaded 2-core machine either process may wait for a core, and the 850 connections of the
# first burst wait in the listen backlog until accepted (the timeouts start at the accept)
SLACK = 1.5  # for 99 % of the connections opened after that first burst
SLACK_MAX = 3.0  # for every one
TIMEOUTS = {
    "LAYERSCOPE_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "LAYERSCOPE_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "LAYERSCOPE_BODY_MIN_RATE": str(BODY_MIN_RATE),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("slow-models")
    svc_factory.publish(root, "tabular", seed=1, name="fraud")
    return root


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    srv = Server(repo, tmp_path_factory.mktemp("slow"), workers=2, **TIMEOUTS)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def raw(port: int, data: bytes, timeout: float = 10.0, read_until_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                return out


def predict_head(extra: str = "", length: int | None = None) -> bytes:
    n = len(slowclients.PREDICT_BODY) if length is None else length
    return (
        f"POST {slowclients.PREDICT_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
        f"\r\nContent-Length: {n}\r\n{extra}\r\n"
    ).encode()


# -- framing rules (pure functions) ---------------------------------------------------------
def test_head_fields_frame_what_gunicorn_would_and_leave_the_rest_to_it():
    assert head_fields(b"GET / HTTP/1.1\r\nHost: x") == (None, False, False)
    assert head_fields(b"POST / HTTP/1.1\r\ncontent-length: 12\r\nExpect: 100-continue") == (
        12,
        False,
        True,
    )
    assert head_fields(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked") == (None, True, False)
    assert head_fields(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1") == (
        1,
        False,
        False,
    )
    for unusual in (
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1",
        b"POST / HTTP/1.1\r\nContent-Length: -1",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked",
        b"POST / HTTP/1.1\r\nno colon here",
    ):
        assert head_fields(unusual) is _UNUSUAL, unusual


def test_chunked_end_finds_the_end_of_a_body_and_its_trailers():
    def end(data: bytes):
        r = _Reading(0.0, 1.0, data)
        r.chunk_pos = 0
        return chunked_end(r)

    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n"
    assert end(body) == len(body)
    assert end(body + b"GET / HTTP/1.1\r\n") == len(body)  # pipelined bytes stay
    assert end(b"4\r\nWiki\r\n0\r\nX-Trailer: 1\r\n\r\n") == 28
    for cut in range(len(body)):
        assert end(body[:cut]) is None, cut
    assert end(b"zz\r\n") == -1
    assert end(b"4\r\nWikiXX") == -1


def test_the_buffer_cap_may_not_be_smaller_than_one_body():
    with pytest.raises(ValueError, match="Received: max_buffered_bytes=2048, max_body_bytes="):
        Settings(max_buffered_bytes=2048, max_body_bytes=4096)


# -- the server keeps its meaning for ordinary requests -------------------------------------------
def test_requests_of_every_framing_are_answered_as_before(server):
    body = slowclients.PREDICT_BODY
    plain = raw(server.port, predict_head("Connection: close\r\n") + body)
    assert plain.startswith(b"HTTP/1.1 200 OK"), plain[:200]
    expected = plain.split(b"\r\n\r\n", 1)[1]

    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100])
        for i in range(0, len(body), 100)
    )
    chunked = raw(
        server.port,
        (
            f"POST {slowclients.PREDICT_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: "
            "application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        ).encode()
        + chunks
        + b"0\r\n\r\n",
    )
    assert chunked.startswith(b"HTTP/1.1 200 OK"), chunked[:200]
    assert chunked.split(b"\r\n\r\n", 1)[1] == expected

    # two requests in one segment: two answers, in order
    two = raw(server.port, predict_head() + body + predict_head("Connection: close\r\n") + body)
    assert two.count(b"HTTP/1.1 200 OK") == 2, two[:300]

    # Expect: 100-continue: the main loop says "continue" once, then the answer comes
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(predict_head("Expect: 100-continue\r\nConnection: close\r\n"))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in answer, answer[:200]

    # a body over LAYERSCOPE_MAX_BODY_BYTES: the app's 413 at once, without reading it
    start = time.monotonic()
    big = raw(server.port, predict_head(length=50 * 1024 * 1024) + b"[1")
    assert big.startswith(b"HTTP/1.1 413"), big[:300]
    assert b"Connection: close" in big and b"LAYERSCOPE_MAX_BODY_BYTES" in big
    assert time.monotonic() - start < 3

    # a malformed head is still Gunicorn's 400
    bad = raw(server.port, b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400"), bad[:200]


def test_clients_that_never_close_do_not_stall_the_worker(server):
    """Gunicorn closes a "Connection: close" answer by reading until the client hangs up,
    for up to 2 s, in the worker's main loop: 20 clients that do not hang up stopped
    everything for 20 s. Here the drain is one more poller entry."""
    held = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            held.append(sock)
        time.sleep(0.3)
        start = time.monotonic()
        for _ in range(10):
            assert server.get("/healthz", timeout=5).status_code == 200
        assert time.monotonic() - start < 2.0
        for sock in held:  # each got its answer, and then the server's FIN
            sock.settimeout(5)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:100]
    finally:
        for sock in held:
            sock.close()


# -- the attack ----------------------------------------------------------------------------------
class RssSampler:
    """The largest RSS (kB) of each worker, sampled every 0.25 s while running."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.peak = {pid: 0 for pid in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_kb(pid))
            self._stop.wait(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def closed_counts(server) -> dict[str, float]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    return {
        labels["reason"]: value
        for labels, value in metric_samples(text, "layerscope_connections_closed_total")
    }


def connection_log_lines(server) -> list[dict]:
    lines = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if '"layerscope.connections"' in line:
            lines.append(json.loads(line))
    return lines


def test_hundreds_of_slow_and_idle_connections_leave_predictions_unharmed(server, tmp_path):
    plan = slowclients.AttackPlan(duration=20.0, head_interval=2.0, body_interval=1.0)
    workers = sorted(server.worker_pids())
    closed_before = closed_counts(server)
    logged_before = len(connection_log_lines(server))
    client = slowclients.NormalClient("127.0.0.1", server.port, concurrency=4).start()
    try:
        time.sleep(2.0)  # warm-up: every thread of both workers has answered
        t0 = time.monotonic()
        with RssSampler(workers) as before_rss:
            time.sleep(6.0)
        t1 = time.monotonic()
        attack = slowclients.attack_in_subprocess(
            "127.0.0.1", server.port, plan, tmp_path / "attack.json"
        )
        with RssSampler(workers) as during_rss:
            result = attack.result(timeout=plan.duration + 60)
        t2 = time.monotonic()
    finally:
        client.stop()
    before = slowclients.stats(client.window(t0, t1), t1 - t0)
    during_samples = client.window(t1, t2)
    during = slowclients.stats(during_samples, t2 - t1)
    worst = slowclients.worst_window_p99(during_samples, window=5.0)
    summary = result.summary()
    print(
        "\nnormal client before the attack:",
        before,
        "\nnormal client during the attack:",
        during,
        f"worst 5-s p99 {worst} ms",
        "\nattack:",
        json.dumps(summary),
    )

    # the normal client: every request answered, p99 under 1 s in every 5 s of the attack
    assert during["failures"] == {} and during["success"] == 1.0, during
    assert worst is not None and worst < 1000, (worst, during)
    assert during["rps"] > 0.25 * before["rps"], (before, during)

    # every slow connection closed within its timeout, the slow ones with a 408; each
    # slot was reopened and closed again several times
    head, body, idle = summary["head"], summary["body"], summary["idle"]
    assert head["errors"] == body["errors"] == idle["errors"] == 0, summary
    assert head["closed_by_server"] >= 2 * plan.slow_heads, head
    assert body["closed_by_server"] >= 2 * plan.slow_bodies, body
    assert idle["closed_by_server"] >= 2 * plan.idle, idle
    assert head["answers"] == {"HTTP/1.1 408 Request Timeout": head["closed_by_server"]}, head
    assert body["answers"] == {"HTTP/1.1 408 Request Timeout": body["closed_by_server"]}, body
    for kind in (head, idle):
        assert kind["reopened_life_p99_s"] < HEADER_TIMEOUT + SLACK, kind
        assert kind["life_max_s"] < HEADER_TIMEOUT + SLACK_MAX, kind
    body_deadline = BODY_TIMEOUT + plan.body_bytes / BODY_MIN_RATE
    assert body["body_phase_max_s"] < body_deadline + SLACK_MAX, body
    assert body["reopened_life_p99_s"] < body_deadline + SLACK, body
    assert head["life_median_s"] > HEADER_TIMEOUT - 0.5, head  # the timeout closed them

    # memory: what the slow connections hold is small and bounded
    for pid in workers:
        grown_mb = (during_rss.peak[pid] - before_rss.peak[pid]) / 1024
        assert grown_mb < 64, (pid, before_rss.peak, during_rss.peak)

    # counted (both workers, multiprocess metrics) and logged once per client and worker
    closed = closed_counts(server)

    def new(reason):
        return closed.get(reason, 0) - closed_before.get(reason, 0)

    assert new("header_timeout") >= head["closed_by_server"] + idle["closed_by_server"], closed
    assert new("body_timeout") >= body["closed_by_server"], closed
    lines = connection_log_lines(server)[logged_before:]
    assert 1 <= len(lines) <= len(workers), [entry["message"] for entry in lines]
    assert all(entry["client"] == "127.0.0.1" for entry in lines), lines
    assert re.search(r"closed \d+ connection\(s\) from 127\.0\.0\.1", lines[0]["message"])

    # health and readiness keep their meaning; nothing is left open
    assert server.get("/healthz").status_code == 200
    assert server.get("/readyz").status_code == 200

    def quiet():
        text = requests.get(server.url + "/metrics", timeout=10).text
        return sum(v for _, v in metric_samples(text, "layerscope_connections_reading")) <= 2

    slowclients_wait(quiet, 5.0)


def slowclients_wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout}s")


def test_a_connection_over_the_cap_is_answered_503(repo, tmp_path):
    srv = Server(repo, tmp_path, workers=2, LAYERSCOPE_MAX_CONNECTIONS="10", **TIMEOUTS)
    held = []
    try:
        srv.wait_ready()
        for _ in range(30):  # 2 workers x 10 fit; the rest is refused
            held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
            time.sleep(0.02)
        time.sleep(0.5)
        refused = 0
        for sock in held:
            sock.setblocking(False)
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            assert data.startswith(b"HTTP/1.1 503"), data[:200]
            assert b"LAYERSCOPE_MAX_CONNECTIONS" in data and b"Retry-After: 1" in data
            refused += 1
        assert refused >= 10, refused
        for sock in held:
            sock.close()
        held.clear()
        time.sleep(0.3)
        assert srv.get("/healthz", timeout=5).status_code == 200  # room again
        assert closed_counts(srv).get("max_connections", 0) == refused
    finally:
        for sock in held:
            sock.close()
        srv.stop()
