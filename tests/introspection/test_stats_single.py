"""The one-instance path of ``layers_instance_stats`` (``_single_stats``: small dense
layers, per-layer arithmetic on Python floats) returns exactly what the general vectorised
path returns: same keys, same floats to the last bit (signed zeros included), same None
for NaN / Inf, same top-k order under ties, same copies for repeated layers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.introspection import stats

ACTIVATIONS = ["relu", None, "sigmoid", "tanh", "softmax", "softsign", "linear"]
# a coarse grid: ties, zeros of both signs, values next to the inactive thresholds (float32
# numbers: both dtypes hold them)
GRID = [float(np.float32(v)) for v in (-1.0, -0.01, -0.0, 0.0, 0.005, 0.01, 0.5, 1.0, 300.0)]


def _general(layers, activations, top_k):
    """The general path: the one-instance shortcut switched off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stats, "SMALL_VALUES", -1)
        return stats.layers_instance_stats(layers, activations, top_k)


def _assert_identical(layers, activations, top_k):
    todo = [np.asarray(v) for v in layers if np.asarray(v).size]
    assert stats._small(todo) and all(len(v) == 1 for v in todo)  # the shortcut applies
    fast = stats.layers_instance_stats(layers, activations, top_k)
    general = _general(layers, activations, top_k)
    assert repr(fast) == repr(general)  # repr: -0.0 and 0.0 differ, NaN never appears
    for rows in fast:
        for row in rows:
            assert all(type(row[k]) in (float, type(None)) for k in list(row)[:6])
            assert all(type(t["unit"]) is int for t in row["top_k"])
    return fast


@st.composite
def layer_values(draw):
    units = draw(st.integers(1, 600))  # beyond FULL_SORT_UNITS too; 6 layers <= SMALL_VALUES
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kind = draw(st.sampled_from(["grid", "float", "constant", "near_constant"]))
    if kind == "grid":
        elements = st.sampled_from(GRID)
    else:
        width = 32 if dtype is np.float32 else 64
        elements = st.floats(-1e6, 1e6, width=width) | st.sampled_from(GRID)
        if draw(st.booleans()):
            elements = elements | st.sampled_from([np.nan, np.inf, -np.inf])
    values = draw(hnp.arrays(dtype, (1, units), elements=elements))
    if kind == "constant":
        values[:] = values[0, 0]
    elif kind == "near_constant":  # spread tiny next to the mean: the two-pass std
        values = (300 + 1e-3 * np.arange(units)).astype(dtype)[None]
    return values


@st.composite
def requests(draw):
    """1-6 layers of one instance, some repeated (same object or an equal copy, same or
    another activation), each with its activation, and a top_k."""
    layers, activations = [], []
    for _ in range(draw(st.integers(1, 6))):
        if layers and draw(st.integers(0, 2)) == 0:
            source = layers[draw(st.integers(0, len(layers) - 1))]
            layers.append(source if draw(st.booleans()) else source.copy())
        else:
            layers.append(draw(layer_values()))
        activations.append(draw(st.sampled_from(ACTIVATIONS)))
    return layers, activations, draw(st.integers(1, 100))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_single_instance_path_equals_the_general_path(request):
    layers, activations, top_k = request
    _assert_identical(layers, activations, top_k)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_constant_and_tied_layers():
    nan = np.array([[1.0, np.nan, 3.0, np.nan, -1.0]], np.float32)
    inf = np.array([[np.inf, 2.0, np.inf, -np.inf, 0.0]], np.float32)
    both = np.array([[np.inf, -np.inf, 1.0]], np.float64)
    huge = np.array([[1e200, -1e200, 3.0]])  # squares overflow, values finite
    constant = np.full((1, 64), 0.7, np.float32)
    ties = np.array([[0.0, 2.0, -0.0, 2.0, 1.0, 2.0, 0.0]], np.float32)
    empty = np.zeros((1, 0), np.float32)
    layers = [nan, inf, both, huge, constant, ties, empty]
    acts = ["relu", "sigmoid", None, "tanh", "sigmoid", "relu", "relu"]
    got = _assert_identical(layers, acts, 4)
    assert got[0][0]["mean"] is None and got[0][0]["min"] is None
    assert [t["unit"] for t in got[0][0]["top_k"]] == [2, 0, 4, 1]  # NaN last, by index
    assert [t["unit"] for t in got[1][0]["top_k"]] == [0, 2, 1, 4]
    assert got[1][0]["top_k"][0]["value"] is None and got[1][0]["max"] is None
    assert got[2][0]["mean"] is None and got[2][0]["std"] is None
    assert got[3][0]["mean"] is not None and got[3][0]["l2_norm"] is None
    assert got[4][0]["std"] == 0.0 and got[4][0]["inactive_fraction"] == 0.0
    assert [t["unit"] for t in got[5][0]["top_k"]] == [1, 3, 5, 4]
    assert got[6][0]["top_k"] == [] and got[6][0]["mean"] is None
    assert stats.instance_stats(empty, "relu") == [got[6][0]]  # only an empty layer


def test_dropout_layers_get_copies_of_the_same_statistics():
    """Inference-time Dropout: the runtime may hand the same array for two layers."""
    dense = np.maximum(np.random.default_rng(3).normal(size=(1, 64)), 0).astype(np.float32)
    got = _assert_identical([dense, dense, dense], ["relu", None, "sigmoid"], 5)
    assert got[1] == got[0] and got[1][0] is not got[0][0]
    assert got[1][0]["top_k"][0] is not got[0][0]["top_k"][0]
    assert got[2][0]["inactive_fraction"] >= got[0][0]["inactive_fraction"]  # own rule


def test_large_or_batched_or_conv_layers_take_the_general_path():
    rng = np.random.default_rng(4)
    assert not stats._small([rng.normal(size=(1, stats.SMALL_VALUES + 1))])
    assert not stats._small([rng.normal(size=(1, 3, 3, 4))])
    assert stats._small([rng.normal(size=(1, 64)), rng.normal(size=(1, 32))])
