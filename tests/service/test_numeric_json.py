"""The simdjson shortcut for numeric instances (service/numeric_json.py,
``inputs.fast_instances``) never accepts a body that the ordinary path (orjson,
``get_instances``, ``decode_for_model``) would refuse or read differently, accepts the plain
bodies it exists for, and leaves every answer of the predict endpoints unchanged."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import inputs, numeric_json
from service.errors import LayerscopeError

MAX_BATCH = 8  # the session app's max_batch_size (conftest.py)


@pytest.fixture(scope="module")
def runtimes(app):
    repo = app.extensions["layerscope"].repository
    return {"fraud": repo.get("fraud"), "fashion": repo.get("fashion")}


def ordinary(raw: bytes, runtime) -> np.ndarray:
    body = inputs.parse_json(raw)
    instances = inputs.get_instances(body, "instances", MAX_BATCH)
    return inputs.decode_for_model(instances, runtime, 10**6)


def assert_same_as_ordinary(raw: bytes, runtime) -> np.ndarray | None:
    fast = inputs.fast_instances(raw, runtime, MAX_BATCH, min_bytes=0)
    if fast is None:
        return None
    slow = ordinary(raw, runtime)  # must not raise: the shortcut accepted the body
    assert fast.dtype == slow.dtype == np.float32
    assert fast.shape == slow.shape
    assert np.array_equal(fast, slow), raw[:200]
    return fast


def rows_of(model: str, n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    if model == "fashion":
        return rng.integers(0, 256, size=(n, 28, 28)).tolist()
    return rng.normal(size=(n, 30)).tolist()


# -- accepted ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["fraud", "fashion"])
@pytest.mark.parametrize("n", [1, 3, MAX_BATCH])
def test_plain_bodies_take_the_shortcut_and_equal_the_ordinary_path(runtimes, model, n):
    raw = json.dumps({"instances": rows_of(model, n, seed=n)}).encode()
    fast = assert_same_as_ordinary(raw, runtimes[model])
    assert fast is not None and len(fast) == n


@pytest.mark.parametrize(
    "raw",
    [
        b'{"instances": [[[0, 1e2, 2.5E1], [3, 4, 5]]], "note": "x"}',  # scalar members
        b' {\n "instances" : [ [ [0,1,2] , [3,4,5] ] ] } ',  # whitespace
    ],
)
def test_number_forms_and_scalar_members_are_accepted(raw):
    found = numeric_json.instances_array(raw)
    assert found is not None
    arr, members = found
    assert arr.shape == (1, 2, 3)
    body = json.loads(raw)
    assert arr.tolist() == body["instances"]
    assert members == {k: v for k, v in body.items() if k != "instances"}


def test_image_rows_of_28x28x1_are_accepted(runtimes):
    rows = np.asarray(rows_of("fashion", 2)).reshape(2, 28, 28, 1).tolist()
    raw = json.dumps({"instances": rows}).encode()
    assert assert_same_as_ordinary(raw, runtimes["fashion"]).shape == (2, 28, 28, 1)


def test_small_bodies_take_the_ordinary_path(runtimes):
    """Below FAST_INSTANCES_MIN_BYTES orjson is the faster of the two."""
    small = json.dumps({"instances": rows_of("fraud", 1)}).encode()
    assert len(small) < inputs.FAST_INSTANCES_MIN_BYTES
    assert inputs.fast_instances(small, runtimes["fraud"], MAX_BATCH) is None
    assert inputs.fast_instances(small, runtimes["fraud"], MAX_BATCH, min_bytes=0) is not None


# -- refused (the ordinary path decides) ---------------------------------------------------
REFUSED_ARRAYS = {
    "a number among rows": b'{"instances": [[1, 2], 3]}',
    "an array among numbers": b'{"instances": [[1, [2]], [3, 4]]}',
    "ragged, same count and depth": b'{"instances": [[[1, 2], [3, 4, 5]], [[6], [7, 8]]]}',
    "ragged rows": b'{"instances": [[1, 2], [3]]}',
    "empty batch": b'{"instances": []}',
    "empty row": b'{"instances": [[]]}',
    "one dimension": b'{"instances": [1, 2]}',
    "boolean": b'{"instances": [[1, true]]}',
    "null": b'{"instances": [[1, null]]}',
    "string": b'{"instances": [["1", 2]]}',
    "object": b'{"instances": [[1, {}]]}',
    "NaN": b'{"instances": [[NaN, 1]]}',
    "overflowing double": b'{"instances": [[1e400, 1]]}',
    "huge integer": b'{"instances": [[100000000000000000000000, 1]]}',
    "integer beyond 2**53": b'{"instances": [[9007199254740993, 1]]}',
    "beyond float32": b'{"instances": [[3.5e38, 1]]}',
    "duplicate key": b'{"instances": [[1, 2]], "instances": [[3, 4]]}',
    "array member": b'{"instances": [[1, 2]], "other": [1]}',
    "object member": b'{"instances": [[1, 2]], "other": {}}',
    "'[' in a member": b'{"instances": [[1, 2]], "other": "a[b"}',
    "escaped '[' in a member": b'{"instances": [[1, 2]], "other": "\\u005b"}',
    "'[' in a name": b'{"instances": [[1, 2]], "a[": 1}',
    "no instances": b'{"inputs": [[1, 2]]}',
    "not an object": b"[[1, 2]]",
    "malformed": b'{"instances": [[1, 2]]',
    "trailing comma": b'{"instances": [[1, 2],]}',
    "empty body": b"",
}


@pytest.mark.parametrize("raw", REFUSED_ARRAYS.values(), ids=REFUSED_ARRAYS.keys())
def test_unusual_arrays_are_left_to_the_ordinary_path(raw):
    assert numeric_json.instances_array(raw) is None


def test_the_parser_is_usable_after_a_refusal():
    assert numeric_json.instances_array(b'{"instances": [[1, "x"]]}') is None
    assert numeric_json.instances_array(b"{") is None
    found = numeric_json.instances_array(b'{"instances": [[1, 2]]}')
    assert found is not None and found[0].tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize(
    "model,instances",
    [
        ("fraud", [[0.0] * 29]),  # a feature short
        ("fraud", [[0.0] * 30] * (MAX_BATCH + 1)),  # over the batch limit
        ("fashion", [[[0] * 28] * 27]),  # 27 x 28
        ("fashion", [[[256] * 28] * 28]),  # outside the value range
        ("fashion", [[[-1] * 28] * 28]),
    ],
    ids=["features", "batch", "shape", "above-range", "below-range"],
)
def test_model_checks_refuse_what_the_ordinary_path_refuses(runtimes, model, instances):
    raw = json.dumps({"instances": instances}).encode()
    assert numeric_json.instances_array(raw) is not None  # the JSON itself is plain
    assert inputs.fast_instances(raw, runtimes[model], MAX_BATCH, min_bytes=0) is None
    with pytest.raises(LayerscopeError):
        ordinary(raw, runtimes[model])


# -- generated bodies --------------------------------------------------------------------------
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just([]),
    st.just([1]),
    st.just({}),
    st.sampled_from([-0.0, 0.0, 255, 255.0, 256, 1e-320, 3.4e38, 3.5e38, 2**53, 2**53 + 1]),
)


@st.composite
def near_valid_bodies(draw, model: str):
    """A valid body for ``model``, then perhaps a few of the edits a broken client makes."""
    n = draw(st.integers(1, MAX_BATCH + 1))
    if model == "fashion":
        rows = draw(
            st.lists(
                st.lists(
                    st.lists(st.integers(0, 255) | st.floats(0, 255), min_size=28, max_size=28),
                    min_size=28,
                    max_size=28,
                ),
                min_size=n,
                max_size=n,
            )
        )
    else:
        number = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-(10**6), 10**6)
        rows = draw(st.lists(st.lists(number, min_size=30, max_size=30), min_size=n, max_size=n))
    for _ in range(draw(st.integers(0, 2))):
        edit = draw(st.sampled_from(["value", "drop", "extend", "member"]))
        row = draw(st.integers(0, n - 1))
        target = rows[row] if model == "fraud" else rows[row][draw(st.integers(0, 27))]
        if edit == "value":
            target[draw(st.integers(0, len(target) - 1))] = draw(ODD_VALUES)
        elif edit == "drop":
            target.pop()
        elif edit == "extend":
            target.append(draw(ODD_VALUES))
    body = {"instances": rows}
    if draw(st.booleans()):
        body[draw(st.sampled_from(["id", "signature_name", "a[", "meta"]))] = draw(ODD_VALUES)
    text = json.dumps(body, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    return text.encode()


@pytest.mark.parametrize("model", ["fraud", "fashion"])
def test_generated_bodies_never_differ_from_the_ordinary_path(runtimes, model):
    counts = {"fast": 0, "refused": 0}

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(raw=near_valid_bodies(model))
    def check(raw):
        fast = assert_same_as_ordinary(raw, runtimes[model])
        counts["refused" if fast is None else "fast"] += 1

    check()
    # both outcomes were exercised, so the comparison above was not vacuous
    assert counts["fast"] > 0 and counts["refused"] > 0, counts


def test_threads_each_get_their_own_rows(runtimes):
    bodies = [
        json.dumps({"instances": rows_of("fraud", 1 + i % 4, seed=i)}).encode() for i in range(64)
    ]

    def decode(raw):
        return inputs.fast_instances(raw, runtimes["fraud"], MAX_BATCH, min_bytes=0)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(decode, bodies * 4))
    for raw, got in zip(bodies * 4, results, strict=True):
        assert got is not None
        assert np.array_equal(got, ordinary(raw, runtimes["fraud"]))


# -- through the app -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,extra",
    [
        ("/models/{m}/predict", {}),
        ("/v1/models/{m}:predict", {}),
        ("/v1/models/{m}:predict", {"signature_name": "serving_default"}),
    ],
)
@pytest.mark.parametrize("model", ["fraud", "fashion"])
def test_answers_are_the_same_on_either_path(client, runtimes, path, extra, model):
    """The same rows, once as a plain body (the shortcut) and once with an object member
    that sends it down the ordinary path, give byte-identical answers."""
    rows = rows_of(model, MAX_BATCH, seed=7)  # over FAST_INSTANCES_MIN_BYTES
    plain = json.dumps({"instances": rows, **extra}).encode()
    forced = json.dumps({"instances": rows, **extra, "ordinary": {}}).encode()
    assert inputs.fast_instances(plain, runtimes[model], MAX_BATCH) is not None
    assert inputs.fast_instances(forced, runtimes[model], MAX_BATCH) is None
    url = path.format(m=model)
    a = client.post(url, data=plain, content_type="application/json")
    b = client.post(url, data=forced, content_type="application/json")
    assert a.status_code == b.status_code == 200
    assert a.get_data() == b.get_data()


def test_tfserving_refusals_keep_their_errors(client):
    rows = rows_of("fraud", 1)
    for body, fragment in [
        ({"instances": rows, "signature_name": "other"}, "signature_name 'other' not found"),
        ({"instances": rows, "inputs": 1}, "expected exactly one of"),
    ]:
        resp = client.post("/v1/models/fraud:predict", json=body)
        assert resp.status_code == 400
        assert fragment in resp.get_json()["error"]
