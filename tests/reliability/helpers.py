"""Real parts for the reliability tests: the tiny-model publisher of tests/service, a
Gunicorn started through service/entrypoint.sh, and process inspection via /proc."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))

import svc_factory  # noqa: E402

from bench import server as bench_server  # noqa: E402
from bench.server import children, free_port, rss_kb  # noqa: E402

__all__ = ["Server", "svc_factory", "wait_for", "wait_dead", "free_port", "children", "rss_kb"]


def wait_dead(pid: int, timeout: float = 10.0) -> float:
    """Block until ``pid`` is reaped: every thread gone, so its sockets are closed (a
    multi-threaded leader shows 'Z' while its other threads still exit); returns that
    moment (time.monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return time.monotonic()
        time.sleep(0.001)
    raise AssertionError(f"process {pid} still alive after {timeout}s")


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = ""):
    bench_server.wait_for(predicate, timeout, interval, what)


class Server(bench_server.LayerscopeServer):
    """``service/entrypoint.sh`` (Gunicorn, gthread workers) on a free port."""

    def __init__(self, repo: Path, tmp: Path, workers: int = 2, **env_extra: str):
        super().__init__(
            repo,
            tmp,
            workers=workers,
            threads=4,
            multiproc_dir=tmp / "metrics",
            log_name="gunicorn-{port}.log",
            env={
                "LAYERSCOPE_POLL_INTERVAL": "0.5",
                "LAYERSCOPE_MAX_BATCH_SIZE": "64",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **env_extra,
            },
        )
        self.tmp = tmp
        self.start()

    def logs(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def get(self, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.get(self.url + path, **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.post(self.url + path, **kw)

    def ready_pids(self, rounds: int = 10) -> set[int]:
        ready: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            for _ in range(rounds):
                for r in pool.map(lambda _: self._readyz(), range(8)):
                    if r is not None and r.status_code == 200:
                        ready.add(r.json()["pid"])
                if ready >= self.worker_pids():
                    break
        return ready

    def _readyz(self):
        try:
            return self.get("/readyz", timeout=5)
        except requests.RequestException:
            return None

    def all_ready(self) -> bool:
        workers = self.worker_pids()
        return len(workers) == self.workers and self.ready_pids() >= workers

    def wait_ready(self, timeout: float = 180) -> None:
        def check():
            assert self.proc.poll() is None, self.logs()
            return self.all_ready()

        wait_for(check, timeout, interval=0.3, what="every worker ready\n" + self.logs(1500))

    def stop(self) -> None:
        super().stop(timeout=40)


class Load:
    """Client threads sending requests in a loop; records (start, end, status | error,
    error body, path)."""

    def __init__(self, server: Server, requests_: list[tuple[str, str, dict]], threads: int = 6):
        import threading

        self.server = server
        self.requests = requests_
        self.results: list[tuple] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, i: int) -> None:
        session = requests.Session()
        n = i
        while not self._stop.is_set():
            method, path, kwargs = self.requests[n % len(self.requests)]
            n += 1
            start = time.monotonic()
            try:
                r = session.request(method, self.server.url + path, timeout=60, **kwargs)
                outcome, body = r.status_code, None if r.status_code == 200 else r.text[:300]
            except requests.RequestException as exc:
                outcome, body = type(exc).__name__, str(exc)[:200]
                session = requests.Session()
            with self._lock:
                self.results.append((start, time.monotonic(), outcome, body, path))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def failures(self) -> list:
        with self._lock:
            return [r for r in self.results if r[2] != 200]

    def count(self) -> int:
        with self._lock:
            return len(self.results)


def metric_samples(text: str, name: str) -> list[tuple[dict, float]]:
    """(labels, value) of every sample of ``name`` in Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), sample.value))
    return out


def publish_files(
    repo: Path, name: str, like: Path, model_bytes: bytes | None = None, model=None
) -> Path:
    """Publish the next version of ``name`` through training/publish.py with ``like``'s
    metadata and reference sample, and either raw ``model_bytes`` as model.keras (any
    garbage: its checksum is recorded, so only the loader can refuse it) or ``model``."""
    import json as _json
    import shutil as _shutil

    from training.publish import layer_table, stage_version

    meta = _json.loads((like / "metadata.json").read_text())
    for key in ("files", "version", "model_sha256", "created"):
        meta.pop(key, None)
    with stage_version(repo / name, name) as staged:
        if model is not None:
            model.save(staged.path / "model.keras")
            meta["layers"] = layer_table(model)
        else:
            (staged.path / "model.keras").write_bytes(model_bytes)
        _shutil.copy(like / "reference.npz", staged.path / "reference.npz")
        staged.metadata.update(meta)
    return Path(staged.final_path)


def lambda_model():
    """A model with a Lambda layer (arbitrary Python): safe_mode must refuse it."""
    import keras

    inp = keras.Input((30,), name="input")
    hidden = keras.layers.Lambda(lambda t: t * 2.0, name="lambda_1")(inp)
    out = keras.layers.Dense(1, activation="sigmoid", name="output")(hidden)
    return keras.Model(inp, out)


def publish_slow_image(repo: Path, name: str = "slow") -> Path:
    """An image model with wide convolutions: a 64-image request takes about a second on
    one core, long enough to be in flight when a signal arrives."""
    import keras
    import numpy as np

    from training.publish import layer_table, stage_version

    keras.utils.set_random_seed(3)
    inp = keras.Input((28, 28, 1), name="input")
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(inp)
    x = keras.layers.Conv2D(128, 3, activation="relu", name="conv2d_1")(x)
    x = keras.layers.Conv2D(256, 3, activation="relu", name="conv2d_2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_avg_pool_1")(x)
    out = keras.layers.Dense(10, activation="softmax", name="output")(x)
    model = keras.Model(inp, out)
    x_ref = svc_factory.image_samples(8, seed=3)
    with stage_version(repo / name, name) as staged:
        model.save(staged.path / "model.keras")
        np.savez(staged.path / "reference.npz", x=x_ref, y=np.zeros(8, np.int64))
        staged.metadata.update(
            format_version=1,
            task="multiclass_classification",
            class_names=[str(i) for i in range(10)],
            threshold=None,
            input={
                "kind": "image",
                "shape": [28, 28, 1],
                "dtype": "float32",
                "value_range": [0, 255],
            },
            output={"activation": "softmax", "units": 10},
            layers=layer_table(model),
            metrics={},
        )
    return Path(staged.final_path)
