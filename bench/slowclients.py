"""Slow clients against each way of serving them: ``python -m bench.slowclients``.

The measurement behind docs/reliability.md's "Slow and hostile clients". Each variant is
a real Gunicorn (2 workers x the service's threads, service/entrypoint.sh) on the same
repository:

* ``before``: Gunicorn's gthread worker with balanced accepting, as Layerscope served
  until issue 22 (``--worker-class service.workers.BalancedThreadWorker``);
* ``after``: the buffering worker (service/workers.py, the default now);
* ``nginx``: Debian's nginx in front of ``before``, buffering requests itself (its
  client_header_timeout / client_body_timeout / keepalive_timeout set like ``after``).

Per variant it reports fraud predictions at concurrency 16 under wrk (interleaved rounds:
the machine is shared and noisy, so compare ratios within a round), then the normal
client of tests/reliability/slowclients.py (concurrency 4) alone and beside the attack
(300 slow heads, 50 slow bodies, 500 idle connections).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.load import run_load
from bench.server import LayerscopeServer, children, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability import slowclients  # noqa: E402

TIMEOUTS = {  # short, so that an attack of a few seconds turns connections over
    "LAYERSCOPE_HEADER_TIMEOUT": "5",
    "LAYERSCOPE_BODY_TIMEOUT": "3",
    "LAYERSCOPE_BODY_MIN_RATE": "1000000",
    "LAYERSCOPE_KEEPALIVE_TIMEOUT": "5",
}
BEFORE = "--worker-class service.workers.BalancedThreadWorker"

NGINX_CONF = """
worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_header_timeout 5s;
  client_body_timeout 3s;
  keepalive_timeout 5s;
  client_max_body_size 10m;
  client_body_buffer_size 1m;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream layerscope {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port} backlog=2048;
    location / {{
      proxy_pass http://layerscope;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
  }}
}}
"""


class Variant:
    def __init__(self, name: str, repo: Path, work: Path, threads: int):
        self.name = name
        self.nginx: subprocess.Popen | None = None
        env = {
            **TIMEOUTS,
            "LAYERSCOPE_POLL_INTERVAL": "0",
            "LAYERSCOPE_LOG_LEVEL": "info",
        }
        if name in ("before", "nginx"):
            env["GUNICORN_CMD_ARGS"] = BEFORE
        folder = work / name
        folder.mkdir()
        self.server = LayerscopeServer(
            repo, folder, workers=2, threads=threads, env=env, log_name="gunicorn.log"
        )
        self.server.start()
        self.server.wait_workers_ready(timeout=300)
        self.port = self.server.port
        if name == "nginx":
            self.port = free_port()
            conf = folder / "nginx.conf"
            user = "user root;" if os.geteuid() == 0 else ""
            conf.write_text(
                NGINX_CONF.format(dir=folder, port=self.port, upstream=self.server.port, user=user)
            )
            self.nginx = subprocess.Popen(
                ["nginx", "-c", str(conf), "-p", str(folder)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            wait_for(self._nginx_up, 20, what="nginx answering /readyz")

    def _nginx_up(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def cpu_seconds(self) -> float:
        """User + system CPU of the Gunicorn workers (and nginx's, if any) so far."""
        pids = list(self.server.worker_pids())
        if self.nginx is not None:
            pids += [self.nginx.pid, *children(self.nginx.pid)]
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        return total / os.sysconf("SC_CLK_TCK")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            os.killpg(self.nginx.pid, signal.SIGTERM)
            self.nginx.wait(20)
        self.server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slowclients", description=__doc__)
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("LAYERSCOPE_MODEL_REPOSITORY", "models")),
        help="a model repository with a fraud model (default: $LAYERSCOPE_MODEL_REPOSITORY "
        "or models/)",
    )
    parser.add_argument("--variants", default="before,after,nginx")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk cell")
    parser.add_argument(
        "--attack", type=float, default=15.0, help="seconds of attack (0: wrk rounds only)"
    )
    parser.add_argument("--baseline", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - {"before", "after", "nginx"})
    if unknown:
        print(f"unknown variants; expected before, after, nginx. Received: {unknown}")
        return 2
    if "nginx" in names and shutil.which("nginx") is None:
        print("the nginx variant needs nginx: apt-get install nginx", file=sys.stderr)
        return 2
    if not (args.repository / "fraud").is_dir():
        print(f"no fraud model in {args.repository}. Received: --repository {args.repository}")
        return 2
    body = slowclients.PREDICT_BODY
    report: dict = {"wrk_c16_rps": {n: [] for n in names}, "attack": {}}
    with tempfile.TemporaryDirectory(prefix="layerscope-slow-") as tmp:
        variants = []
        try:
            for name in names:
                variants.append(Variant(name, args.repository, Path(tmp), args.threads))
            for v in variants:  # warm every worker and thread
                run_load(v.url + slowclients.PREDICT_PATH, body, concurrency=16, seconds=1)
            for round_ in range(args.rounds):
                # the order turns every round: no variant always follows the same one
                for v in variants[round_ % len(variants) :] + variants[: round_ % len(variants)]:
                    cpu = v.cpu_seconds()
                    result = run_load(
                        v.url + slowclients.PREDICT_PATH,
                        body,
                        concurrency=16,
                        seconds=args.duration,
                    )
                    cpu = v.cpu_seconds() - cpu
                    report["wrk_c16_rps"][v.name].append(
                        {
                            "rps": result.rps,
                            "p99_ms": result.p99_ms,
                            "errors": result.errors,
                            # CPU of the server's processes per request: much less
                            # disturbed by other load on the machine than requests/s
                            "cpu_ms_per_request": round(cpu * 1e3 / max(1, result.requests), 4),
                        }
                    )
            for v in variants if args.attack > 0 else []:
                plan = slowclients.AttackPlan(duration=args.attack)
                out = Path(tmp) / f"attack-{v.name}.json"
                report["attack"][v.name] = slowclients.run(
                    "127.0.0.1", v.port, plan, args.baseline, out
                )
                time.sleep(6)  # the last slow connections time out before the next variant
        finally:
            for v in variants:
                v.stop()
    base = report["wrk_c16_rps"].get("before")
    if base:
        report["wrk_c16_ratio_to_before"] = {
            name: {
                "per_round": [
                    round(a["rps"] / b["rps"], 3) for a, b in zip(rows, base, strict=True)
                ],
                "median": round(
                    statistics.median(a["rps"] / b["rps"] for a, b in zip(rows, base, strict=True)),
                    3,
                ),
            }
            for name, rows in report["wrk_c16_rps"].items()
        }
        report["cpu_ms_per_request_median"] = {
            name: round(statistics.median(r["cpu_ms_per_request"] for r in rows), 4)
            for name, rows in report["wrk_c16_rps"].items()
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
