"""HAProxy (Debian's package) in front of Layerscope replicas for the replica test:
round robin, active health checks on /readyz, a fresh server connection per request
(a dead replica shows as a refused connection, which is retried on the other one), and its
stats page (CSV) to see when a replica is marked down."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from bench.server import free_port

CHECK_INTER_MS = 250  # health check period
CHECK_TIMEOUT_S = 2  # a busy replica (loading a version on a shared core) answers slowly
FALL, RISE = 3, 2  # failed checks to mark a server down, passed ones to mark it up

CONFIG = """\
global
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check {check_timeout}s
    # a refused connection (replica gone) is retried, each retry on another server
    retries 2
    option redispatch 1
    # one server connection per request: no idle connection to a dead replica is reused
    option http-server-close

frontend layerscope
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {inter}ms fastinter {inter}ms downinter {inter}ms fall {fall} rise {rise}
{servers}

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


class HAProxy:
    def __init__(self, backends: dict[str, int], workdir: Path):
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = Path(workdir)
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{port} check" for name, port in backends.items()
        )
        self.config = self.workdir / "haproxy.cfg"
        self.config.write_text(
            CONFIG.format(
                port=self.port,
                stats_port=self.stats_port,
                servers=servers,
                inter=CHECK_INTER_MS,
                check_timeout=CHECK_TIMEOUT_S,
                fall=FALL,
                rise=RISE,
            )
        )
        self.log_path = self.workdir / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
        )

    def start(self) -> HAProxy:
        check = subprocess.run(
            [self.binary(), "-c", "-f", str(self.config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary(), "-db", "-f", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                self.status()
                return self
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError("haproxy did not start:\n" + self.log_path.read_text())

    def status(self) -> dict[str, str]:
        """Each backend server's status (UP, DOWN, ...) from the stats CSV."""
        text = requests.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            r["svname"]: r["status"]
            for r in rows
            if r["pxname"] == "replicas" and r["svname"] not in ("FRONTEND", "BACKEND")
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
