"""Activations through the LiteRT multi-output conversion: per-layer parity with Keras'
own sub-models, the honest backend report, per-thread interpreters under concurrency, and
the fall-back to TensorFlow when the parity gate fails; and the opt-in layer-scaled gate
(``serving.activation_scale``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest

from service import serving
from service.errors import LayerNotFound
from service.serving import ACTIVATION_TOLERANCE, PARITY_TOLERANCE, LiteRTRuntime, activation_scale

pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def lite(perf_repo, model_names) -> dict[str, LiteRTRuntime]:
    """digits (CNN) and, with the card data, fraud-small (MLP), on the LiteRT runtime."""
    out = {}
    for name in model_names:
        out[name] = LiteRTRuntime(perf_repo / name / "1")
        out[name].load()
    return out


def close(got: np.ndarray, want: np.ndarray, parity: str = "absolute") -> bool:
    """Within the activations gate ``parity`` of ``want``."""
    bound = ACTIVATION_TOLERANCE * activation_scale(want, parity)
    return float(np.abs(got - want).max()) <= bound


def keras_layer_outputs(runtime, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output from its own Keras sub-model, called eagerly."""
    import keras

    model = runtime.model
    return {
        layer.name: np.asarray(keras.Model(model.inputs[0], layer.output)(x, training=False))
        for layer in model.layers
    }


def test_every_layer_matches_keras(lite, splits):
    for name, rt in lite.items():
        x = splits[name][0][:16]
        expected = keras_layer_outputs(rt, x)
        got = rt.activations(x, rt.layer_names)
        assert list(got) == rt.layer_names
        for layer in rt.layer_names:
            assert got[layer].dtype == np.float32 and got[layer].shape == expected[layer].shape
            diff = float(np.abs(got[layer] - expected[layer]).max())
            assert close(got[layer], expected[layer]), (
                name,
                layer,
                diff,
                rt.accelerator.activations_backend,
            )


def test_backend_is_reported_honestly(lite, splits, monkeypatch):
    """Backend "litert" means TensorFlow is not called at all; "tensorflow" says why and
    returns exactly what KerasRuntime returns."""
    for name, rt in lite.items():
        info = rt.describe()["runtime"]
        x = splits[name][0][:5]
        layers = [*rt.hidden_layer_names, rt.output_layer_name]
        if info["activations"] == "litert":
            assert info["litert_activations_error"] is None
            assert info["litert_activations_delegate"] in serving.DELEGATES
            assert 0 <= info["litert_activations_parity_max_abs_diff"] <= ACTIVATION_TOLERANCE
            assert info["litert_activations_tolerance"] == "1e-05"  # the default: absolute
            monkeypatch.setattr(rt.tensorflow, "_all_call", _no_tensorflow)
            rt.activations(x, layers)
            monkeypatch.undo()
        else:
            assert info["activations"] == "tensorflow"
            assert info["litert_activations_delegate"] is None
            assert "tolerance" in info["litert_activations_error"], info
            reference = rt.tensorflow.run([x], layers)
            for layer, values in rt.activations(x, layers).items():
                np.testing.assert_array_equal(values, reference[layer])


def test_at_least_one_fixture_model_serves_activations_through_litert(lite):
    backends = {name: rt.describe()["runtime"] for name, rt in lite.items()}
    assert any(b["activations"] == "litert" for b in backends.values()), backends


def test_contract_of_activations(lite, splits):
    """Unknown names, InputLayer names, requested order, repeats, and arrays that stay
    valid after the next call on the same thread."""
    for name, rt in _litert(lite).items():
        x = splits[name][0][:4]
        with pytest.raises(LayerNotFound, match="'nope'"):
            rt.activations(x, ["nope", rt.output_layer_name])
        inputs = [n for n in rt.layer_names if n not in rt.output_layer_names]
        order = [rt.output_layer_name, *inputs, rt.hidden_layer_names[0], rt.output_layer_name]
        got = rt.activations(x, order)
        assert list(got) == list(dict.fromkeys(order))
        for n in inputs:
            np.testing.assert_array_equal(got[n], x)
        first = {k: v.copy() for k, v in got.items()}
        rt.activations(splits[name][0][4:8], order)  # same thread, same batch size
        for k, v in got.items():
            np.testing.assert_array_equal(v, first[k])


def test_layers_of_one_tensor_are_copied_out_once(lite, splits, monkeypatch):
    """Inference-time Dropout is an identity: the conversion gives it its input's tensor,
    which is copied out once for both names (equal to Keras, checked above). A chunked
    batch still gets one whole array per name."""
    checked = 0
    for name, rt in _litert(lite).items():
        index = rt.accelerator.inspector.pool.index
        dropouts = [d.name for d in rt.model.layers if type(d).__name__ == "Dropout"]
        x = splits[name][0][:3]
        got = rt.activations(x, rt.layer_names)
        for layer in dropouts:
            same = [n for n in rt.output_layer_names if index[n] == index[layer] and n != layer]
            assert same, (name, layer)  # the layer before: one tensor
            assert all(got[n] is got[layer] for n in same)
            checked += 1
        monkeypatch.setattr(rt.accelerator.inspector.pool, "max_rows", 1)  # one row per invoke
        chunked = rt.activations(x, rt.layer_names)
        for layer in rt.layer_names:  # batches of 1 vs 3: same tolerance as against Keras
            assert chunked[layer].shape == got[layer].shape
            assert close(chunked[layer], got[layer]), (name, layer)
        monkeypatch.undo()
    assert checked, "no fixture model serves a Dropout layer through LiteRT"


def test_concurrent_callers_get_their_own_rows(lite, splits):
    """8 threads x 50 calls, each thread on its own 5 rows with batch sizes 1..3: every
    result is the single-threaded answer for those rows, kept until the end (no shared
    buffers)."""
    for name, rt in _litert(lite).items():
        x = splits[name][0][:40]
        layers = [*rt.hidden_layer_names, rt.output_layer_name]
        reference = {i: rt.activations(x[i : i + 1], layers) for i in range(len(x))}
        with ThreadPoolExecutor(8) as pool:
            parts = pool.map(partial(_calls, rt, x, layers), range(0, 40, 5))
            results = [item for part in parts for item in part]
        assert len(results) == 400
        for start, rows, got in results:
            for layer in layers:
                want = np.concatenate([reference[i][layer] for i in range(start, start + rows)])
                assert got[layer].shape == want.shape
                assert close(got[layer], want), (name, layer, start, rows)


def _calls(rt, x, layers, first: int) -> list[tuple[int, int, dict]]:
    """50 calls on rows first..first+4 of ``x``: (start, rows, activations) each."""
    out = []
    for call in range(50):
        start, rows = first + call % 3, 1 + call % 3
        out.append((start, rows, rt.activations(x[start : start + rows], layers)))
    return out


def test_big_batches_are_chunked(perf_repo, model_names, splits, monkeypatch):
    """A batch larger than the per-interpreter budget comes back whole and equal."""
    monkeypatch.setattr(serving, "ACTIVATION_CHUNK_BYTES", 1)  # one row per invoke
    for name in model_names:
        rt = LiteRTRuntime(perf_repo / name / "1")
        rt.load()
        if rt.accelerator.activations_backend != "litert":
            continue
        assert rt.accelerator.inspector.pool.max_rows == 1
        x = splits[name][0][:9]
        got = rt.activations(x, rt.layer_names)
        expected = keras_layer_outputs(rt, x)
        for layer in rt.layer_names:
            assert close(got[layer], expected[layer]), (name, layer)


def test_failed_parity_falls_back_to_tensorflow(perf_repo, model_names, splits, monkeypatch):
    monkeypatch.setattr(serving, "ACTIVATION_TOLERANCE", 0.0)
    for name in model_names:
        rt = LiteRTRuntime(perf_repo / name / "1")
        rt.load()
        info = rt.describe()["runtime"]
        assert info["litert_activations_parity_max_abs_diff"] > 0  # else 0 would pass
        assert info["activations"] == "tensorflow"
        assert "(tolerance 0): " in info["litert_activations_error"], info
        x = splits[name][0][:6]
        got = rt.activations(x, rt.layer_names)
        expected = keras_layer_outputs(rt, x)
        for layer in rt.layer_names:
            assert float(np.abs(got[layer] - expected[layer]).max()) <= PARITY_TOLERANCE


def _litert(lite: dict[str, LiteRTRuntime]) -> dict[str, LiteRTRuntime]:
    return {n: rt for n, rt in lite.items() if rt.accelerator.activations_backend == "litert"}


def _no_tensorflow(*args, **kwargs):
    raise AssertionError(f"TensorFlow activations called with {len(args)} arguments")


def test_activation_scale():
    """layer-scaled: max(1, largest |value|), so layers within [-1, 1] keep the absolute
    gate; absolute (the default): 1."""
    scaled = partial(activation_scale, parity="layer-scaled")
    assert scaled(np.array([[0.25, -0.5]], np.float32)) == 1.0
    assert scaled(np.array([[3.0, -40.0, 2.0]], np.float32)) == 40.0
    assert scaled(np.zeros((0, 4), np.float32)) == 1.0
    assert activation_scale(np.array([[3.0, -40.0]], np.float32)) == 1.0


def test_layer_scaled_runtimes_match_keras_within_their_gate(perf_repo, model_names, splits):
    """The opt-in gate: LiteRT serves, reports the scaled figure and the rule, and every
    layer is within 1e-5 x max(1, the layer's largest |value|) of Keras' sub-models."""
    for name in model_names:
        rt = LiteRTRuntime(perf_repo / name / "1", activation_parity="layer-scaled")
        rt.load()
        info = rt.describe()["runtime"]
        assert info["activations"] == "litert", info
        assert info["litert_activations_tolerance"] == "1e-05 x max(1, max |layer value|)"
        scaled = info["litert_activations_parity_scaled_diff"]
        assert 0 <= scaled <= ACTIVATION_TOLERANCE
        assert scaled <= info["litert_activations_parity_max_abs_diff"]  # scales are >= 1
        x = splits[name][0][:16]
        got, expected = rt.activations(x, rt.layer_names), keras_layer_outputs(rt, x)
        for layer in rt.layer_names:
            assert close(got[layer], expected[layer], "layer-scaled"), (name, layer)


def test_the_gate_holds_the_scaled_difference(perf_repo, model_names, monkeypatch):
    """With the tolerance set between a model's scaled and absolute worst differences, the
    layer-scaled gate serves LiteRT and the absolute gate falls back to TensorFlow, saying
    by how much the layer differs: the scale decides, not only the reported figure."""
    decided = 0
    for name in model_names:
        rt = LiteRTRuntime(perf_repo / name / "1", activation_parity="layer-scaled")
        rt.load()
        scaled = rt.accelerator.activations_parity_scaled
        absolute = rt.accelerator.activations_parity
        if rt.accelerator.activations_backend != "litert" or not scaled < absolute:
            continue
        monkeypatch.setattr(serving, "ACTIVATION_TOLERANCE", (scaled + absolute) / 2)
        again = LiteRTRuntime(perf_repo / name / "1", activation_parity="layer-scaled")
        again.load()
        strict = LiteRTRuntime(perf_repo / name / "1", activation_parity="absolute")
        strict.load()
        monkeypatch.undo()
        assert again.accelerator.activations_backend == "litert", (
            again.accelerator.activations_error
        )
        assert strict.accelerator.activations_backend == "tensorflow"
        info = strict.describe()["runtime"]
        assert info["litert_activations_tolerance"] == "1e-05"
        assert f"(tolerance {(scaled + absolute) / 2:g}): " in info["litert_activations_error"]
        assert "differs by" in info["litert_activations_error"], info
        # absolute mode: the scaled figure is the absolute one (scale 1)
        assert info["litert_activations_parity_scaled_diff"] == pytest.approx(
            info["litert_activations_parity_max_abs_diff"]
        )
        decided += 1
    assert decided, "no fixture model has a worst layer whose scale exceeds 1"


def test_activation_parity_setting_reaches_the_runtime(perf_repo):
    from service.runtime import read_metadata
    from service.serving import runtime_factory
    from service.settings import load_settings

    meta = read_metadata(perf_repo / "digits" / "1")
    settings = load_settings({"serving": {"digits": {"activation_parity": "layer-scaled"}}})
    assert runtime_factory(settings)(
        perf_repo / "digits" / "1", meta
    ).accelerator.activation_parity == ("layer-scaled")
    default = runtime_factory(load_settings())(perf_repo / "digits" / "1", meta)
    assert default.accelerator.activation_parity == "absolute"
    with pytest.raises(ValueError, match="Received: activation_parity='relative'"):
        LiteRTRuntime(perf_repo / "digits" / "1", activation_parity="relative")
