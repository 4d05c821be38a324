"""Soak test: mixed traffic against a real Gunicorn for a while; errors and worker RSS.

    python -m bench.soak --duration 300 --concurrency 32     # the 5-minute soak
    python -m bench.soak --duration 30                       # the CI version

Starts ``service/entrypoint.sh`` on a free port over ``--models`` (default: tiny seeded
models published into a temporary repository), warms up, then sends predict /
activations / explain / metrics requests from ``--concurrency`` threads. Every
``--interval`` seconds it prints the requests, errors and each worker's RSS; at the end
the RSS growth from the first to the last sample (target < 5 %). Any non-200 answer or
transport error is an error. Exit status 1 when there were errors (or, with
``--max-rss-growth``, when RSS grew more than that percentage)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests

from bench.server import LayerscopeServer, children, rss_kb

FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]


# -- models ------------------------------------------------------------------------------
def publish_tiny_models(repo: Path) -> None:
    """A tabular binary model ``fraud`` and an image model ``fashion``, seeded, built by
    training/builder.py and published by training/publish.py (random weights)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from training.builder import build_model
    from training.publish import layer_table, stage_version

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_tab = rng.normal(0, 1, (128, 30)).astype(np.float32)
    x_img = rng.integers(0, 256, (32, 28, 28, 1)).astype(np.float32)
    specs = [
        (
            "fraud",
            {
                "name": "fraud",
                "task": "binary_classification",
                "dataset": {"name": "creditcard"},
                "input": "tabular",
                "preprocessing": {"normalize": True},
                "hidden": [
                    {"kind": "dense", "units": 16, "activation": "relu"},
                    {"kind": "dense", "units": 8, "activation": "relu"},
                ],
            },
            x_tab,
            {"kind": "tabular", "features": FEATURES, "shape": [30], "dtype": "float32"},
            ["legit", "fraud"],
        ),
        (
            "fashion",
            {
                "name": "fashion",
                "task": "multiclass_classification",
                "dataset": {"name": "fashion_mnist"},
                "input": "image",
                "preprocessing": {"rescale": 1 / 255},
                "hidden": [
                    {"kind": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
                    {"kind": "max_pool", "pool": 2},
                    {"kind": "flatten"},
                    {"kind": "dense", "units": 16, "activation": "relu"},
                ],
            },
            x_img,
            {"kind": "image", "shape": [28, 28, 1], "dtype": "float32", "value_range": [0, 255]},
            [str(i) for i in range(10)],
        ),
    ]
    for name, cfg, x, input_spec, classes in specs:
        binary = len(classes) == 2
        model = build_model(
            cfg,
            input_shape=tuple(input_spec["shape"]),
            num_classes=len(classes),
            **({"adapt_data": x} if binary else {}),
        )
        with stage_version(repo / name, name) as staged:
            model.save(staged.path / "model.keras")
            np.savez(staged.path / "reference.npz", x=x, y=np.zeros(len(x), np.int64))
            staged.metadata.update(
                format_version=1,
                task=cfg["task"],
                config=cfg,
                class_names=classes,
                threshold=0.5 if binary else None,
                input=input_spec,
                output={
                    "activation": "sigmoid" if binary else "softmax",
                    "units": 1 if binary else len(classes),
                },
                layers=layer_table(model),
                metrics={},
            )


# -- traffic -----------------------------------------------------------------------------
def request_mix(repo: Path, seed: int = 0) -> list[tuple[float, str, str, dict | None]]:
    """(weight, method, path, json body) for every model's newest version."""
    rng = np.random.default_rng(seed)
    mix: list[tuple[float, str, str, dict | None]] = [(0.05, "GET", "/metrics", None)]
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        versions = [p for p in model_dir.iterdir() if p.name.isdigit()]
        if not versions:
            continue
        latest = max(versions, key=lambda p: int(p.name))
        meta = json.loads((latest / "metadata.json").read_text())
        x = np.load(latest / "reference.npz")["x"]
        name = model_dir.name
        rows = x[rng.choice(len(x), size=min(4, len(x)), replace=False)].tolist()
        image = meta["input"]["kind"] == "image"
        mix += [
            (0.45, "POST", f"/models/{name}/predict", {"instances": rows}),
            (0.15, "POST", f"/models/{name}/activations", {"instances": rows[:2]}),
            (
                0.10,
                "POST",
                f"/models/{name}/explain",
                {"instances": rows[:1]} if image else {"instances": rows[:2], "steps": 16},
            ),
        ]
    total = sum(w for w, *_ in mix)
    return [(w / total, m, p, b) for w, m, p, b in mix]


class Traffic:
    def __init__(self, url: str, mix, concurrency: int, seed: int = 0):
        self.url, self.mix, self.concurrency = url, mix, concurrency
        self.ok = 0
        self.errors: Counter = Counter()
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(seed + i,), daemon=True)
            for i in range(concurrency)
        ]

    def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        weights = [w for w, *_ in self.mix]
        session = requests.Session()
        while not self._stop.is_set():
            _, method, path, body = rnd.choices(self.mix, weights)[0]
            start = time.perf_counter()
            try:
                r = session.request(method, self.url + path, json=body, timeout=60)
                error = None if r.status_code == 200 else f"{r.status_code} {path}"
                if error and r.headers.get("content-type", "").startswith("application/json"):
                    error += f": {str(r.json().get('error'))[:120]}"
            except requests.RequestException as exc:
                error = f"{type(exc).__name__} {path}"
                session = requests.Session()
            with self._lock:
                if error is None:
                    self.ok += 1
                    self.latencies.append(time.perf_counter() - start)
                else:
                    self.errors[error] += 1

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, sum(self.errors.values())


# -- server ------------------------------------------------------------------------------
def worker_pids(master: int) -> list[int]:
    return sorted(children(master))


def rss_mb(pid: int) -> float:
    return rss_kb(pid) / 1024


def start_server(repo: Path, workers: int, threads: int, tmp: Path) -> LayerscopeServer:
    return LayerscopeServer(
        repo,
        tmp,
        workers=workers,
        threads=threads,
        env={"LAYERSCOPE_LOG_LEVEL": "warning", "TF_CPP_MIN_LOG_LEVEL": "2"},
    ).start()


# -- main --------------------------------------------------------------------------------
def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="layerscope-soak-") as tmpdir:
        tmp = Path(tmpdir)
        repo = Path(args.models) if args.models else tmp / "models"
        if not args.models:
            publish_tiny_models(repo)
        server = start_server(repo, args.workers, args.threads, tmp)
        url = server.url
        try:
            server.wait_workers_ready(300)
            traffic = Traffic(url, request_mix(repo), args.concurrency)
            traffic.start()
            time.sleep(args.warmup)  # allocations of the first requests are not growth
            base_ok, base_err = traffic.snapshot()
            samples = []
            start = time.monotonic()
            print(
                f"soak: {url}, {args.workers} workers, concurrency {args.concurrency}, "
                f"{args.duration}s after {args.warmup}s warm-up",
                flush=True,
            )
            print(f"{'t_s':>6} {'requests':>9} {'errors':>7} {'rps':>7}  worker RSS MB", flush=True)
            last_t, last_n = start, base_ok + base_err
            while True:
                now = time.monotonic()
                ok, err = traffic.snapshot()
                pids = worker_pids(server.pid)
                rss = {pid: round(rss_mb(pid), 1) for pid in pids}
                samples.append(
                    {
                        "t": round(now - start, 1),
                        "ok": ok - base_ok,
                        "errors": err - base_err,
                        "rss_mb": rss,
                    }
                )
                rps = (ok + err - last_n) / max(now - last_t, 1e-9)
                last_t, last_n = now, ok + err
                print(
                    f"{now - start:6.1f} {ok + err - base_ok - base_err:9d} "
                    f"{err - base_err:7d} {rps:7.1f}  "
                    + " ".join(f"{pid}:{mb:.1f}" for pid, mb in rss.items()),
                    flush=True,
                )
                if now - start >= args.duration:
                    break
                time.sleep(min(args.interval, max(0.0, args.duration - (now - start))))
            traffic.stop()
        finally:
            server.stop(timeout=60)
    first, last = samples[0], samples[-1]
    same = set(first["rss_mb"]) == set(last["rss_mb"])
    growth = (
        (sum(last["rss_mb"].values()) - sum(first["rss_mb"].values()))
        / max(sum(first["rss_mb"].values()), 1e-9)
        * 100
    )
    lat = sorted(traffic.latencies) or [float("nan")]
    report = {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "requests": traffic.ok + sum(traffic.errors.values()),
        "ok": traffic.ok,
        "errors": sum(traffic.errors.values()),
        "error_kinds": dict(traffic.errors.most_common(10)),
        "p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 2),
        "rss_first_mb": first["rss_mb"],
        "rss_last_mb": last["rss_mb"],
        "rss_growth_percent": round(growth, 2),
        "same_workers": same,
        "samples": samples,
    }
    print(
        f"requests {report['requests']}, errors {report['errors']} "
        f"{report['error_kinds'] or ''}, p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms"
    )
    print(
        f"worker RSS {sum(first['rss_mb'].values()):.1f} MB -> "
        f"{sum(last['rss_mb'].values()):.1f} MB: growth {growth:+.2f} % "
        f"(target < 5 %){'' if same else ' (a worker was replaced)'}"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=300, help="seconds of measured traffic")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="gthread threads per worker")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between samples (default: duration / 10, at most 30)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of traffic before measuring (default: 10 %% of duration)",
    )
    parser.add_argument("--models", help="a model repository (default: tiny seeded models)")
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=None,
        help="fail when worker RSS grows more than this many percent",
    )
    args = parser.parse_args(argv)
    args.interval = args.interval or min(30.0, max(1.0, args.duration / 10))
    args.warmup = args.warmup if args.warmup is not None else min(30.0, args.duration / 10)
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    failed = report["errors"] > 0
    if args.max_rss_growth is not None and report["rss_growth_percent"] > args.max_rss_growth:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
