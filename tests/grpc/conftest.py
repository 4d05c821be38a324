"""Real servers for the gRPC tests: ``service/entrypoint.sh`` (Gunicorn, gRPC in every
worker on a free port) over a repository with the tiny published ``fraud`` and
``fashion`` models of tests/service, a bare two-input functional model (``pair``) and a
bare int32 Embedding model (``tokens``); clients are the real ones (tritonclient.grpc,
tensorflow-serving-api's stubs, grpcio-health-checking)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import svc_factory  # noqa: E402

from bench.server import LayerscopeServer, free_port  # noqa: E402

TOKEN = "grpc-peek-t0ken"


def pair_model():
    """Two named inputs (8 and 4 features), merged: a bare multi-input functional model."""
    keras.utils.set_random_seed(7)
    numeric = keras.Input((8,), name="numeric")
    extra = keras.Input((4,), name="extra")
    a = keras.layers.Dense(5, activation="relu", name="proj_numeric")(numeric)
    b = keras.layers.Dense(5, activation="tanh", name="proj_extra")(extra)
    merged = keras.layers.Concatenate(name="merged")([a, b])
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(merged)
    return keras.Model([numeric, extra], out, name="pair")


def tokens_model():
    """int32 token ids (length 6) -> Embedding -> average -> 3 classes."""
    keras.utils.set_random_seed(8)
    ids = keras.Input((6,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(50, 4, name="embedding")(ids)
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(emb)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(pooled)
    return keras.Model(ids, out, name="tokens")


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc-models")
    svc_factory.publish(root, "tabular", seed=1)
    svc_factory.publish(root, "image", seed=2)
    for name, build in (("pair", pair_model), ("tokens", tokens_model)):
        (root / name / "1").mkdir(parents=True)
        build().save(root / name / "1" / "model.keras")
    return root


@pytest.fixture(scope="session")
def keras_models(repo):
    """The served models loaded in the test process: the reference values."""
    return {
        name: keras.saving.load_model(repo / name / "1" / "model.keras", compile=False)
        for name in ("fraud", "fashion", "pair", "tokens")
    }


class GrpcServer(LayerscopeServer):
    """Gunicorn with gRPC in each worker; ``target`` is the gRPC address."""

    def __init__(self, repo: Path, workdir: Path, workers: int = 2, **env: str):
        self.grpc_port = free_port()
        super().__init__(
            repo,
            workdir,
            workers=workers,
            threads=4,
            log_name="gunicorn-{port}.log",
            env={
                "LAYERSCOPE_GRPC_PORT": str(self.grpc_port),
                "LAYERSCOPE_POLL_INTERVAL": "0",
                "LAYERSCOPE_MAX_BATCH_SIZE": "8",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **env,
            },
        )
        self.target = f"127.0.0.1:{self.grpc_port}"

    def __enter__(self):
        self.start()
        try:
            self.wait_workers_ready(300)
        except BaseException:
            self.stop()
            raise
        return self


@pytest.fixture(scope="session")
def server(repo, tmp_path_factory):
    """Two workers, no tokens, batches of at most 8 (as tests/service's app)."""
    with GrpcServer(repo, tmp_path_factory.mktemp("grpc-server")) as srv:
        yield srv


@pytest.fixture(scope="session")
def secured(repo, tmp_path_factory):
    """One worker with the introspection token and small limits: 4096-byte messages and
    50 activation values per answer."""
    with GrpcServer(
        repo,
        tmp_path_factory.mktemp("grpc-secured"),
        workers=1,
        LAYERSCOPE_INTROSPECTION_TOKEN=TOKEN,
        LAYERSCOPE_MAX_BODY_BYTES="4096",
        LAYERSCOPE_MAX_ACTIVATION_VALUES="50",
        LAYERSCOPE_RUNTIME="keras",
    ) as srv:
        yield srv


@pytest.fixture(scope="session")
def triton(server):
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(server.target)
    yield client
    client.close()


@pytest.fixture(scope="session")
def channel(server):
    import grpc

    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture(scope="session")
def samples():
    rng = np.random.default_rng(5)
    return {
        "fraud": svc_factory.tabular_samples(3, 11),
        "fashion": svc_factory.image_samples(3, seed=12),
        "pair": {
            "numeric": rng.normal(size=(3, 8)).astype(np.float32),
            "extra": rng.normal(size=(3, 4)).astype(np.float32),
        },
        "tokens": rng.integers(0, 50, size=(3, 6)).astype(np.int32),
    }
