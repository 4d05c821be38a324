"""Per-instance statistics: the vectorised, all-layers-at-once code equals the obvious
per-instance numpy computation (dense and conv layers, batches, ties, k > units,
non-finite values, duplicate layers, several chunks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.introspection import stats


def _rule_mask(row: np.ndarray, activation: str | None) -> np.ndarray:
    if activation in ("sigmoid", "softmax", "softplus", "hard_sigmoid"):
        return row <= 0.01
    if activation in ("tanh", "softsign"):
        return np.abs(row) <= 0.01
    return row <= 0


def _plain(values: np.ndarray, activation: str | None, top_k: int) -> list[dict]:
    """The obvious per-instance computation (float64 copies, one row at a time)."""
    out = []
    for inst in np.asarray(values, dtype=np.float64):
        row = inst.reshape(-1)
        activity = inst.reshape(-1) if inst.ndim <= 1 else inst.reshape(-1, inst.shape[-1])
        activity = activity if inst.ndim <= 1 else activity.mean(axis=0)
        ranked = sorted(range(len(activity)), key=lambda j: (-activity[j], j))[:top_k]
        out.append(
            {
                "mean": row.mean(),
                "std": row.std(),
                "min": row.min(),
                "max": row.max(),
                "inactive_fraction": np.count_nonzero(_rule_mask(row, activation)) / row.size,
                "l2_norm": math.sqrt(float((row**2).sum())),
                "top_k": [{"unit": j, "value": activity[j]} for j in ranked],
            }
        )
    return out


def _assert_same(got: list[dict], want: list[dict], scale: float) -> None:
    assert len(got) == len(want)
    tol = 1e-9 * (1.0 + scale)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for key in ("mean", "std", "min", "max", "inactive_fraction", "l2_norm"):
            assert type(g[key]) is float, key
            assert g[key] == pytest.approx(w[key], rel=1e-9, abs=tol), key
        assert [t["unit"] for t in g["top_k"]] == [t["unit"] for t in w["top_k"]]
        assert [t["value"] for t in g["top_k"]] == pytest.approx(
            [t["value"] for t in w["top_k"]], rel=1e-9, abs=tol
        )
        assert all(type(t["unit"]) is int for t in g["top_k"])


RNG = np.random.default_rng(11)
SHAPES = [(5,), (1, 7), (6, 64), (5, 700), (3, 9, 9, 4), (4, 5, 5, 300), (2, 3, 3, 2, 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", None])
@pytest.mark.parametrize("top_k", [1, 5, 100])
def test_instance_stats_equal_plain_numpy(shape, activation, top_k):
    values = RNG.normal(size=shape).astype(np.float32)
    if activation == "relu":
        values = np.maximum(values, 0)
    got = stats.instance_stats(values, activation, top_k)
    _assert_same(got, _plain(values, activation, top_k), float(np.abs(values).max()))


@pytest.mark.parametrize("shape", [(4, 12), (3, 600), (2, 4, 4, 6), (2, 3, 3, 400)])
def test_ties_keep_unit_order_and_k_beyond_units(shape):
    """Values on a coarse grid: many exact ties, also at the k-th place (both top-k paths)."""
    values = (np.round(RNG.normal(size=shape) * 2) / 2).astype(np.float32)
    values = np.maximum(values, 0)  # plenty of zero units
    for top_k in (1, 3, 5, 17, 100):
        got = stats.instance_stats(values, "relu", top_k)
        _assert_same(got, _plain(values, "relu", top_k), 10.0)
    units = shape[-1]
    assert all(
        len(s["top_k"]) == min(100, units) for s in stats.instance_stats(values, "relu", 100)
    )


def test_all_equal_units_rank_by_index():
    got = stats.instance_stats(np.zeros((2, 500), np.float32), "relu", 5)
    assert [[t["unit"] for t in s["top_k"]] for s in got] == [[0, 1, 2, 3, 4]] * 2
    assert [s["std"] for s in got] == [0.0, 0.0] and [s["inactive_fraction"] for s in got] == [
        1.0,
        1.0,
    ]


def test_top_k_units_equals_a_stable_argsort():
    for units, nan in [(3, False), (300, False), (2000, False), (300, True)]:
        activity = np.round(RNG.normal(size=(7, units)), 1)
        activity[0, :] = -np.inf
        activity[1, ::3] = np.inf
        if nan:
            activity[2, 5] = np.nan
        for k in (1, 5, 60, units):
            want = np.argsort(-activity, axis=1, kind="stable")[:, :k]
            np.testing.assert_array_equal(stats.top_k_units(activity, k), want)


def test_constant_layer_has_zero_std():
    values = np.full((3, 50), 0.7, np.float32)
    got = stats.instance_stats(values, "sigmoid")
    assert [s["std"] for s in got] == [0.0] * 3
    assert got[0]["l2_norm"] == pytest.approx(math.sqrt(50 * float(np.float32(0.7)) ** 2))


@pytest.mark.parametrize(
    ("dtype", "spread"), [(np.float32, 1e-2), (np.float32, 0.0), (np.float64, 1e-9)]
)
def test_spread_tiny_next_to_the_mean(dtype, spread):
    """sum x^2 - n mean^2 cancels here: the std still equals numpy's two-pass one."""
    values = (300 + spread * RNG.normal(size=(4, 2000))).astype(dtype)
    got = stats.instance_stats(values, None)
    for s, row in zip(got, values.astype(np.float64), strict=True):
        assert s["std"] == pytest.approx(row.std(), rel=1e-9, abs=1e-12)
        assert s["l2_norm"] == pytest.approx(np.sqrt((row**2).sum()), rel=1e-12)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_non_finite_values_become_none():
    values = np.ones((3, 400), np.float64)
    values[0, 3] = np.nan
    values[1, 7] = np.inf
    got = stats.instance_stats(values, "relu", 3)
    assert got[0]["mean"] is None and got[0]["std"] is None and got[0]["min"] is None
    assert got[1]["mean"] is None and got[1]["max"] is None and got[1]["l2_norm"] is None
    assert got[1]["top_k"][0] == {"unit": 7, "value": None}
    assert got[2] == _plain(values[2:], "relu", 3)[0]


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("units", [6, 300])
def test_non_finite_units_rank_like_a_stable_argsort(units):
    """NaN ranks last (by index), +inf first, -inf after every finite unit; in both paths."""
    values = np.round(RNG.normal(size=(3, 2, 2, units)), 1)
    values[0, 0, 0, 2] = values[0, 1, 1, 4] = np.nan
    values[1, :, :, 1] = np.inf
    values[2, :, :, 3] = -np.inf
    activity = values.reshape(3, -1, units).mean(axis=1)
    for top_k in (1, 3, units):
        got = stats.instance_stats(values, "relu", top_k)
        want = np.argsort(-activity, axis=1, kind="stable")[:, :top_k]
        assert [[t["unit"] for t in s["top_k"]] for s in got] == want.tolist()
        for s, row, order in zip(got, activity, want, strict=True):
            got_values = [t["value"] for t in s["top_k"]]
            assert [v is None for v in got_values] == [not np.isfinite(v) for v in row[order]]
            finite = [v for v in row[order] if np.isfinite(v)]
            assert [v for v in got_values if v is not None] == pytest.approx(finite, rel=1e-12)


def test_integer_values_give_floats():
    (s,) = stats.instance_stats(np.array([[3, -1, 2]]), "relu", 2)
    assert s["max"] == 3.0 and type(s["max"]) is float
    assert s["top_k"] == [{"unit": 0, "value": 3.0}, {"unit": 2, "value": 2.0}]


def test_several_layers_equal_one_layer_at_a_time():
    layers = [
        np.maximum(RNG.normal(size=(4, 6, 6, 3)), 0).astype(np.float32),
        RNG.normal(size=(4, 6, 6, 3)).astype(np.float32),
        RNG.normal(size=(4, 1000)).astype(np.float32),
        RNG.uniform(size=(4, 10)).astype(np.float32),
    ]
    acts = ["relu", None, "tanh", "sigmoid"]
    got = stats.layers_instance_stats(layers, acts, 4)
    assert got == [stats.instance_stats(v, a, 4) for v, a in zip(layers, acts, strict=True)]
    for g, v, a in zip(got, layers, acts, strict=True):
        _assert_same(g, _plain(v, a, 4), float(np.abs(v).max()))


def test_repeated_layers_get_their_own_copy_and_their_own_rule():
    dense = RNG.uniform(-0.02, 1, size=(3, 40)).astype(np.float32)
    dense[:, :4] = 0.005  # active for relu, inactive for sigmoid
    got = stats.layers_instance_stats([dense, dense.copy(), dense], ["relu", None, "sigmoid"])
    assert got[1] == got[0] and got[1][0] is not got[0][0]
    assert got[1][0]["top_k"][0] is not got[0][0]["top_k"][0]
    _assert_same(got[2], _plain(dense, "sigmoid", 5), 1.0)  # same values, other rule
    assert got[2][0]["inactive_fraction"] > got[0][0]["inactive_fraction"]


def test_batches_larger_than_a_chunk(monkeypatch):
    monkeypatch.setattr(stats, "CHUNK_VALUES", 500)  # 2 instances per chunk below
    layers = [RNG.normal(size=(9, 5, 5, 8)).astype(np.float32), RNG.normal(size=(9, 30))]
    got = stats.layers_instance_stats(layers, ["relu", "tanh"], 3)
    _assert_same(got[0], _plain(layers[0], "relu", 3), 5.0)
    _assert_same(got[1], _plain(layers[1], "tanh", 3), 5.0)


@pytest.mark.parametrize("shape", [(300, 20), (3, 2000)])
def test_inactive_counts_per_slice_and_by_one_reduction(shape):
    values = np.maximum(RNG.normal(size=shape), 0).astype(np.float32)  # small / big slices
    other = np.tanh(RNG.normal(size=shape)).astype(np.float32)
    got = stats.layers_instance_stats([values, other], ["relu", "tanh"])
    _assert_same(got[0], _plain(values, "relu", 5), 5.0)
    _assert_same(got[1], _plain(other, "tanh", 5), 5.0)


def test_empty_batch_and_empty_layer():
    assert stats.layers_instance_stats([np.zeros((0, 4))], ["relu"]) == [[]]
    (empty,) = stats.instance_stats(np.zeros((1, 0)), "relu")
    assert empty["top_k"] == [] and empty["mean"] is None


@pytest.mark.parametrize("name", ["patch", "txn"])
def test_every_hidden_layer_of_a_real_model(runtimes, name):
    from .helpers import patch_images, transactions

    rt = runtimes[name]
    x = patch_images(3, seed=12)[0] if name == "patch" else transactions(5, seed=12)[0]
    layers = rt.hidden_layer_names
    acts = rt.activations(x, layers)
    by_name = {layer.name: layer for layer in rt.model.layers}
    names = [getattr(getattr(by_name[n], "activation", None), "__name__", None) for n in layers]
    got = stats.layers_instance_stats([acts[n] for n in layers], names, 5)
    for n, g, a in zip(layers, got, names, strict=True):
        _assert_same(g, _plain(acts[n], a, 5), float(np.abs(acts[n]).max()))


def _assert_close_json(got, want) -> None:
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            _assert_close_json(got[key], want[key])
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5)
    else:
        assert got == want


@pytest.fixture(scope="module")
def client(repo):
    from service import create_app

    app = create_app(
        {"model_repository": str(repo), "load_in_background": False, "poll_interval": 0}
    )
    return app.test_client()


@pytest.mark.parametrize("name", ["patch", "txn"])
def test_activations_endpoint_stats_equal_plain_numpy_of_its_values(client, runtimes, name):
    from service.api import format_prediction

    from .helpers import patch_images, transactions

    x = patch_images(3, seed=13)[0] if name == "patch" else transactions(3, seed=13)[0]
    body = {"instances": x.tolist(), "top_k": 3}
    full = client.post(f"/models/{name}/activations", json=body).get_json()
    only = client.post(
        f"/models/{name}/activations", json={**body, "include": ["stats"]}
    ).get_json()
    table = client.get(f"/models/{name}/layers").get_json()["layers"]
    activation = {row["name"]: row["activation"] for row in table}
    rt = runtimes[name]
    probs = rt.predict(x)
    assert list(full) == ["model", "version", "layers", "inactive_rules", "instances"]
    assert full["layers"] == rt.hidden_layer_names
    for i, inst in enumerate(full["instances"]):
        assert list(inst) == ["prediction", "layers"]
        _assert_close_json(inst["prediction"], format_prediction(rt, probs[i]))
        assert only["instances"][i]["prediction"] == inst["prediction"]
        for layer, item in inst["layers"].items():
            assert list(item) == ["shape", "values", "stats"]
            values = np.asarray(item["values"], dtype=np.float32)
            assert list(values.shape) == item["shape"]
            want = _plain(values[None], activation[layer], 3)
            _assert_same([item["stats"]], want, float(np.abs(values).max()))
            assert only["instances"][i]["layers"][layer] == {
                "shape": item["shape"],
                "stats": item["stats"],
            }


def test_one_row_response_is_the_same_on_both_stats_paths(client, monkeypatch):
    """A single row of the MLP takes the one-instance statistics path (dense layers, few
    values): the response is byte for byte the general path's."""
    from .helpers import transactions

    body = {"instances": transactions(1, seed=14)[0].tolist(), "include": ["values", "stats"]}
    fast = client.post("/models/txn/activations", json=body)
    shapes = [item["shape"] for item in fast.get_json()["instances"][0]["layers"].values()]
    assert fast.status_code == 200 and all(len(s) == 1 for s in shapes)
    assert sum(s[0] for s in shapes) <= stats.SMALL_VALUES
    monkeypatch.setattr(stats, "SMALL_VALUES", -1)
    general = client.post("/models/txn/activations", json=body)
    assert general.status_code == 200 and fast.data == general.data
