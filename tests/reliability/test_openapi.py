"""/openapi.json: valid OpenAPI, generated from the live url_map so every route and
method is documented with a hand-written operation, and true to real responses."""

from __future__ import annotations

import jsonschema
import pytest
from openapi_spec_validator import validate

from service.openapi import path_template

from .helpers import svc_factory


def _doc(app) -> dict:
    r = app.test_client().get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    return r.json


@pytest.mark.parametrize("which", ["app", "secured_app"])
def test_document_is_valid_and_covers_every_rule(request, which):
    app = request.getfixturevalue(which)
    doc = _doc(app)
    validate(doc)  # openapi-spec-validator: raises on any violation
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        template, _ = path_template(rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (template, method.lower()) in documented, (rule.rule, method)
            op = doc["paths"][template][method.lower()]
            assert not op.get("x-undocumented"), f"{rule.endpoint} has no operation spec"
            assert "200" in op["responses"] and op["summary"]
    assert len(documented) == sum(
        len(r.methods - {"HEAD", "OPTIONS"}) for r in app.url_map.iter_rules()
    )


def test_admin_paths_only_when_the_admin_api_is_on(app, secured_app):
    assert not [p for p in _doc(app)["paths"] if p.startswith("/admin")]
    admin = {p: ops for p, ops in _doc(secured_app)["paths"].items() if p.startswith("/admin")}
    assert "/admin/models/{name}/versions/{version}/unload" in admin
    assert all(op["security"] == [{"bearer": []}] for ops in admin.values() for op in ops.values())
    layers = _doc(secured_app)["paths"]["/models/{name}/layers"]["get"]
    assert layers["security"] == [{"bearer": []}]  # introspection token set
    assert "security" not in _doc(app)["paths"]["/models/{name}/layers"]["get"]


def test_limits_come_from_the_settings(app):
    doc = _doc(app)
    schema = doc["components"]["schemas"]["PredictRequest"]["properties"]["instances"]
    assert schema["maxItems"] == app.extensions["layerscope"].settings.max_batch_size == 8


def _resolve(doc: dict, schema: dict) -> dict:
    """The schema with components inlined, for jsonschema (OpenAPI 3.0 ~ draft 4 + nullable)."""

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
            out = {k: walk(v) for k, v in node.items() if k != "nullable"}
            if node.get("nullable") and "type" in out:
                out["type"] = [out["type"], "null"]
            return out
        if isinstance(node, list):
            return [walk(n) for n in node]
        return node

    return walk(schema)


def test_real_responses_match_their_documented_schemas(app):
    """A request per common endpoint: status documented, JSON body valid for its schema."""
    client = app.test_client()
    doc = _doc(app)
    row = svc_factory.tabular_samples(1, seed=3)[0].tolist()
    img = svc_factory.image_samples(1, seed=3)[0].tolist()
    v2 = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}
    calls = [
        ("get", "/healthz", "/healthz", None),
        ("get", "/readyz", "/readyz", None),
        ("get", "/models", "/models", None),
        ("get", "/models/fraud", "/models/{name}", None),
        ("get", "/models/nope", "/models/{name}", None),
        ("post", "/models/fraud/predict", "/models/{name}/predict", {"instances": [row]}),
        ("post", "/models/fraud/predict", "/models/{name}/predict", {"instances": []}),
        ("post", "/models/fashion/activations", "/models/{name}/activations", {"instances": [img]}),
        ("get", "/models/fashion/layers", "/models/{name}/layers", None),
        ("post", "/v1/models/fraud:predict", "/v1/models/{name}:predict", {"instances": [row]}),
        ("get", "/v1/models/fraud", "/v1/models/{name}", None),
        ("post", "/v2/models/fraud/infer", "/v2/models/{name}/infer", v2),
        ("get", "/v2/models/fraud", "/v2/models/{name}", None),
        ("get", "/v2", "/v2", None),
        ("get", "/v2/health/ready", "/v2/health/ready", None),
    ]
    for method, url, template, body in calls:
        r = getattr(client, method)(url, json=body) if body is not None else client.get(url)
        op = doc["paths"][template][method]
        assert str(r.status_code) in op["responses"], (url, r.status_code, r.json)
        schema = op["responses"][str(r.status_code)]["content"]["application/json"]["schema"]
        jsonschema.validate(r.json, _resolve(doc, schema))
