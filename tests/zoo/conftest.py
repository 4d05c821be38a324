"""The zoo (tests.zoo.builders) built once per session, dropped bare into a tmp repository
and served by a real Gunicorn with 2 workers (service/entrypoint.sh), default settings
except: no hot-reload polling, models loaded before a worker accepts, the TensorFlow
runtime (below) and the custom objects module of the subclassed model."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import requests  # noqa: E402

from bench.server import LayerscopeServer  # noqa: E402
from tests.zoo import builders  # noqa: E402


@pytest.fixture(scope="session")
def zoo():
    """{name: (the original keras model, a sample batch)}."""
    return {name: build() for name, build in builders.ZOO.items()}


@pytest.fixture(scope="session")
def zoo_repo(zoo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("zoo") / "models"
    for name, (model, _) in zoo.items():
        builders.drop_bare(repo, name, model)
    return repo


class ZooServer(LayerscopeServer):
    def get(self, path: str, **kw):
        kw.setdefault("timeout", 120)
        return requests.get(self.url + path, **kw)

    def post(self, path: str, **kw):
        kw.setdefault("timeout", 120)
        return requests.post(self.url + path, **kw)


@pytest.fixture(scope="session")
def zoo_server(zoo_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zoo-gunicorn")
    server = ZooServer(
        zoo_repo,
        tmp,
        workers=2,
        threads=2,
        multiproc_dir=tmp / "prom",
        env={
            "LAYERSCOPE_POLL_INTERVAL": "0",
            "LAYERSCOPE_LOAD_IN_BACKGROUND": "false",
            "LAYERSCOPE_CUSTOM_OBJECTS_MODULES": '["tests.zoo.custom"]',
            "LAYERSCOPE_TIMEOUT": "300",
            "LAYERSCOPE_GRACEFUL_TIMEOUT": "5",
            # TensorFlow: LiteRT's conversions and parity gates of the two applications
            # networks take ~3 minutes per worker on 2 shared cores (LiteRT has its own
            # tests); the served values are compared with Keras here
            "LAYERSCOPE_RUNTIME": "keras",
        },
    ).start()
    try:
        try:
            server.wait_workers_ready(600)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield server
    finally:
        server.stop()
