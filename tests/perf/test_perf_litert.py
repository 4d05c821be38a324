"""The LiteRT runtime: parity with TensorFlow on the test split, activations within the
same bound whichever backend serves them, and the per-model runtime setting."""

from __future__ import annotations

import numpy as np
import pytest

from service.runtime import KerasRuntime
from service.serving import (
    PARITY_TOLERANCE,
    LiteRT,
    LiteRTRuntime,
    options_for,
    runtime_factory,
)
from service.settings import load_settings

pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def loaded(perf_repo, model_names):
    out = {}
    for name in model_names:
        tf_rt = KerasRuntime(perf_repo / name / "1")
        tf_rt.load()
        lite = LiteRTRuntime(perf_repo / name / "1", required=True)
        lite.load()
        out[name] = (tf_rt, lite)
    return out


def test_litert_parity_on_test_split(loaded, splits):
    for name, (tf_rt, lite) in loaded.items():
        assert lite.accelerator.backend == "litert", lite.accelerator.backend_error
        x, _ = splits[name]
        assert len(x) >= 50  # the whole held-out split (fraud-small: 90 rows)
        expected = tf_rt.raw_predict(x)
        for batch in (x, x[:1], x[:7]):  # one big call and other batch sizes
            got = lite.raw_predict(batch)
            assert got.shape == expected[: len(batch)].shape
            diff = float(np.abs(got - expected[: len(batch)]).max())
            assert diff <= PARITY_TOLERANCE, (name, len(batch), diff)
        # and against the Keras model itself, called eagerly
        keras_out = np.asarray(tf_rt.model(x, training=False))
        assert float(np.abs(lite.raw_predict(x) - keras_out).max()) <= PARITY_TOLERANCE
        np.testing.assert_allclose(lite.predict(x).sum(axis=1), 1.0, atol=1e-5)


def test_activations_match_tensorflow(loaded, splits):
    for name, (tf_rt, lite) in loaded.items():
        x = splits[name][0][:5]
        a, b = (
            tf_rt.activations(x, tf_rt.hidden_layer_names),
            lite.activations(x, lite.hidden_layer_names),
        )
        assert list(a) == list(b) == tf_rt.hidden_layer_names
        for layer in a:
            assert float(np.abs(a[layer] - b[layer]).max()) <= PARITY_TOLERANCE, (name, layer)
        assert lite.describe()["runtime"]["activations"] == lite.accelerator.activations_backend
        assert lite.describe()["runtime"]["predict"] == "litert"


def test_per_thread_interpreters_agree(loaded, splits):
    """Interpreters are per thread; concurrent callers get the same answers."""
    from concurrent.futures import ThreadPoolExecutor

    name, (tf_rt, lite) = next(iter(loaded.items()))
    x = splits[name][0][:64]
    expected = tf_rt.raw_predict(x)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: lite.raw_predict(x[i : i + 1 + i % 3]), range(48)))
    for i, out in enumerate(outs):
        assert np.abs(out - expected[i : i + 1 + i % 3]).max() <= PARITY_TOLERANCE


def test_runtime_chosen_per_model(perf_repo, model_names):
    settings = load_settings(
        {"runtime": "litert", "serving": {"digits": {"runtime": "keras", "batching": False}}}
    )
    make = runtime_factory(settings)
    assert make(perf_repo / "digits" / "1", _meta(perf_repo, "digits")).accelerator is None
    assert options_for(settings, "digits").batching is False
    assert options_for(settings, "other").runtime == "litert"
    assert options_for(settings, "other").batching == "auto"
    for name in model_names:
        if name != "digits":
            assert isinstance(
                make(perf_repo / name / "1", _meta(perf_repo, name)).accelerator, LiteRT
            )


def test_bad_serving_override_is_rejected():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="batch_max_sise"):
        load_settings({"serving": {"digits": {"batch_max_sise": 4}}})
    with pytest.raises(ValidationError):
        load_settings({"runtime": "onnx"})


def _meta(root, name):
    from service.runtime import read_metadata

    return read_metadata(root / name / "1")
