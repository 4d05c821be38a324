"""Fuzzing over every endpoint through the WSGI app (no network): schemathesis against
our /openapi.json (valid and invalid data) and against the Open Inference Protocol's
OpenAPI document, plus hypothesis on raw bodies. Every response is < 500 and every error
body is JSON with a non-empty ``error`` string. At least 2,000 requests in total."""

from __future__ import annotations

import copy
import json
from collections import Counter

import numpy as np
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from .conftest import ADMIN_TOKEN, make_app
from .helpers import ROOT, svc_factory

OIP_SPEC = ROOT.parent / "shared" / "specs" / "open-inference-protocol" / "open_inference_rest.yaml"
MODELS = ["fraud", "fashion"]
LAYERS = ["normalization", "dense_1", "conv2d_1", "output", "0", "3", "input", "rescaling"]
REQUESTS: Counter = Counter()
STATUSES: Counter = Counter()  # (source, status class) e.g. ('openapi', '2xx')
MIN_TOTAL = 2000

SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def check(response, what: str) -> None:
    """The contract for any request: no 5xx; an error is {"error": "<non-empty>"}."""
    REQUESTS[what] += 1
    status = response.status_code
    STATUSES[what, f"{status // 100}xx"] += 1
    request = response.request
    where = f"{request.method} {request.url}"
    assert status < 500, (where, status, response.content[:300])
    if status >= 400:
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), where
        body = json.loads(response.content)
        assert isinstance(body.get("error"), str) and body["error"], (where, body)


def _widen(params: list[dict]) -> None:
    """Path parameters: mostly real names (to reach the models), sometimes anything."""
    for p in params:
        if p.get("in") != "path":
            continue
        if p["name"] in ("name", "MODEL_NAME"):
            p["schema"] = {"anyOf": [{"enum": MODELS}, {"type": "string", "minLength": 1}]}
        elif p["name"] in ("version", "MODEL_VERSION"):
            base = p["schema"].get("type", "string")
            values = [1, 2] if base == "integer" else ["1", "v1", "2"]
            p["schema"] = {"anyOf": [{"enum": values}, {"type": base}]}
        elif p["name"] == "layer":
            p["schema"] = {"anyOf": [{"enum": LAYERS}, {"type": "string", "minLength": 1}]}


def our_schema(app) -> schemathesis.BaseSchema:
    doc = copy.deepcopy(app.test_client().get("/openapi.json").json)
    for ops in doc["paths"].values():
        for op in ops.values():
            _widen(op.get("parameters", []))
    schema = schemathesis.openapi.from_dict(doc)
    schema.app = app
    return schema


def oip_schema(app) -> schemathesis.BaseSchema:
    """The spec's paths are written '/v2/models/${MODEL_NAME}/...': the '$' is template
    syntax, not part of the URL, so it is dropped to point the document at our app."""
    doc = yaml.safe_load(OIP_SPEC.read_text())
    doc["paths"] = {p.replace("${", "{"): ops for p, ops in doc["paths"].items()}
    for ops in doc["paths"].values():
        _widen(ops.get("parameters", []))
        for op in ops.values():
            if isinstance(op, dict):
                _widen(op.get("parameters", []))
    schema = schemathesis.openapi.from_dict(doc)
    schema.app = app
    return schema


# -- typed passes: valid instances of each model, so generated requests reach the models --
TYPED = {
    "fraud": {
        "rows": svc_factory.tabular_samples(3, seed=41).tolist(),
        "shape": [1, 30],
        "layers": ["input", "normalization", "dense_1", "dropout_1", "dense_2", "output", 2],
    },
    "fashion": {
        "rows": svc_factory.image_samples(2, seed=42).tolist(),
        "shape": [1, 28, 28, 1],
        "layers": ["rescaling", "conv2d_1", "max_pool_1", "flatten_1", "dense_1", "output", 1],
    },
}


def _flat(row) -> list:
    return np.asarray(row, dtype=np.float32).reshape(-1).tolist()


def _typed_params(params: list[dict], model: str) -> None:
    spec = TYPED[model]
    for p in params:
        if p.get("in") == "path" and p["name"] in ("name", "MODEL_NAME"):
            p["schema"] = {"enum": [model]}
        elif p.get("in") == "path" and p["name"] in ("version", "MODEL_VERSION"):
            p["schema"] = {"enum": [1] if p["schema"].get("type") == "integer" else ["1"]}
        elif p.get("in") == "path" and p["name"] == "layer":
            p["schema"] = {"enum": [str(x) for x in spec["layers"]]}


def _typed_input(model: str) -> dict:
    spec = TYPED[model]
    return {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"enum": ["input"]},
            "shape": {"enum": [spec["shape"]]},
            "datatype": {"enum": ["FP32"]},
            "data": {"enum": [_flat(r) for r in spec["rows"]]},
        },
    }


def typed_our_schema(app, model: str) -> schemathesis.BaseSchema:
    """Our document narrowed to ``model``: its name, version 1, its layers, and request
    bodies made of its valid instances (JSON only: a valid image file is not generated)."""
    spec = TYPED[model]
    doc = copy.deepcopy(app.test_client().get("/openapi.json").json)
    doc["paths"] = {
        p: ops for p, ops in doc["paths"].items() if p.startswith(("/models/{", "/v1/", "/v2/m"))
    }
    for ops in doc["paths"].values():
        for op in ops.values():
            _typed_params(op.get("parameters", []), model)
            content = op.get("requestBody", {}).get("content", {})
            content.pop("multipart/form-data", None)
    instances = {"type": "array", "items": {"enum": spec["rows"]}, "minItems": 1, "maxItems": 2}
    layers = {"type": "array", "items": {"enum": spec["layers"]}, "minItems": 1, "maxItems": 3}
    schemas = doc["components"]["schemas"]
    schemas["PredictRequest"]["properties"]["instances"] = instances
    schemas["ActivationsRequest"]["properties"].update(instances=instances, layers=layers)
    schemas["ExplainRequest"]["properties"].update(
        instances=instances,
        steps={"type": "integer", "minimum": 1, "maximum": 16},
        baseline={"enum": ["zeros", "reference_mean"]},
        layer={"enum": ["conv2d_1"] if model == "fashion" else ["output"]},
        **{"class": {"enum": [None, 0, 1, "predicted"]}},
    )
    schemas["TFPredictRequest"] = {
        "type": "object",
        "required": ["instances"],
        "additionalProperties": False,
        "properties": {
            "instances": instances,
            "signature_name": {"enum": ["serving_default"]},
            "output_layers": {"type": "array", "items": {"enum": [str(x) for x in spec["layers"]]}},
        },
    }
    schemas["V2InferenceRequest"]["properties"]["inputs"]["items"] = _typed_input(model)
    schemas["V2InferenceRequest"]["properties"]["outputs"]["items"]["properties"]["name"] = {
        "enum": [str(x) for x in spec["layers"]]
    }
    for ops in doc["paths"].values():  # samples: small n
        for op in ops.values():
            for q in op.get("parameters", []):
                if q["in"] == "query" and q["name"] == "n":
                    q["schema"] = {"type": "integer", "minimum": 1, "maximum": 32}
    schema = schemathesis.openapi.from_dict(doc)
    schema.app = app
    return schema


def typed_oip_schema(app, model: str) -> schemathesis.BaseSchema:
    """The Open Inference Protocol document with its tensors narrowed to ``model``."""
    doc = yaml.safe_load(OIP_SPEC.read_text())
    doc["paths"] = {p.replace("${", "{"): ops for p, ops in doc["paths"].items()}
    for ops in doc["paths"].values():
        _typed_params(ops.get("parameters", []), model)
    schemas = doc["components"]["schemas"]
    schemas["request_input"] = _typed_input(model)
    schemas["inference_request"]["properties"]["inputs"].update(minItems=1, maxItems=1)
    schemas["request_output"]["properties"]["name"] = {
        "enum": [str(x) for x in TYPED[model]["layers"]]
    }
    schema = schemathesis.openapi.from_dict(doc)
    schema.app = app
    return schema


def fuzz(schema, what: str, examples: int, modes, headers=None) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(max_examples=examples, **SETTINGS)
            @given(case=strategy)
            def run(case):
                try:
                    response = case.call(headers=headers)
                except ValueError as exc:  # a '?' in a path parameter: unsendable by WSGI
                    if "Query string is defined in the path" not in str(exc):
                        raise
                    reject()
                check(response, what)

            try:
                run()
            except Unsatisfiable:  # nothing invalid to generate (e.g. GET /healthz)
                assert mode == GenerationMode.NEGATIVE, operation.label


@pytest.fixture(scope="module")
def fuzz_app(repo):
    return make_app(repo, max_batch_size=4, log_level="warning")


def test_fuzz_our_openapi_document(fuzz_app):
    fuzz(
        our_schema(fuzz_app),
        "openapi",
        examples=12,
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    )
    assert REQUESTS["openapi"] >= 600


def test_fuzz_open_inference_protocol_document(fuzz_app):
    fuzz(
        oip_schema(fuzz_app),
        "oip",
        examples=30,
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    )
    assert REQUESTS["oip"] >= 150


@pytest.mark.parametrize("model", ["fraud", "fashion"])
def test_fuzz_typed_requests_reach_the_models(fuzz_app, model):
    fuzz(typed_our_schema(fuzz_app, model), "openapi-typed", 15, [GenerationMode.POSITIVE])
    fuzz(typed_oip_schema(fuzz_app, model), "oip-typed", 30, [GenerationMode.POSITIVE])


def test_fuzz_admin_api(scratch_repo):
    """Random admin decisions (with the token) never break the server."""
    app = make_app(scratch_repo, admin_token=ADMIN_TOKEN, log_level="warning")
    schema = our_schema(app).include(path_regex="^/admin")
    fuzz(
        schema,
        "admin",
        examples=20,
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert REQUESTS["admin"] >= 100


JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
VALID_INSTANCES = st.sampled_from(["fraud", "fashion"]).flatmap(
    lambda m: st.lists(st.sampled_from(TYPED[m]["rows"]), min_size=1, max_size=2)
)
POSTS = [
    "/models/{m}/activations",
    "/models/{m}/explain",
    "/models/{m}/explain.png",
    "/models/{m}/layers/1/picture.png",
    "/models/{m}/predict",
    "/v1/models/{m}:predict",
    "/v2/models/{m}/infer",
]


@settings(max_examples=300, **SETTINGS)
@given(
    path=st.sampled_from(POSTS),
    model=st.sampled_from(MODELS),
    body=st.one_of(
        JSONISH,
        st.fixed_dictionaries(
            {"instances": st.one_of(st.lists(JSONISH, max_size=3), VALID_INSTANCES)},
            optional={
                "layers": JSONISH,
                "include": JSONISH,
                "top_k": JSONISH,
                "method": st.sampled_from(["gradcam", "integrated_gradients", "x"]),
                "class": JSONISH,
                "baseline": JSONISH,
                "steps": JSONISH,
                "layer": JSONISH,
                "output_layers": JSONISH,
            },
        ),
    ),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/x+json"]),
)
def test_hypothesis_raw_bodies(fuzz_app, path, model, body, content_type):
    data = json.dumps(body)  # stdlib: big integers too
    r = fuzz_app.test_client().post(
        path.format(m=model), data=data, headers={"Content-Type": content_type}
    )
    REQUESTS["hypothesis"] += 1
    STATUSES["hypothesis", f"{r.status_code // 100}xx"] += 1
    assert r.status_code < 500, (path, body, r.status_code, r.data[:300])
    if r.status_code >= 400:
        assert r.is_json and isinstance(r.json["error"], str) and r.json["error"]


def test_total_generated_requests():
    """Runs last in this module: the fuzzers above sent at least 2,000 requests."""
    total = sum(REQUESTS.values())
    print(f"fuzz requests: {dict(REQUESTS)} total={total}; statuses: {dict(STATUSES)}")
    assert total >= MIN_TOTAL, dict(REQUESTS)
    # the generators reach the models, not only the 404 of unknown names
    # raw bodies are mostly junk by design: 14-40 of 300 answered 2xx in runs seen so far
    # (the same examples each run: the model and the order of the tests decide how many
    # of the few well-formed ones succeed; 14 on this machine with the module run alone)
    for source, share in (("openapi-typed", 0.5), ("oip-typed", 0.5), ("hypothesis", 0.03)):
        assert STATUSES[source, "2xx"] >= share * REQUESTS[source], dict(STATUSES)
