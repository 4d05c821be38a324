"""Own JSON API, health endpoints and the error contract, through the Flask test client."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import svc_factory
from PIL import Image

FEATURES = svc_factory.FEATURES


def png_b64(pixels: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8).reshape(pixels.shape[:2]), "L").save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def png_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    return base64.b64decode(png_b64(pixels, fmt))


def reference(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


# -- listing and metadata --------------------------------------------------------------------
def test_list_models(client):
    r = client.get("/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json["models"]}
    assert set(models) == {"fraud", "fashion"}
    for m in models.values():
        assert m["ready"] is True and m["default_version"] == 1
        assert m["versions"][0]["status"] == "ready"


@pytest.mark.parametrize("path", ["/models/fraud", "/models/fraud/versions/1"])
def test_tabular_metadata(client, path):
    r = client.get(path)
    assert r.status_code == 200
    md = r.json["metadata"]
    assert md["input"]["features"] == FEATURES
    assert md["class_names"] == ["legit", "fraud"]
    assert md["threshold"] == 0.3
    assert md["metrics"]["test"]["accuracy"] == 0.5
    names = [layer["name"] for layer in md["layers"]]
    assert names[:2] == ["input", "normalization"] and names[-1] == "output"
    assert "dense_1" in md["hidden_layers"]


def test_image_metadata(client):
    md = client.get("/models/fashion").json["metadata"]
    assert md["input"]["kind"] == "image" and md["input"]["shape"] == [28, 28, 1]
    assert len(md["class_names"]) == 10 and md["threshold"] is None


# -- predictions -------------------------------------------------------------------------------
def test_predict_tabular_objects_and_arrays(client, keras_models):
    x = svc_factory.tabular_samples(4, seed=5)
    as_objects = [dict(zip(FEATURES, row.tolist(), strict=True)) for row in x]
    expected = reference(keras_models["fraud"], x)[:, 0]
    for instances in (x.tolist(), as_objects):
        r = client.post("/models/fraud/predict", json={"instances": instances})
        assert r.status_code == 200, r.json
        assert r.json["model"] == "fraud" and r.json["version"] == 1
        preds = r.json["predictions"]
        got = np.array([p["fraud_probability"] for p in preds])
        assert np.max(np.abs(got - expected)) <= 1e-5
        for p, e in zip(preds, expected, strict=True):
            assert p["threshold"] == 0.3
            assert p["decision"] == ("fraud" if e >= 0.3 else "legit") == p["label"]
            assert p["probabilities"]["legit"] == pytest.approx(1 - e, abs=1e-5)
            assert p["score"] == pytest.approx(p["probabilities"][p["label"]])


def test_decision_uses_stored_threshold_not_half(client, keras_models):
    """Some sample lands between 0.3 and 0.5: argmax says legit, the threshold says fraud."""
    x = svc_factory.tabular_samples(64, seed=9)
    p = reference(keras_models["fraud"], x)[:, 0]
    between = np.flatnonzero((p >= 0.3) & (p < 0.5))
    assert between.size, "fixture model gives no probability in [0.3, 0.5)"
    r = client.post("/models/fraud/predict", json={"instances": x[between[:1]].tolist()})
    assert r.json["predictions"][0]["label"] == "fraud"


def test_versioned_predict(client):
    x = svc_factory.tabular_samples(1).tolist()
    r = client.post("/models/fraud/versions/1/predict", json={"instances": x})
    assert r.status_code == 200 and r.json["version"] == 1


@pytest.mark.parametrize("layout", ["28x28", "28x28x1", "b64png", "b64jpeg"])
def test_predict_image_layouts(client, keras_models, layout):
    x = svc_factory.image_samples(2, seed=3)
    if layout == "b64jpeg":  # JPEG is lossy: compare with what the decoder produced
        instances = [{"b64": png_b64(img, "JPEG")} for img in x]
        decoded = np.stack(
            [np.asarray(Image.open(io.BytesIO(png_bytes(img, "JPEG"))).convert("L")) for img in x]
        ).astype(np.float32)[..., None]
        x = decoded
    elif layout == "b64png":
        instances = [{"b64": png_b64(img)} for img in x]
    elif layout == "28x28":
        instances = x[..., 0].tolist()
    else:
        instances = x.tolist()
    r = client.post("/models/fashion/predict", json={"instances": instances})
    assert r.status_code == 200, r.json
    expected = reference(keras_models["fashion"], x)
    got = np.array([list(p["probabilities"].values()) for p in r.json["predictions"]])
    assert np.max(np.abs(got - expected)) <= 1e-5
    assert [p["class_index"] for p in r.json["predictions"]] == list(expected.argmax(1))
    assert r.json["predictions"][0]["label"] == svc_factory.FASHION[int(expected[0].argmax())]


def test_predict_multipart_upload(client, keras_models):
    x = svc_factory.image_samples(2, seed=4)
    data = {"image": [(io.BytesIO(png_bytes(img)), f"shoe{i}.png") for i, img in enumerate(x)]}
    r = client.post("/models/fashion/predict", data=data, content_type="multipart/form-data")
    assert r.status_code == 200, r.json
    got = np.array([list(p["probabilities"].values()) for p in r.json["predictions"]])
    assert np.max(np.abs(got - reference(keras_models["fashion"], x))) <= 1e-5


# -- health ----------------------------------------------------------------------------------
def test_health(client):
    assert client.get("/healthz").json["status"] == "alive"
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["models"] == {"fraud": True, "fashion": True}
    assert client.get("/v2/health/live").json == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json["ready"] is True


def test_readyz_503_with_empty_repository(tmp_path):
    from service import create_app

    app = create_app(
        {"model_repository": tmp_path, "poll_interval": 0, "load_in_background": False}
    )
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and "no model versions" in r.json["reason"]
    assert app.test_client().get("/v2/health/ready").status_code == 503
    assert app.test_client().get("/healthz").status_code == 200


# -- errors ------------------------------------------------------------------------------------
ROW = [0.0] * 30
GOOD_OBJ = dict.fromkeys(FEATURES, 0.0)
IMG = [[0] * 28 for _ in range(28)]


def _bad_png_size() -> str:
    return png_b64(np.zeros((27, 28, 1)))


def _gif() -> str:
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, "GIF")
    return base64.b64encode(buf.getvalue()).decode()


ERROR_CASES = [
    # (id, method, path, kwargs, status, fragments the message must contain)
    (
        "unknown model",
        "post",
        "/models/nope/predict",
        {"json": {"instances": [ROW]}},
        404,
        ["'nope'", "fashion, fraud"],
    ),
    (
        "unknown version",
        "post",
        "/models/fraud/versions/9/predict",
        {"json": {"instances": [ROW]}},
        404,
        ["no version 9", "available versions: 1"],
    ),
    ("unknown model metadata", "get", "/models/nope", {}, 404, ["'nope'"]),
    ("unknown version metadata", "get", "/models/fraud/versions/7", {}, 404, ["no version 7"]),
    ("unknown route", "get", "/nothing/here", {}, 404, ["no such endpoint"]),
    ("method not allowed", "get", "/models/fraud/predict", {}, 405, ["POST"]),
    (
        "malformed json",
        "post",
        "/models/fraud/predict",
        {"data": '{"instances": [', "content_type": "application/json"},
        400,
        ["malformed JSON"],
    ),
    (
        "empty body",
        "post",
        "/models/fraud/predict",
        {"data": "", "content_type": "application/json"},
        400,
        ["empty"],
    ),
    (
        "not an object",
        "post",
        "/models/fraud/predict",
        {"json": [ROW]},
        400,
        ["JSON object", "an array"],
    ),
    (
        "no instances key",
        "post",
        "/models/fraud/predict",
        {"json": {"rows": [ROW]}},
        400,
        ["'instances'", "rows"],
    ),
    (
        "instances not a list",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": 3}},
        400,
        ["array of instances"],
    ),
    ("empty batch", "post", "/models/fraud/predict", {"json": {"instances": []}}, 400, ["empty"]),
    (
        "batch too large",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [ROW] * 9}},
        400,
        ["9 instances", "maximum of 8"],
    ),
    (
        "wrong row length",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [ROW[:29]]}},
        400,
        ["instances[0]", "[29]", "30 numbers"],
    ),
    (
        "unknown feature",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [{**GOOD_OBJ, "Colour": 1}]}},
        400,
        ["unknown features ['Colour']"],
    ),
    (
        "missing feature",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [{k: v for k, v in GOOD_OBJ.items() if k != "V7"}]}},
        400,
        ["missing features ['V7']"],
    ),
    (
        "non-numeric feature",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [{**GOOD_OBJ, "Amount": "12 EUR"}]}},
        400,
        ["'Amount'", "'12 EUR'", "expected a number"],
    ),
    (
        "non-numeric array",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [[*ROW[:29], "x"]]}},
        400,
        ["instances[0][29]", "'x'"],
    ),
    (
        "boolean value",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [[True] * 30]}},
        400,
        ["boolean"],
    ),
    (
        "null value",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [[None] * 30]}},
        400,
        ["null"],
    ),
    (
        "NaN",
        "post",
        "/models/fraud/predict",
        {"data": '{"instances": [[NaN' + ", 0" * 29 + "]]}", "content_type": "application/json"},
        400,
        ["NaN", "not allowed"],
    ),
    (
        "Infinity",
        "post",
        "/models/fraud/predict",
        {
            "data": '{"instances": [[Infinity' + ", 0" * 29 + "]]}",
            "content_type": "application/json",
        },
        400,
        ["inf", "not allowed"],
    ),
    (
        "float32 overflow",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [[1e39] + ROW[1:]]}},
        400,
        ["float32 range"],
    ),
    (
        "instance of wrong type",
        "post",
        "/models/fraud/predict",
        {"json": {"instances": [5]}},
        400,
        ["instances[0]", "named features"],
    ),
    (
        "image wrong shape",
        "post",
        "/models/fashion/predict",
        {"json": {"instances": [[[0] * 27 for _ in range(28)]]}},
        400,
        ["instances[0]", "[28, 27]", "[28, 28, 1] or [28, 28]"],
    ),
    (
        "image ragged",
        "post",
        "/models/fashion/predict",
        {"json": {"instances": [[[0] * 28] * 27 + [[0] * 5]]}},
        400,
        ["ragged"],
    ),
    (
        "image non-numeric",
        "post",
        "/models/fashion/predict",
        {"json": {"instances": [[["a"] * 28] * 28]}},
        400,
        ["instances[0][0][0]", "'a'"],
    ),
    (
        "pixel out of range",
        "post",
        "/models/fashion/predict",
        {"json": {"instances": [[[300] * 28] * 28]}},
        400,
        ["[300, 300]", "[0, 255]"],
    ),
    (
        "b64 not base64",
        "post",
        "/models/fashion/predict",
        {"json": {"instances": [{"b64": "***"}]}},
        400,
        ["not valid base64"],
    ),
    (
        "b64 undecodable",
        "post",
        "/models/fashion/predict",
        {"json": {"instances": [{"b64": base64.b64encode(b"hello world").decode()}]}},
        400,
        ["could not be decoded", "PNG or JPEG"],
    ),
    (
        "b64 wrong size",
        "post",
        "/models/fashion/predict",
        {"json": {"instances": [{"b64": _bad_png_size()}]}},
        400,
        ["28x27", "exactly 28x28"],
    ),
    (
        "b64 gif",
        "post",
        "/models/fashion/predict",
        {"json": {"instances": [{"b64": _gif()}]}},
        400,
        ["GIF", "PNG or JPEG"],
    ),
    (
        "image object wrong keys",
        "post",
        "/models/fashion/predict",
        {"json": {"instances": [{"png": "x"}]}},
        400,
        ["['png']", "b64"],
    ),
    (
        "multipart without image field",
        "post",
        "/models/fashion/predict",
        {"data": {"file": (io.BytesIO(b"x"), "a.png")}, "content_type": "multipart/form-data"},
        400,
        ["'image'", "file"],
    ),
    (
        "multipart undecodable",
        "post",
        "/models/fashion/predict",
        {
            "data": {"image": (io.BytesIO(b"not an image"), "a.png")},
            "content_type": "multipart/form-data",
        },
        400,
        ["'a.png'", "could not be decoded"],
    ),
    (
        "multipart to tabular model",
        "post",
        "/models/fraud/predict",
        {"data": {"image": (io.BytesIO(b"x"), "a.png")}, "content_type": "multipart/form-data"},
        415,
        ["only accepted by image models"],
    ),
    (
        "wrong content type",
        "post",
        "/models/fraud/predict",
        {"data": "instances=1", "content_type": "application/x-www-form-urlencoded"},
        415,
        ["application/x-www-form-urlencoded", "application/json"],
    ),
    (
        "text content type",
        "post",
        "/models/fashion/predict",
        {"data": "{}", "content_type": "text/plain"},
        415,
        ["text/plain", "multipart"],
    ),
]


@pytest.mark.parametrize(
    "method,path,kwargs,status,fragments",
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_errors(client, method, path, kwargs, status, fragments):
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.is_json and set(r.json) == {"error"}
    for fragment in fragments:
        assert fragment in r.json["error"], r.json["error"]


def test_body_too_large_413(small_app):
    client = small_app.test_client()
    r = client.post("/models/fraud/predict", json={"instances": [[0.123456789] * 30] * 20})
    assert r.status_code == 413
    assert "limit is 4096 bytes" in r.json["error"]


def test_multipart_too_large_413(small_app):
    client = small_app.test_client()
    data = {"image": (io.BytesIO(b"\0" * 10000), "big.png")}
    r = client.post("/models/fashion/predict", data=data, content_type="multipart/form-data")
    assert r.status_code == 413 and "error" in r.json


def test_multipart_batch_limit(small_app):
    client = small_app.test_client()
    img = png_bytes(np.zeros((28, 28, 1)))
    data = {"image": [(io.BytesIO(img), f"{i}.png") for i in range(3)]}
    r = client.post("/models/fashion/predict", data=data, content_type="multipart/form-data")
    assert r.status_code == 400 and "maximum of 2" in r.json["error"]
