"""TensorFlow Serving REST and Open Inference Protocol (V2), through the Flask test client."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import keras
import numpy as np
import pytest
import svc_factory
from PIL import Image

FEATURES = svc_factory.FEATURES
SPEC = Path("/work/shared/specs/open-inference-protocol/open_inference_rest.yaml")


def sub_model_outputs(model, x, names):
    """Keras' own sub-model outputs: the reference for layer values."""
    sub = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    out = sub(x, training=False)
    out = out if isinstance(out, list | tuple) else [out]
    return {n: np.asarray(v) for n, v in zip(names, out, strict=True)}


# -- TensorFlow Serving -----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/models/fraud", "/v1/models/fraud/versions/1"])
def test_tfs_status(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert r.json == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


@pytest.mark.parametrize(
    "path", ["/v1/models/fashion/metadata", "/v1/models/fashion/versions/1/metadata"]
)
def test_tfs_metadata(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert r.json["model_spec"] == {"name": "fashion", "signature_name": "", "version": "1"}
    sig = r.json["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = [d["size"] for d in sig["inputs"]["input"]["tensor_shape"]["dim"]]
    assert dims == ["-1", "28", "28", "1"]
    assert [d["size"] for d in sig["outputs"]["output"]["tensor_shape"]["dim"]] == ["-1", "10"]
    assert sig["method_name"] == "tensorflow/serving/predict"


def test_tfs_row_and_columnar(client, keras_models):
    x = svc_factory.tabular_samples(3, seed=11)
    expected = np.asarray(keras_models["fraud"](x, training=False))  # (3, 1)
    bodies = {
        "row": {"instances": x.tolist()},
        "row named": {
            "signature_name": "serving_default",
            "instances": [{"input": r} for r in x.tolist()],
        },
        "columnar": {"inputs": x.tolist()},
        "columnar named": {"inputs": {"input": x.tolist()}},
    }
    for label, body in bodies.items():
        for path in ("/v1/models/fraud:predict", "/v1/models/fraud/versions/1:predict"):
            r = client.post(path, json=body)
            assert r.status_code == 200, (label, r.json)
            key = "predictions" if "instances" in body else "outputs"
            assert list(r.json) == [key]
            got = np.array(r.json[key])
            assert got.shape == (3, 1)
            assert np.max(np.abs(got - expected)) <= 1e-5, label


def test_tfs_b64_image(client, keras_models):
    x = svc_factory.image_samples(1, seed=12)
    buf = io.BytesIO()
    Image.fromarray(x[0, :, :, 0].astype(np.uint8), "L").save(buf, "PNG")
    body = {"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}]}
    r = client.post("/v1/models/fashion:predict", json=body)
    assert r.status_code == 200, r.json
    expected = np.asarray(keras_models["fashion"](x, training=False))
    assert np.max(np.abs(np.array(r.json["predictions"]) - expected)) <= 1e-5


def test_tfs_output_layers_extension(client, keras_models):
    x = svc_factory.tabular_samples(2, seed=13)
    ref = sub_model_outputs(keras_models["fraud"], x, ["dense_1", "output"])
    r = client.post(
        "/v1/models/fraud:predict", json={"instances": x.tolist(), "output_layers": ["dense_1"]}
    )
    assert r.status_code == 200, r.json
    rows = r.json["predictions"]
    assert set(rows[0]) == {"output", "dense_1"}
    assert np.max(np.abs(np.array([p["dense_1"] for p in rows]) - ref["dense_1"])) <= 1e-5
    assert np.max(np.abs(np.array([p["output"] for p in rows]) - ref["output"])) <= 1e-5
    r = client.post(
        "/v1/models/fraud:predict", json={"inputs": x.tolist(), "output_layers": ["dense_1"]}
    )
    assert np.max(np.abs(np.array(r.json["outputs"]["dense_1"]) - ref["dense_1"])) <= 1e-5


TFS_ERRORS = [
    ("unknown model", "get", "/v1/models/nope", None, 404, "'nope'"),
    ("unknown version", "get", "/v1/models/fraud/versions/4", None, 404, "no version 4"),
    ("unknown model metadata", "get", "/v1/models/nope/metadata", None, 404, "'nope'"),
    (
        "predict unknown model",
        "post",
        "/v1/models/nope:predict",
        {"instances": [[0] * 30]},
        404,
        "'nope'",
    ),
    (
        "both formats",
        "post",
        "/v1/models/fraud:predict",
        {"instances": [[0] * 30], "inputs": [[0] * 30]},
        400,
        "exactly one of",
    ),
    ("neither format", "post", "/v1/models/fraud:predict", {"rows": []}, 400, "exactly one of"),
    (
        "bad signature",
        "post",
        "/v1/models/fraud:predict",
        {"signature_name": "classify", "instances": [[0] * 30]},
        400,
        "'classify'",
    ),
    (
        "wrong shape",
        "post",
        "/v1/models/fraud:predict",
        {"instances": [[0] * 3]},
        400,
        "30 numbers",
    ),
    ("columnar scalar", "post", "/v1/models/fraud:predict", {"inputs": 3}, 400, "batch array"),
    (
        "unknown output layer",
        "post",
        "/v1/models/fraud:predict",
        {"instances": [[0] * 30], "output_layers": ["dense_99"]},
        404,
        "available layers",
    ),
    (
        "output_layers not list",
        "post",
        "/v1/models/fraud:predict",
        {"instances": [[0] * 30], "output_layers": "dense_1"},
        400,
        "list of layer names",
    ),
]


@pytest.mark.parametrize(
    "method,path,body,status,fragment", [c[1:] for c in TFS_ERRORS], ids=[c[0] for c in TFS_ERRORS]
)
def test_tfs_errors(client, method, path, body, status, fragment):
    r = client.post(path, json=body) if method == "post" else client.get(path)
    assert r.status_code == status, r.json
    assert set(r.json) == {"error"} and fragment in r.json["error"], r.json


# -- Open Inference Protocol ------------------------------------------------------------------
def test_v2_server_metadata(client):
    for path in ("/v2", "/v2/"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.json["name"] == "layerscope" and isinstance(r.json["version"], str)
        assert isinstance(r.json["extensions"], list)


@pytest.mark.parametrize("path", ["/v2/models/fashion", "/v2/models/fashion/versions/1"])
def test_v2_model_metadata_lists_layers(client, path):
    r = client.get(path)
    assert r.status_code == 200
    md = r.json
    assert md["name"] == "fashion" and md["versions"] == ["1"] and md["platform"]
    assert md["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    outputs = {o["name"]: o for o in md["outputs"]}
    assert md["outputs"][0] == {"name": "output", "datatype": "FP32", "shape": [-1, 10]}
    assert outputs["conv2d_1"]["shape"] == [-1, 28, 28, 2]
    assert outputs["dense_1"]["shape"] == [-1, 6]


@pytest.mark.parametrize("path", ["/v2/models/fraud/ready", "/v2/models/fraud/versions/1/ready"])
def test_v2_model_ready(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.json == {"name": "fraud", "ready": True}


def test_v2_infer_spec_example(client, keras_models):
    """The spec's example request, adapted to this model's input (one input, UINT32)."""
    x = svc_factory.image_samples(2, seed=21)
    body = {
        "id": "42",
        "inputs": [
            {
                "name": "input",
                "shape": [2, 28, 28],
                "datatype": "UINT32",
                "data": x.astype(int).reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "output"}],
    }
    r = client.post("/v2/models/fashion/infer", json=body)
    assert r.status_code == 200, r.json
    assert r.json["id"] == "42"
    assert r.json["model_name"] == "fashion" and r.json["model_version"] == "1"
    (out,) = r.json["outputs"]
    assert out["name"] == "output" and out["shape"] == [2, 10] and out["datatype"] == "FP32"
    expected = np.asarray(keras_models["fashion"](x, training=False))
    assert np.max(np.abs(np.array(out["data"]).reshape(2, 10) - expected)) <= 1e-5


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT64", "INT32"])
@pytest.mark.parametrize("nested", [False, True])
def test_v2_infer_tabular_datatypes(client, keras_models, datatype, nested):
    x = svc_factory.tabular_samples(2, seed=22)
    if datatype.startswith("INT"):
        x = np.round(x)
    if datatype == "FP16":  # keep within the float16 range, at float16 precision
        x[:, 0] /= 100
        x = x.astype(np.float16).astype(np.float32)
    data = x.tolist() if nested else x.reshape(-1).tolist()
    body = {"inputs": [{"name": "input", "shape": [2, 30], "datatype": datatype, "data": data}]}
    r = client.post("/v2/models/fraud/versions/1/infer", json=body)
    assert r.status_code == 200, r.json
    assert "id" not in r.json
    (out,) = r.json["outputs"]
    expected = np.asarray(keras_models["fraud"](x, training=False))
    assert out["shape"] == [2, 1]
    assert np.max(np.abs(np.array(out["data"]) - expected.reshape(-1))) <= 1e-5


def test_v2_hidden_layer_outputs_match_keras(client, keras_models):
    x = svc_factory.image_samples(2, seed=23)
    names = ["conv2d_1", "dense_1", "output"]
    body = {
        "inputs": [
            {"name": "input", "shape": [2, 28, 28, 1], "datatype": "FP32", "data": x.tolist()}
        ],
        "outputs": [{"name": n} for n in names],
        "parameters": {"note": "x"},
    }
    r = client.post("/v2/models/fashion/infer", json=body)
    assert r.status_code == 200, r.json
    ref = sub_model_outputs(keras_models["fashion"], x, names)
    assert [o["name"] for o in r.json["outputs"]] == names
    for out in r.json["outputs"]:
        assert out["shape"] == list(ref[out["name"]].shape)
        got = np.array(out["data"]).reshape(out["shape"])
        assert np.max(np.abs(got - ref[out["name"]])) <= 1e-5, out["name"]


def test_v2_b64_bytes_input(client, keras_models):
    x = svc_factory.image_samples(1, seed=24)
    buf = io.BytesIO()
    Image.fromarray(x[0, :, :, 0].astype(np.uint8), "L").save(buf, "PNG")
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(buf.getvalue()).decode()],
            }
        ]
    }
    r = client.post("/v2/models/fashion/infer", json=body)
    assert r.status_code == 200, r.json
    expected = np.asarray(keras_models["fashion"](x, training=False))
    assert np.max(np.abs(np.array(r.json["outputs"][0]["data"]) - expected[0])) <= 1e-5


def _v2(shape=(1, 30), datatype="FP32", data=None, **extra):
    data = [0.0] * int(np.prod(shape)) if data is None else data
    return {
        "inputs": [{"name": "input", "shape": list(shape), "datatype": datatype, "data": data}],
        **extra,
    }


V2_ERRORS = [
    ("unknown model", "/v2/models/nope/infer", _v2(), 404, "'nope'"),
    ("unknown version", "/v2/models/fraud/versions/5/infer", _v2(), 404, "no version 5"),
    ("non-numeric version", "/v2/models/fraud/versions/abc/infer", _v2(), 404, "'abc'"),
    ("no inputs", "/v2/models/fraud/infer", {"id": "1"}, 400, "exactly one tensor"),
    ("two inputs", "/v2/models/fraud/infer", {"inputs": _v2()["inputs"] * 2}, 400, "got 2 tensors"),
    (
        "wrong input name",
        "/v2/models/fraud/infer",
        {"inputs": [{**_v2()["inputs"][0], "name": "x"}]},
        400,
        "'x'",
    ),
    (
        "missing field",
        "/v2/models/fraud/infer",
        {"inputs": [{"name": "input", "shape": [1, 30], "data": [0] * 30}]},
        400,
        "datatype",
    ),
    ("wrong shape", "/v2/models/fraud/infer", _v2(shape=(1, 29)), 400, "[n, 30]"),
    ("data count mismatch", "/v2/models/fraud/infer", _v2(data=[0.0] * 29), 400, "29 elements"),
    (
        "bad shape type",
        "/v2/models/fraud/infer",
        _v2(shape=(1, 30))
        | {"inputs": [{"name": "input", "shape": "1x30", "datatype": "FP32", "data": [0] * 30}]},
        400,
        "non-negative integers",
    ),
    (
        "unsupported datatype",
        "/v2/models/fraud/infer",
        _v2(datatype="BOOL"),
        400,
        "'BOOL' is not supported",
    ),
    (
        "bytes for tabular",
        "/v2/models/fraud/infer",
        _v2(datatype="BYTES", data=["x"]),
        400,
        "only accepted for image models",
    ),
    (
        "bytes undecodable",
        "/v2/models/fashion/infer",
        _v2(shape=(1,), datatype="BYTES", data=["aGVsbG8="]),
        400,
        "could not be decoded",
    ),
    (
        "int with fraction",
        "/v2/models/fraud/infer",
        _v2(datatype="INT32", data=[0.5] * 30),
        400,
        "INT32",
    ),
    (
        "uint8 overflow",
        "/v2/models/fashion/infer",
        _v2(shape=(1, 28, 28), datatype="UINT8", data=[256] * 784),
        400,
        "UINT8",
    ),
    ("non-numeric data", "/v2/models/fraud/infer", _v2(data=["a"] * 30), 400, "inputs[0].data[0]"),
    (
        "unknown output",
        "/v2/models/fraud/infer",
        _v2(outputs=[{"name": "dense_9"}]),
        400,
        "available outputs: output, normalization, dense_1",
    ),
    (
        "outputs malformed",
        "/v2/models/fraud/infer",
        _v2(outputs=["output"]),
        400,
        "list of objects",
    ),
    ("id not string", "/v2/models/fraud/infer", _v2(id=42), 400, "'id' must be a string"),
    ("batch too large", "/v2/models/fraud/infer", _v2(shape=(9, 30)), 400, "maximum of 8"),
]


@pytest.mark.parametrize(
    "path,body,status,fragment", [c[1:] for c in V2_ERRORS], ids=[c[0] for c in V2_ERRORS]
)
def test_v2_errors(client, path, body, status, fragment):
    r = client.post(path, json=body)
    assert r.status_code == status, r.json
    assert set(r.json) == {"error"} and fragment in r.json["error"], r.json["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/fraud/versions/3",
        "/v2/models/fraud/versions/3/ready",
    ],
)
def test_v2_get_404(client, path):
    r = client.get(path)
    assert r.status_code == 404 and set(r.json) == {"error"}


def test_v2_activation_cap_413(small_app):
    body = _v2(outputs=[{"name": "normalization"}], shape=(2, 30))
    r = small_app.test_client().post("/v2/models/fraud/infer", json=body)
    assert r.status_code == 413 and "60 values" in r.json["error"]


@pytest.mark.skipif(not SPEC.is_file(), reason="OIP spec not present")
def test_v2_responses_validate_against_spec_schema(client):
    """Responses validate against the OpenAPI schemas shipped with the spec."""
    import jsonschema
    import yaml

    spec = yaml.safe_load(SPEC.read_text())
    schemas = spec["components"]["schemas"]

    def check(instance, name):
        schema = {**schemas[name], "components": spec["components"]}
        jsonschema.validate(instance, schema)

    check(client.get("/v2").json, "metadata_server_response")
    check(client.get("/v2/models/fraud").json, "metadata_model_response")
    check(client.post("/v2/models/fraud/infer", json=_v2(id="7")).json, "inference_response")
    check(
        client.post("/v2/models/fraud/infer", json=_v2(datatype="BOOL")).json,
        "inference_error_response",
    )
