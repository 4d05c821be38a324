"""Property test: whatever JSON arrives, every predict endpoint answers 200 or a 4xx with
{"error": ...}; never a 500."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=40,
)
rows = st.one_of(
    st.lists(st.floats(allow_nan=False, width=32), min_size=28, max_size=32),
    st.fixed_dictionaries({"b64": st.text(max_size=40)}),
    values,
)
bodies = st.one_of(
    values,
    st.fixed_dictionaries({"instances": st.lists(rows, max_size=4)}),
    st.fixed_dictionaries({"inputs": st.lists(rows, max_size=4)}),
    st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["input", "x"]),
                        "shape": st.lists(st.integers(-1, 40), max_size=4),
                        "datatype": st.sampled_from(
                            ["FP32", "INT8", "UINT8", "BYTES", "BOOL", "?"]
                        ),
                        "data": values,
                    }
                ),
                max_size=2,
            ),
            "outputs": st.one_of(st.none(), st.lists(values, max_size=2)),
            "id": values,
        }
    ),
)
PATHS = [
    "/models/fraud/predict",
    "/models/fashion/predict",
    "/v1/models/fraud:predict",
    "/v1/models/fashion:predict",
    "/v2/models/fraud/infer",
    "/v2/models/fashion/infer",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, path=st.sampled_from(PATHS))
def test_never_a_server_error(app, body, path):
    data = json.dumps(body)  # stdlib: big integers too (orjson refuses them)
    r = app.test_client().post(path, data=data, content_type="application/json")
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.json)
    if r.status_code != 200:
        assert set(r.json) == {"error"} and r.json["error"]
