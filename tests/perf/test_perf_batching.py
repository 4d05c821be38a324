"""Dynamic batching: each concurrent caller gets its own rows, a full queue answers 503
with Retry-After, and batching off gives the same answers as batching on."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service import create_app
from service.batching import Batcher, batchers_for
from service.errors import Overloaded
from service.runtime import KerasRuntime


@pytest.fixture(scope="module")
def digits_rt(perf_repo):
    rt = KerasRuntime(perf_repo / "digits" / "1")
    rt.load()
    return rt


@pytest.fixture(scope="module")
def digits_x(splits):
    return splits["digits"][0]


def _app(repo, **extra):
    return create_app(
        {"model_repository": repo, "poll_interval": 0, "load_in_background": False, **extra}
    )


def test_concurrent_callers_get_their_own_rows(digits_rt, digits_x):
    """64 threads, distinct inputs of 1..3 rows: every answer equals a direct call on the
    caller's own rows, and far fewer model calls than requests were made."""
    batcher = Batcher(digits_rt.raw_predict, name="digits", max_size=32, max_delay=0.02)
    n = 64
    chunks = [digits_x[i : i + 1 + i % 3] for i in range(n)]
    start = threading.Barrier(n)

    def call(i):
        start.wait()
        return batcher.submit(chunks[i])

    with ThreadPoolExecutor(n) as pool:
        outs = list(pool.map(call, range(n)))
    for chunk, out in zip(chunks, outs, strict=True):
        assert out.shape == (len(chunk), 10)
        np.testing.assert_allclose(out, digits_rt.raw_predict(chunk), atol=1e-5, rtol=0)
    assert batcher.batches < n / 2, batcher.batches  # requests really shared calls
    # distinct inputs give distinct outputs, so a row handed to the wrong caller shows
    assert len({out[0].tobytes() for out in outs}) > n / 2


def test_errors_reach_every_caller_and_big_requests_bypass(digits_rt, digits_x):
    batcher = Batcher(digits_rt.raw_predict, name="digits", max_size=4)
    with pytest.raises(ValueError, match="expected"):
        batcher.submit(np.zeros((1, 3), np.float32))
    big = digits_x[:9]  # more rows than max_size: run directly, no batch counted
    np.testing.assert_allclose(batcher.submit(big), digits_rt.raw_predict(big), atol=1e-6)
    assert batcher.batches == 1  # only the failed call went through the thread


def test_http_concurrent_predictions_match_direct(perf_repo, digits_rt, digits_x):
    app = _app(perf_repo, batching=True, batch_max_delay_ms=10, runtime="keras")
    n = 48

    def call(i):
        rows = digits_x[i : i + 1 + i % 2]
        response = app.test_client().post(
            "/models/digits/predict", json={"instances": rows.tolist()}
        )
        assert response.status_code == 200, response.get_json()
        got = np.array(
            [
                [p["probabilities"][c] for c in digits_rt.class_names]
                for p in response.get_json()["predictions"]
            ]
        )
        return np.abs(got - digits_rt.predict(rows)).max()

    with ThreadPoolExecutor(16) as pool:
        diffs = list(pool.map(call, range(n)))
    assert max(diffs) <= 1e-5
    runtime = app.extensions["layerscope"].repository.get("digits")
    batcher = batchers_for(app).get(runtime)
    assert batcher is not None and 0 < batcher.batches < n


def test_queue_full_is_503_with_retry_after(perf_repo, digits_x):
    app = _app(perf_repo, batching=True, batch_max_size=2, batch_queue_size=1, runtime="keras")
    runtime = app.extensions["layerscope"].repository.get("digits")
    batcher = batchers_for(app).get(runtime)
    gate, entered = threading.Event(), threading.Event()
    real = batcher.fn

    def slow(x):  # the real model call, held until the test has filled the queue
        entered.set()
        gate.wait(30)
        return real(x)

    batcher.fn = slow
    body = {"instances": digits_x[:1].tolist()}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(app.test_client().post, "/models/digits/predict", json=body)
        assert entered.wait(30)  # the batching thread is busy with the first request
        second = pool.submit(app.test_client().post, "/models/digits/predict", json=body)
        for _ in range(3000):
            if batcher.waiting:
                break
            threading.Event().wait(0.01)
        assert batcher.waiting == 1
        third = app.test_client().post("/models/digits/predict", json=body)
        gate.set()
        assert first.result().status_code == 200
        assert second.result().status_code == 200
    assert third.status_code == 503
    assert third.headers["Retry-After"] == "1"
    assert "LAYERSCOPE_BATCH_QUEUE_SIZE" in third.get_json()["error"]


def test_batching_off_gives_identical_responses(perf_repo, model_names, splits):
    on = _app(perf_repo, batching=True)
    off = _app(perf_repo, batching=False)
    partial = _app(perf_repo, batching=True, serving={"digits": {"batching": False}})
    for name in model_names:
        x = splits[name][0]
        for rows in (x[:1], x[:5]):
            body = {"instances": rows.tolist()}
            a = on.test_client().post(f"/models/{name}/predict", json=body)
            b = off.test_client().post(f"/models/{name}/predict", json=body)
            assert a.status_code == b.status_code == 200
            assert a.get_data() == b.get_data()
        rt_off = off.extensions["layerscope"].repository.get(name)
        assert batchers_for(off).get(rt_off) is None
        rt_on = on.extensions["layerscope"].repository.get(name)
        assert batchers_for(on).get(rt_on) is not None
    rt = partial.extensions["layerscope"].repository.get("digits")
    assert batchers_for(partial).get(rt) is None


def test_auto_batching_is_decided_at_load(perf_repo, model_names):
    pytest.importorskip("ai_edge_litert")
    """auto: on for the TensorFlow runtime (a call costs ~0.3 ms whatever the rows), off for
    LiteRT, whose single-row calls cost microseconds; decided when the version loads."""
    keras_app = _app(perf_repo, runtime="keras")
    lite_app = _app(perf_repo, runtime="litert")
    for name in model_names:
        decision = batchers_for(keras_app).decisions[(name, 1)]
        assert decision["setting"] == "auto" and decision["batching"] is True, decision
        assert decision["gain_at_16_rows"] >= 2
        runtime = keras_app.extensions["layerscope"].repository.get(name)
        assert batchers_for(keras_app).get(runtime) is not None
        decision = batchers_for(lite_app).decisions[(name, 1)]
        assert decision["batching"] is False, decision
        assert decision["single_row_ms"] < 0.1


def test_overloaded_carries_retry_after():
    exc = Overloaded("full", retry_after=3)
    assert exc.status == 503 and exc.retry_after == 3
