"""Tokens, path validation, limits, logs and the container user."""

from __future__ import annotations

import logging
import os
import re
import shutil

import pytest

from .conftest import ADMIN_TOKEN, INTROSPECTION_TOKEN, make_app
from .helpers import ROOT, svc_factory

ROW = svc_factory.tabular_samples(1, seed=9)[0].tolist()
IMG = svc_factory.image_samples(1, seed=9)[0].tolist()
BEARER = {"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}
WRONG = {"Authorization": "Bearer not-the-token"}

# every endpoint that reveals model internals, with a valid request
PROTECTED = [
    ("get", "/models/fashion/layers", None),
    ("get", "/models/fashion/versions/1/layers", None),
    ("post", "/models/fashion/activations", {"instances": [IMG]}),
    ("post", "/models/fraud/versions/1/activations", {"instances": [ROW]}),
    ("get", "/models/fraud/layers/dense_1/stats", None),
    ("get", "/models/fraud/samples?n=2", None),
    ("post", "/models/fraud/explain", {"instances": [ROW], "steps": 8}),
    ("post", "/models/fashion/explain", {"instances": [IMG]}),
    ("post", "/models/fashion/layers/conv2d_1/picture.png", {"instances": [IMG]}),
    ("post", "/models/fashion/explain.png", {"instances": [IMG]}),
    ("post", "/v1/models/fraud:predict", {"instances": [ROW], "output_layers": ["dense_1"]}),
    (
        "post",
        "/v2/models/fraud/infer",
        {
            "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}],
            "outputs": [{"name": "dense_1"}],
        },
    ),
]


def _call(client, method, url, body, headers=None):
    if body is None:
        return getattr(client, method)(url, headers=headers or {})
    return getattr(client, method)(url, json=body, headers=headers or {})


@pytest.mark.parametrize("method,url,body", PROTECTED, ids=[u for _, u, _ in PROTECTED])
def test_introspection_token(secured_app, app, method, url, body):
    client = secured_app.test_client()
    r = _call(client, method, url, body)
    assert r.status_code == 401 and "Bearer" in r.json["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = _call(client, method, url, body, WRONG)
    assert r.status_code == 403 and r.json["error"]
    r = _call(client, method, url, body, {"Authorization": f"Basic {INTROSPECTION_TOKEN}"})
    assert r.status_code == 401
    assert _call(client, method, url, body, BEARER).status_code == 200
    assert _call(app.test_client(), method, url, body).status_code == 200  # no token: open


def test_prediction_and_ui_stay_public_with_an_introspection_token(secured_app):
    client = secured_app.test_client()
    assert client.post("/models/fraud/predict", json={"instances": [ROW]}).status_code == 200
    assert client.post("/v1/models/fraud:predict", json={"instances": [ROW]}).status_code == 200
    body = {
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}],
        "outputs": [{"name": "output"}],
    }
    assert client.post("/v2/models/fraud/infer", json=body).status_code == 200
    assert client.get("/ui").status_code == 200
    assert client.get("/ui/static/explorer.js").status_code == 200


@pytest.mark.parametrize("url", ["/models/fraud", "/models/fraud/versions/1"])
def test_model_metadata_lists_hidden_layers_only_with_the_token(secured_app, app, url):
    client = secured_app.test_client()
    hidden = app.test_client().get(url).json["metadata"]["hidden_layers"]
    assert hidden  # without a configured token everything is listed
    for headers in (None, WRONG):
        meta = client.get(url, headers=headers or {}).json["metadata"]
        assert "layers" not in meta and "hidden_layers" not in meta
        assert meta["input"] and meta["class_names"]  # what a client needs to predict
    meta = client.get(url, headers=BEARER).json["metadata"]
    assert meta["hidden_layers"] == hidden and meta["layers"]


def test_runtime_reasons_naming_a_layer_are_hidden_without_the_token(secured_app):
    """The LiteRT activations gate's reason names the failing hidden layer."""
    from service.api.native import REDACTED, public_metadata

    reason = "layer 'dense_1' differs by 5.9e-05"
    described = {"name": "m", "runtime": {"predict": "litert", "litert_activations_error": reason}}
    for headers, expected in (({}, REDACTED), (WRONG, REDACTED), (BEARER, reason)):
        with secured_app.test_request_context("/models/m", headers=headers):
            shown = public_metadata(described)["runtime"]
        assert shown == {"predict": "litert", "litert_activations_error": expected}
    assert described["runtime"]["litert_activations_error"] == reason  # not modified
    with secured_app.test_request_context("/models/m"):
        passed = {"runtime": {"litert_activations_error": None}}
        assert public_metadata(passed) == passed  # nothing to hide


def test_v2_metadata_lists_layer_outputs_only_with_the_token(secured_app, app):
    everything = [o["name"] for o in app.test_client().get("/v2/models/fraud").json["outputs"]]
    assert len(everything) > 1 and "dense_1" in everything
    client = secured_app.test_client()
    public = [o["name"] for o in client.get("/v2/models/fraud").json["outputs"]]
    assert public == everything[:1]  # the prediction output only
    allowed = [o["name"] for o in client.get("/v2/models/fraud", headers=BEARER).json["outputs"]]
    assert allowed == everything


def test_admin_api_is_off_without_a_token(app):
    client = app.test_client()
    for method, url in [("post", "/admin/reload"), ("get", "/admin/state")]:
        r = getattr(client, method)(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 404 and r.json["error"]


def test_admin_api_requires_the_bearer_token(secured_app):
    client = secured_app.test_client()
    for headers, code in [
        ({}, 401),
        ({"Authorization": ADMIN_TOKEN}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}, 403),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, 403),
        ({"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}, 403),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, 200),
    ]:
        r = client.get("/admin/state", headers=headers)
        assert r.status_code == code, (headers, r.json)
        if code != 200:
            assert set(r.json) == {"error"}


def test_token_is_compared_in_constant_time():
    """The comparison is hmac.compare_digest on bytes (a timing test would be flaky)."""
    import inspect

    from service import security

    source = inspect.getsource(security.check_bearer)
    assert "hmac.compare_digest(" in source and "==" not in source.split("compare_digest")[1]


def test_secrets_and_inputs_never_reach_the_logs(secured_app, caplog):
    marker = 98765.4321
    row = [marker] * 30
    client = secured_app.test_client()
    with caplog.at_level(logging.DEBUG):
        client.post("/models/fraud/predict", json={"instances": [row]}, headers=BEARER)
        client.post("/models/fraud/activations", json={"instances": [row]}, headers=BEARER)
        client.post("/models/fraud/predict?secret=qs-value", json={"instances": [["x"] * 30]})
        client.get("/admin/state", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        client.get("/admin/state", headers={"Authorization": "Bearer wrong-guess-123"})
    text = "\n".join(
        r.getMessage() + " " + repr({k: v for k, v in vars(r).items() if k != "msg"})
        for r in caplog.records
    )
    assert caplog.records, "expected access log lines"
    for secret in (ADMIN_TOKEN, INTROSPECTION_TOKEN, "wrong-guess-123", "98765.43", "qs-value"):
        assert secret not in text, secret
    settings = secured_app.extensions["layerscope"].settings
    assert ADMIN_TOKEN not in repr(settings) and ADMIN_TOKEN not in str(settings.model_dump())


@pytest.mark.parametrize(
    "url",
    [
        "/models/../predict",
        "/models/%2e%2e/predict",
        "/models/..%2fetc/predict",
        "/models/fraud%2f..%2f..%2fetc/predict",
        "/models/.admin-state.json/predict",
        "/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
        "/v2/models/fraud/versions/..%2F1/infer",
        "/v1/models/..:predict",
        "/models/fraud/versions/-1/predict",
        "/ui/static/..%2f..%2fsettings.py",
        "/ui/static/../../settings.py",
    ],
)
def test_path_traversal_in_names_is_a_json_404(app, url):
    r = app.test_client().post(url, json={"instances": [ROW]})
    if r.status_code == 405:  # GET-only routes
        r = app.test_client().get(url)
    assert r.status_code == 404, (url, r.status_code)
    assert r.is_json and r.json["error"]


def test_symlinks_leading_outside_the_repository_are_ignored(scratch_repo, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(scratch_repo / "fraud", outside / "fraud")
    os.symlink(outside / "fraud", scratch_repo / "evil")  # a model folder outside
    os.symlink(outside / "fraud" / "1", scratch_repo / "fraud" / "7")  # a version outside
    # a version folder inside whose model.keras points outside (same bytes, same checksum)
    v8 = scratch_repo / "fraud" / "8"
    shutil.copytree(scratch_repo / "fraud" / "1", v8)
    meta = (v8 / "metadata.json").read_text().replace('"version": 1', '"version": 8')
    (v8 / "metadata.json").write_text(meta)
    (v8 / "model.keras").unlink()
    os.symlink(outside / "fraud" / "1" / "model.keras", v8 / "model.keras")
    app = make_app(scratch_repo)
    client = app.test_client()
    models = {m["name"]: m for m in client.get("/models").json["models"]}
    assert "evil" not in models
    versions = {v["version"]: v for v in models["fraud"]["versions"]}
    assert 7 not in versions
    assert versions[8]["status"] == "failed" and "outside" in versions[8]["reason"]
    assert client.post("/models/fraud/predict", json={"instances": [ROW]}).json["version"] == 1


def test_limits_on_body_batch_and_activation_values(repo):
    app = make_app(repo, max_body_bytes=16384, max_batch_size=2, max_activation_values=100)
    client = app.test_client()
    r = client.post(
        "/models/fraud/predict", data=b"[" + b"0," * 9000 + b"0]", content_type="application/json"
    )
    assert r.status_code == 413 and "16384" in r.json["error"]
    r = client.post("/models/fraud/predict", json={"instances": [ROW] * 3})
    assert r.status_code == 400 and "maximum of 2" in r.json["error"]
    body = {"instances": [IMG], "include": ["values"]}
    r = client.post("/models/fashion/activations", json=body)
    assert r.status_code == 413 and "LAYERSCOPE_MAX_ACTIVATION_VALUES" in r.json["error"]
    r = client.post("/models/fashion/activations", json={"instances": [IMG], "include": ["stats"]})
    assert r.status_code == 200
    v2 = {
        "inputs": [{"name": "input", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": IMG}],
        "outputs": [{"name": "conv2d_1"}],
    }
    r = client.post("/v2/models/fashion/infer", json=v2)
    assert r.status_code == 413


def test_container_runs_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    runtime = text.split("AS serving", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # the user is made in the stage both images build on
    uid = re.search(r"useradd[^\n]*--uid (\d+)[^\n]*\n?[^\n]*" + users[-1].split(":")[0], text)
    assert uid and int(uid.group(1)) >= 1000
    assert runtime.index("USER") < runtime.index("ENTRYPOINT")
