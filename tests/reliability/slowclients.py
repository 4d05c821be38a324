"""Slow and hostile HTTP clients, and a normal client to watch beside them (issue 22).

Reusable against any Layerscope server, the Docker container included::

    python -m tests.reliability.slowclients --host 127.0.0.1 --port 8000 --duration 30

runs the attack (300 connections sending a request head one byte every few seconds, 50
sending a complete head and then trickling a large body, 500 idle ones, all at once, each
reopened when the server closes it) while a normal client posts fraud predictions at
concurrency 4, and prints the normal client's requests/s and latency percentiles before
and during the attack, and how long the server let each kind of slow connection live.

:func:`attack` runs the attack in this process (one thread, a selector: it costs little
CPU, so it does not steal the server's); :func:`attack_in_subprocess` runs it in a child
process, as the tests do; :func:`normal_client` is the watched client. Everything is
bounded in time and in connections, and meant for a server of your own (loopback in the
tests).
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import os
import random
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREDICT_PATH = "/models/fraud/predict"
# a fraud row (30 raw features): the body of the normal client's predictions
FRAUD_ROW = [0.0, -1.36, -0.07, 2.54, 1.38, -0.34, 0.46, 0.24, 0.1, 0.36, 0.09, -0.55, -0.62,
             -0.99, -0.31, 1.47, -0.47, 0.21, 0.03, 0.4, 0.25, -0.02, 0.28, -0.11, 0.07, 0.13,
             -0.19, 0.13, -0.02, 149.62]  # fmt: skip
PREDICT_BODY = json.dumps({"instances": [FRAUD_ROW]}).encode()


@dataclass
class AttackPlan:
    slow_heads: int = 300  # connections sending a request head one byte at a time
    head_interval: float = 2.0  # seconds between two bytes of a head
    slow_bodies: int = 50  # connections sending a complete head, then a trickled body
    body_bytes: int = 1_000_000  # the Content-Length those bodies announce
    body_interval: float = 1.0  # seconds between two bytes of a body
    idle: int = 500  # connections that send nothing at all
    duration: float = 30.0  # seconds the attack lasts
    reconnect: bool = True  # reopen a connection the server closed, while time is left
    max_opened: int = 50_000  # connections opened in all, at most
    path: str = PREDICT_PATH


@dataclass
class Record:
    kind: str  # head, body, idle
    opened: float  # time.monotonic() of connect()
    closed: float | None = None  # when the server closed it (None: still open at the end)
    sent: int = 0  # bytes sent
    head_done: float | None = None  # body connections: when the head was complete
    answer: str = ""  # the status line the server answered with, if any
    error: str = ""  # connect / send failure


@dataclass
class AttackResult:
    host: str
    port: int
    plan: dict
    started: float
    ended: float
    records: list[Record] = field(default_factory=list)

    def summary(self) -> dict:
        """Per kind: connections opened, closed by the server, still open at the end,
        the answers seen, and how long the server let them live (seconds)."""
        out = {}
        for kind in ("head", "body", "idle"):
            rows = [r for r in self.records if r.kind == kind]
            closed = [r for r in rows if r.closed is not None]
            lives = sorted(r.closed - r.opened for r in closed)
            # connections reopened once the server had accepted the first burst
            later = sorted(r.closed - r.opened for r in closed if r.opened > self.started + 1.0)
            bodies = sorted(r.closed - r.head_done for r in closed if r.head_done is not None)
            answers: dict[str, int] = {}
            for r in closed:
                answers[r.answer or "(closed without answer)"] = (
                    answers.get(r.answer or "(closed without answer)", 0) + 1
                )
            out[kind] = {
                "opened": len(rows),
                "closed_by_server": len(closed),
                "open_at_end": len(rows) - len(closed),
                "errors": sum(1 for r in rows if r.error),
                "answers": answers,
                "life_max_s": round(lives[-1], 3) if lives else None,
                "life_median_s": round(lives[len(lives) // 2], 3) if lives else None,
                "life_p99_s": round(lives[int(0.99 * (len(lives) - 1))], 3) if lives else None,
                "reopened_life_p99_s": (
                    round(later[int(0.99 * (len(later) - 1))], 3) if later else None
                ),
                "body_phase_max_s": round(bodies[-1], 3) if bodies else None,
            }
        return out


class _Slow:
    __slots__ = ("sock", "record", "first", "trickle", "length", "pos", "next_send", "interval")

    def __init__(self, sock, record, first: bytes, trickle: bytes, length: int, interval: float):
        self.sock = sock
        self.record = record
        self.first = first  # sent whole at the start (a body connection's head)
        self.trickle = trickle  # then sent one byte per interval: ...
        self.length = length  # ... this many bytes (0: an idle connection)
        self.pos = -1 if first else 0  # -1: ``first`` not sent yet
        self.interval = interval
        self.next_send = 0.0


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard
    limit); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def attack(host: str, port: int, plan: AttackPlan | None = None) -> AttackResult:
    """Open every slow connection at once, keep them going for ``plan.duration`` seconds
    (reopening those the server closes), and record what the server did with each."""
    plan = plan or AttackPlan()
    total = plan.slow_heads + plan.slow_bodies + plan.idle
    limit = raise_fd_limit(total + 64)
    if limit < total + 16:
        raise RuntimeError(
            f"the attack needs {total + 16} file descriptors; ulimit -n allows {limit}. "
            "Raise it (ulimit -n) or open fewer connections"
        )
    head = (
        f"POST {plan.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nX-Padding: "
    ).encode() + b"a" * 64  # never ends: no blank line
    body_head = (
        f"POST {plan.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {plan.body_bytes}\r\n\r\n"
    ).encode()
    selector = selectors.DefaultSelector()
    result = AttackResult(host, port, asdict(plan), time.monotonic(), 0.0)
    live: dict[socket.socket, _Slow] = {}
    opened = 0
    rng = random.Random(22)

    def open_one(kind: str, now: float) -> None:
        nonlocal opened
        if opened >= plan.max_opened:
            return
        opened += 1
        record = Record(kind, now)
        result.records.append(record)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            record.error = os.strerror(err)
            record.closed = now
            sock.close()
            return
        if kind == "head":
            slow = _Slow(sock, record, b"", head, len(head), plan.head_interval)
            # spread the trickles so that they do not all fire in the same millisecond
            slow.next_send = now + rng.random() * slow.interval
        elif kind == "body":
            slow = _Slow(sock, record, body_head, b"[", plan.body_bytes, plan.body_interval)
            slow.next_send = now  # the head goes at once
        else:
            slow = _Slow(sock, record, b"", b"", 0, 0.0)
        live[sock] = slow
        selector.register(sock, selectors.EVENT_READ, slow)

    def server_closed(slow: _Slow, now: float, answer: bytes = b"", error: str = "") -> None:
        record = slow.record
        record.closed = now
        record.answer = answer.split(b"\r\n", 1)[0].decode("latin-1")[:80]
        record.error = error
        with_reconnect = plan.reconnect and now < deadline
        selector.unregister(slow.sock)
        live.pop(slow.sock, None)
        slow.sock.close()
        if with_reconnect:
            open_one(record.kind, now)

    start = time.monotonic()
    deadline = start + plan.duration
    kinds = ["head"] * plan.slow_heads + ["body"] * plan.slow_bodies + ["idle"] * plan.idle
    rng.shuffle(kinds)
    for kind in kinds:
        open_one(kind, time.monotonic())
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        for slow in list(live.values()):
            if not slow.length or now < slow.next_send or slow.pos >= slow.length:
                continue
            # a body connection sends its head whole, then one byte per interval
            if slow.pos < 0:
                data = slow.first
            elif len(slow.trickle) == 1:
                data = slow.trickle
            else:
                data = slow.trickle[slow.pos : slow.pos + 1]
            try:
                sent = slow.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0  # still connecting, or the server stopped reading: later
            except OSError as exc:
                server_closed(slow, now, error=exc.__class__.__name__)
                continue
            slow.record.sent += sent
            if slow.pos < 0:
                if sent < len(data):  # the head must go whole; try the rest later
                    slow.first = data[sent:]
                    continue
                slow.pos = 0
                slow.record.head_done = now
            else:
                slow.pos += sent
            slow.next_send = now + slow.interval
        for key, _ in selector.select(timeout=0.05):
            slow = key.data
            try:
                data = slow.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                server_closed(slow, time.monotonic(), error=exc.__class__.__name__)
                continue
            # the server's answer (408 / 503) comes with its FIN; either ends the connection
            server_closed(slow, time.monotonic(), answer=data)
    for slow in list(live.values()):
        selector.unregister(slow.sock)
        slow.sock.close()
    selector.close()
    result.ended = time.monotonic()
    return result


class AttackProcess:
    """:func:`attack` in a child process (``python -m tests.reliability.slowclients
    --attack-only``), so that its work shares no GIL with the caller's client."""

    def __init__(self, host: str, port: int, plan: AttackPlan, out: Path):
        self.out = Path(out)
        args = [
            sys.executable, "-m", "tests.reliability.slowclients", "--attack-only",
            "--host", host, "--port", str(port), "--json-out", str(self.out),
            "--plan", json.dumps(asdict(plan)),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self, timeout: float) -> AttackResult:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        if self.proc.returncode != 0:
            raise RuntimeError(f"the attack process exited {self.proc.returncode}: {err[-2000:]!r}")
        return load_result(self.out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def attack_in_subprocess(host: str, port: int, plan: AttackPlan, out: Path) -> AttackProcess:
    return AttackProcess(host, port, plan, out)


def load_result(path: Path) -> AttackResult:
    raw = json.loads(Path(path).read_text())
    records = [Record(**r) for r in raw.pop("records")]
    return AttackResult(records=records, **raw)


# -- the normal client ------------------------------------------------------------------------
@dataclass
class Sample:
    start: float  # time.monotonic()
    seconds: float
    status: int | str  # HTTP status, or the exception's name


class NormalClient:
    """``concurrency`` threads posting ``body`` to ``path`` back to back over keep-alive
    connections (http.client: little CPU per request), until stopped."""

    def __init__(
        self,
        host: str,
        port: int,
        concurrency: int = 4,
        path: str = PREDICT_PATH,
        body: bytes = PREDICT_BODY,
        timeout: float = 10.0,
    ):
        self.host, self.port, self.path, self.body, self.timeout = host, port, path, body, timeout
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)
        ]

    def _run(self) -> None:
        headers = {"Content-Type": "application/json"}
        conn = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            start = time.monotonic()
            try:
                conn.request("POST", self.path, self.body, headers)
                resp = conn.getresponse()
                resp.read()
                status: int | str = resp.status
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = None
            with self._lock:
                self.samples.append(Sample(start, time.monotonic() - start, status))
        if conn is not None:
            conn.close()

    def start(self) -> NormalClient:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def window(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.start < end]


def stats(samples: list[Sample], seconds: float) -> dict:
    """Requests/s, success rate and latency percentiles (ms) of ``samples``."""
    ok = sorted(s.seconds for s in samples if s.status == 200)
    failures: dict[str, int] = {}
    for s in samples:
        if s.status != 200:
            failures[str(s.status)] = failures.get(str(s.status), 0) + 1

    def pct(q: float) -> float | None:
        if not ok:
            return None
        return round(ok[min(len(ok) - 1, int(q * len(ok)))] * 1e3, 2)

    return {
        "requests": len(samples),
        "rps": round(len(samples) / seconds, 1) if seconds > 0 else None,
        "success": round(len(ok) / len(samples), 5) if samples else None,
        "failures": failures,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(ok[-1] * 1e3, 2) if ok else None,
    }


def worst_window_p99(samples: list[Sample], window: float = 5.0) -> float | None:
    """The highest p99 (ms) over consecutive ``window``-second slices of ``samples``
    ("p99 under 1 s throughout"). A slice of a few seconds holds thousands of requests,
    so its p99 is not one scheduling hiccup of a loaded machine, as a 1-s slice's is."""
    by_window: dict[int, list[float]] = {}
    for s in samples:
        by_window.setdefault(int(s.start // window), []).append(s.seconds)
    worst = None
    for values in by_window.values():
        values.sort()
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))] * 1e3
        worst = p99 if worst is None else max(worst, p99)
    return None if worst is None else round(worst, 2)


def run(host: str, port: int, plan: AttackPlan, baseline: float, out: Path) -> dict:
    """The whole exercise: the normal client alone for ``baseline`` seconds, then beside
    the attack (in a child process) for ``plan.duration``; the figures of both."""
    client = NormalClient(host, port).start()
    try:
        time.sleep(1.0)  # warm-up, not measured
        t0 = time.monotonic()
        time.sleep(baseline)
        t1 = time.monotonic()
        proc = attack_in_subprocess(host, port, plan, out)
        result = proc.result(timeout=plan.duration + 60)
        t2 = time.monotonic()
    finally:
        client.stop()
    during = client.window(t1, t2)
    return {
        "normal_before": stats(client.window(t0, t1), t1 - t0),
        "normal_during": {
            **stats(during, t2 - t1),
            "worst_5s_p99_ms": worst_window_p99(during),
        },
        "attack": result.summary(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.slowclients", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of attack (default 30)"
    )
    parser.add_argument(
        "--baseline", type=float, default=10.0, help="seconds of the normal client alone"
    )
    parser.add_argument("--plan", default=None, help="AttackPlan fields as JSON")
    parser.add_argument("--attack-only", action="store_true", help="no normal client")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    plan = AttackPlan(**json.loads(args.plan)) if args.plan else AttackPlan()
    if args.duration is not None:
        plan.duration = args.duration
    if args.attack_only:
        result = attack(args.host, args.port, plan)
        if args.json_out:
            payload = asdict(result)
            args.json_out.write_text(json.dumps(payload))
        print(json.dumps(result.summary(), indent=2))
        return 0
    out = args.json_out or Path(f"/tmp/slowclients-{os.getpid()}.json")
    report = run(args.host, args.port, plan, args.baseline, out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
