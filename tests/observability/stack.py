"""Real parts for the observability and deployment tests: a tiny published model, the
project's entrypoint script running Gunicorn, and Debian's Prometheus binary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import requests

from bench.server import LayerscopeServer, free_port

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]
MODEL = "fraud"
CONFIG = {
    "name": MODEL,
    "task": "binary_classification",
    "dataset": {"name": "creditcard"},
    "input": "tabular",
    "preprocessing": {"normalize": True},
    "hidden": [
        {"kind": "dense", "units": 8, "activation": "relu"},
        {"kind": "dense", "units": 4, "activation": "tanh"},
    ],
}


def samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, size=(n, 30)).astype(np.float32)
    x[:, 0] = rng.uniform(0, 170_000, n)
    x[:, -1] = rng.exponential(80, n)
    return x


def publish_tabular(
    repo: Path, seed: int = 0, name: str = MODEL, classes: list[str] | None = None
) -> Path:
    """Build a seeded tiny MLP over the card features with training/builder.py and publish
    the next version with training/publish.py (the DESIGN.md layout, reference sample
    included). Binary fraud-shaped by default; ``classes`` makes it multiclass."""
    import keras

    from training.builder import build_model
    from training.publish import layer_table, stage_version

    keras.utils.set_random_seed(seed)
    x = samples(64, seed)
    binary = classes is None
    config = dict(CONFIG, name=name)
    if not binary:
        config["task"] = "multiclass_classification"
    n_classes = 2 if binary else len(classes)
    if binary:
        model = build_model(config, input_shape=(30,), num_classes=n_classes, adapt_data=x)
    else:  # no multiclass tabular data set to validate against: the same stack by hand
        inputs = keras.Input((30,), name="input")
        norm = keras.layers.Normalization(name="normalization")
        norm.adapt(x)
        h = keras.layers.Dense(8, activation="relu", name="dense_1")(norm(inputs))
        h = keras.layers.Dense(4, activation="tanh", name="dense_2")(h)
        out = keras.layers.Dense(n_classes, activation="softmax", name="output")(h)
        model = keras.Model(inputs, out, name=name)
    with stage_version(Path(repo) / name, name) as staged:
        model.save(staged.path / "model.keras")
        np.savez(staged.path / "reference.npz", x=x, y=np.zeros(len(x), np.int64))
        (staged.path / "history.json").write_text(json.dumps({"loss": [1.0]}))
        staged.metadata.update(
            format_version=1,
            task=config["task"],
            config=config,
            dataset={"name": "synthetic", "synthetic": True},
            splits={},
            metrics={},
            class_names=["legit", "fraud"] if binary else classes,
            threshold=0.5 if binary else None,
            input={"kind": "tabular", "features": FEATURES, "shape": [30], "dtype": "float32"},
            output={"activation": "sigmoid", "units": 1}
            if binary
            else {"activation": "softmax", "units": n_classes},
            layers=layer_table(model),
        )
    return Path(staged.final_path)


def publish_corrupt(source: Path) -> Path:
    """The next version: a copy of ``source`` with one flipped byte in model.keras (its
    recorded sha256 no longer matches), renamed into place as a publisher would."""
    model_dir = source.parent
    version = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) + 1
    tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
    shutil.copytree(source, tmp)
    data = bytearray((tmp / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp / "model.keras").write_bytes(bytes(data))
    meta = json.loads((tmp / "metadata.json").read_text())
    meta["version"] = version
    (tmp / "metadata.json").write_text(json.dumps(meta))
    final = model_dir / str(version)
    os.rename(tmp, final)
    return final


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (requests.RequestException, OSError, ValueError) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Server(LayerscopeServer):
    """service/entrypoint.sh (Gunicorn + the app) on a free 127.0.0.1 port."""

    def __init__(self, repo: Path, workdir: Path, workers: int = 2, **env: str):
        super().__init__(
            repo,
            workdir,
            workers=workers,
            threads=2,
            multiproc_dir=workdir / "prometheus-multiproc",
            append_log=True,
            env={"LAYERSCOPE_POLL_INTERVAL": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **env},
        )

    def log(self) -> str:
        return self.log_text()

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]


class Prometheus:
    """Debian's ``prometheus`` on 127.0.0.1 scraping ``target`` every second, with the
    project's alert rules loaded."""

    def __init__(self, target: str, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {"job_name": "layerscope", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        self._log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            lambda: requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200,
            60,
            what="prometheus ready",
        )
        return self

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = at
        body = requests.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def query_range(self, expr: str, start: float, end: float, step: float = 1) -> list[dict]:
        params = {"query": expr, "start": start, "end": end, "step": step}
        body = requests.get(f"{self.url}/api/v1/query_range", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise AssertionError(f"range query {expr!r} failed: {body}")
        return body["data"]["result"]

    def wait_value(self, expr: str, expected: float, timeout: float = 30) -> float:
        """Poll until ``expr`` equals ``expected`` (returns the last value on timeout)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.scalar(expr)
            if value == expected:
                return value
            time.sleep(0.5)
        return value

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
