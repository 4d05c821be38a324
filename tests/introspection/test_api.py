"""The introspection endpoints through the Flask test client, against real tiny models."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
from PIL import Image

from service.introspection import pictures

from .helpers import FEATURES, last_conv, patch_images, transactions


def _app(repo, **extra):
    from service import create_app

    app = create_app(
        {"model_repository": str(repo), "load_in_background": False, "poll_interval": 0, **extra}
    )
    app.testing = True
    return app


@pytest.fixture(scope="module")
def client(repo):
    return _app(repo).test_client()


@pytest.fixture(scope="module")
def images():
    x, y, quad = patch_images(8, seed=11)
    return x, y, quad


@pytest.fixture(scope="module")
def rows():
    return transactions(4, seed=12)[0]


def _ok(resp, status=200):
    assert resp.status_code == status, resp.get_data(as_text=True)[:500]
    return resp.get_json()


@pytest.mark.parametrize("path", ["/models/patch/layers", "/models/patch/versions/1/layers"])
def test_layer_table(client, path):
    body = _ok(client.get(path))
    table = {r["name"]: r for r in body["layers"]}
    assert [r["index"] for r in body["layers"]] == list(range(len(body["layers"])))
    conv = table["conv2d_1"]
    assert (conv["type"], conv["activation"], conv["filters"], conv["hidden"]) == (
        "Conv2D",
        "relu",
        4,
        True,
    )
    assert conv["output_shape"] == [None, 28, 28, 4]
    assert conv["params"] == 3 * 3 * 1 * 4 + 4
    assert table["dense_1"]["units"] == 16
    assert not table["rescaling"]["hidden"] and not table["output"]["hidden"]
    assert body["hidden_layers"] == [r["name"] for r in body["layers"] if r["hidden"]]


def test_activations_default_is_every_hidden_layer_and_equals_keras(client, repo, rows):
    body = _ok(client.post("/models/txn/activations", json={"instances": rows.tolist()}))
    model = keras.saving.load_model(repo / "txn" / "1" / "model.keras", safe_mode=True)
    hidden = [r["name"] for r in _ok(client.get("/models/txn/layers"))["layers"] if r["hidden"]]
    assert body["layers"] == hidden and body["version"] == 1
    for name in hidden:
        want = np.asarray(keras.Model(model.inputs, model.get_layer(name).output)(rows))
        got = np.array([inst["layers"][name]["values"] for inst in body["instances"]])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert body["instances"][0]["layers"][name]["shape"] == list(want.shape[1:])
    first = body["instances"][0]["layers"]["dense_1"]
    values = np.asarray(first["values"])
    assert first["stats"]["inactive_fraction"] == pytest.approx(np.mean(values <= 0))
    assert first["stats"]["mean"] == pytest.approx(values.mean(), abs=1e-6)
    prob = np.asarray(model(rows))[:, 0]
    got_prob = [inst["prediction"]["positive_probability"] for inst in body["instances"]]
    np.testing.assert_allclose(got_prob, prob, atol=1e-5)


def test_layers_by_name_and_index_stats_only(client, images):
    x = images[0][:2]
    body = _ok(
        client.post(
            "/models/patch/versions/1/activations",
            json={
                "instances": x.tolist(),
                "layers": ["conv2d_2", 1],
                "include": ["stats"],
                "top_k": 3,
            },
        )
    )
    assert body["layers"] == ["conv2d_2", "rescaling"]
    layer = body["instances"][1]["layers"]["conv2d_2"]
    assert layer["shape"] == [14, 14, 8] and "values" not in layer
    assert len(layer["stats"]["top_k"]) == 3
    assert body["inactive_rules"]["conv2d_2"] == "v <= 0"


def test_unknown_layer_is_404_listing_the_layers(client, rows):
    resp = client.post(
        "/models/txn/activations", json={"instances": rows.tolist(), "layers": ["dense_9"]}
    )
    msg = _ok(resp, 404)["error"]
    assert "'dense_9'" in msg and "dense_1" in msg and "output" in msg
    msg = _ok(
        client.post("/models/txn/activations", json={"instances": rows.tolist(), "layers": [99]}),
        404,
    )["error"]
    assert "99" in msg and "dense_1" in msg
    assert _ok(client.get("/models/txn/layers/nope/stats"), 404)["error"].count("dense_1") == 1


def test_value_cap_is_413_with_a_stats_hint(repo, images):
    client = _app(repo, max_activation_values=1000).test_client()
    x = images[0][:1].tolist()
    msg = _ok(client.post("/models/patch/activations", json={"instances": x}), 413)["error"]
    assert "1000" in msg and '"include": ["stats"]' in msg
    body = _ok(
        client.post("/models/patch/activations", json={"instances": x, "include": ["stats"]})
    )
    assert "values" not in body["instances"][0]["layers"]["conv2d_1"]


BAD = [
    ({"instances": [[1, 2]]}, "30 numbers"),
    ({"rows": []}, "instances"),
    ({"instances": "x"}, "array"),
    ({"layers": {}}, "layers"),
    ({"layers": [True]}, "layers[0]"),
    ({"layers": []}, "layers"),
    ({"include": ["pixels"]}, "include"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": "many"}, "top_k"),
]


@pytest.mark.parametrize(("patch", "needle"), BAD)
def test_bad_activation_requests_are_400(client, rows, patch, needle):
    body = {"instances": rows[:1].tolist(), **patch}
    body = {k: v for k, v in body.items() if not (k == "instances" and "rows" in patch)}
    msg = _ok(client.post("/models/txn/activations", json=body), 400)["error"]
    assert needle in msg


def test_malformed_json_and_wrong_type(client):
    assert _ok(
        client.post("/models/txn/activations", data="{nope", content_type="application/json"), 400
    )["error"]
    assert _ok(client.post("/models/txn/activations", data="x", content_type="text/plain"), 415)[
        "error"
    ]
    assert _ok(client.post("/models/nope/activations", json={"instances": []}), 404)["error"]


BAD_EXPLAIN = [
    ({"method": "shap"}, "method"),
    ({"class": 7}, "class"),
    ({"class": "fraudish"}, "class"),
    ({"class": [1, 0, 1]}, "class"),
    ({"steps": 0}, "steps"),
    ({"baseline": "median"}, "baseline"),
    ({"baseline": [1, 2]}, "baseline"),
    ({"method": "gradcam"}, "convolutional"),
]


@pytest.mark.parametrize(("patch", "needle"), BAD_EXPLAIN)
def test_bad_explain_requests_are_400(client, rows, patch, needle):
    body = {"instances": rows[:1].tolist(), **patch}
    assert needle in _ok(client.post("/models/txn/explain", json=body), 400)["error"]


def test_gradcam_on_a_flat_layer_is_400(client, images):
    body = {"instances": images[0][:1].tolist(), "layer": "dense_1"}
    assert "dense_1" in _ok(client.post("/models/patch/explain", json=body), 400)["error"]


def test_explain_gradcam(client, images):
    x, y, quad = images
    pick = np.flatnonzero(y == 1)
    body = _ok(client.post("/models/patch/explain", json={"instances": x[pick].tolist()}))
    assert body["method"] == "gradcam" and body["layer"] == last_conv()
    for inst, q in zip(body["instances"], quad[pick], strict=True):
        assert inst["label"] == "patch"
        heat = np.asarray(inst["heatmap_input"])
        mass = [
            heat[:14, :14].sum(),
            heat[:14, 14:].sum(),
            heat[14:, :14].sum(),
            heat[14:, 14:].sum(),
        ]
        assert int(np.argmax(mass)) == q
    chosen = _ok(
        client.post(
            "/models/patch/explain",
            json={"instances": x[:1].tolist(), "class": "empty", "layer": "conv2d_1"},
        )
    )
    assert chosen["layer"] == "conv2d_1" and chosen["instances"][0]["class_index"] == 0
    assert np.asarray(chosen["instances"][0]["heatmap"]).shape == (28, 28)


def test_explain_integrated_gradients_reports_completeness(client, repo):
    x = transactions(16, seed=13)[0]
    body = _ok(
        client.post(
            "/models/txn/explain", json={"instances": x.tolist(), "class": "fraud", "steps": 64}
        )
    )
    assert body["method"] == "integrated_gradients" and body["baseline"] == "reference_mean"
    ref = np.load(repo / "txn" / "1" / "reference.npz")["x"]
    np.testing.assert_allclose(body["baseline_values"], ref.mean(axis=0), rtol=1e-5)
    for inst in body["instances"]:
        c = inst["completeness"]
        assert list(inst["attributions"]) == FEATURES
        assert c["sum_of_attributions"] == pytest.approx(
            sum(inst["attributions"].values()), abs=1e-5
        )
        assert c["f_x_minus_f_baseline"] == pytest.approx(c["f_x"] - c["f_baseline"], abs=1e-6)
        if abs(c["f_x_minus_f_baseline"]) > 0.05:
            assert c["relative_error"] < 0.05 and c["within_5_percent"]
    zeros = _ok(
        client.post(
            "/models/txn/explain",
            json={"instances": x[:1].tolist(), "baseline": "zeros", "class": 1},
        )
    )
    assert zeros["baseline"] == "zeros"
    named = dict(zip(FEATURES, x[0].tolist(), strict=True))
    custom = _ok(
        client.post("/models/txn/explain", json={"instances": x[:1].tolist(), "baseline": named})
    )
    assert custom["instances"][0]["completeness"]["f_x_minus_f_baseline"] == pytest.approx(0)


def test_integrated_gradients_on_an_image_model(client, images):
    x = images[0][1:2]
    body = _ok(
        client.post(
            "/models/patch/explain",
            json={"instances": x.tolist(), "method": "integrated_gradients", "steps": 32},
        )
    )
    assert body["baseline"] == "zeros" and body["steps"] == 32
    inst = body["instances"][0]
    attr = np.asarray(inst["attributions"])
    assert attr.shape == (28, 28, 1)
    assert inst["completeness"]["sum_of_attributions"] == pytest.approx(attr.sum(), rel=1e-4)


def test_reference_stats_endpoint(client, runtimes):
    body = _ok(client.get("/models/txn/layers/dense_1/stats"))
    rt = runtimes["txn"]
    ref = np.load(rt.path / "reference.npz")["x"]
    acts = rt.activations(ref, ["dense_1"])["dense_1"]
    never = np.flatnonzero((acts <= 0).all(axis=0))
    assert body["samples"] == len(ref) and body["units"] == acts.shape[1]
    assert body["dead_units"] == never.tolist()
    assert body["dead_fraction"] == pytest.approx(len(never) / acts.shape[1])
    np.testing.assert_allclose(body["per_unit"]["mean"], acts.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(body["per_unit"]["active_fraction"], (acts > 0).mean(axis=0))
    conv = _ok(client.get("/models/patch/versions/1/layers/1/stats"))  # by index
    assert conv["layer"] == "rescaling" and conv["units"] == 1
    assert _ok(client.get("/models/patch/layers/conv2d_1/stats"))["units"] == 4


def test_samples(client):
    body = _ok(client.get("/models/txn/samples?n=3"))
    assert len(body["samples"]) == 3 and body["total"] == 128
    assert list(body["samples"][0]["features"]) == FEATURES
    assert body["samples"][0]["label"] in ("legit", "fraud")
    img = _ok(client.get("/models/patch/samples?n=2&offset=1"))
    assert [s["index"] for s in img["samples"]] == [1, 2]
    assert np.asarray(img["samples"][0]["instance"]).shape == (28, 28, 1)
    assert "n" in _ok(client.get("/models/txn/samples?n=0"), 400)["error"]


def _png(resp) -> Image.Image:
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "image/png"
    img = Image.open(io.BytesIO(resp.data))
    img.load()
    return img


def test_png_endpoints(client, images, rows):
    one = {"instances": images[0][1:2].tolist()}
    grid = _png(client.post("/models/patch/layers/conv2d_2/picture.png", json=one))
    assert grid.size == pictures.grid_size(8)
    strip = _png(client.post("/models/patch/layers/dense_1/picture.png", json=one))
    assert strip.size == pictures.strip_size(16)
    rows3 = _png(
        client.post(
            "/models/txn/versions/1/layers/dense_1/picture.png",
            json={"instances": rows[:3].tolist()},
        )
    )
    units = _ok(client.get("/models/txn/layers"))["layers"][2]["units"]  # dense_1
    assert rows3.size == pictures.strip_size(units, 3)
    cam = _png(client.post("/models/patch/explain.png", json=one))
    assert cam.size == (pictures.OVERLAY, pictures.OVERLAY)
    bars = _png(client.post("/models/txn/explain.png", json={"instances": rows[:1].tolist()}))
    assert bars.size == (pictures.BAR_WIDTH, 30 * pictures.BAR_ROW)
    two = {"instances": images[0][:2].tolist()}
    assert (
        "one instance"
        in _ok(client.post("/models/patch/layers/conv2d_1/picture.png", json=two), 400)["error"]
    )


def test_picture_from_a_multipart_upload(client, images):
    buf = io.BytesIO()
    Image.fromarray(images[0][1, :, :, 0].astype(np.uint8), "L").save(buf, format="PNG")
    resp = client.post(
        "/models/patch/explain.png?class=patch",
        data={"image": (io.BytesIO(buf.getvalue()), "x.png")},
        content_type="multipart/form-data",
    )
    assert _png(resp).size == (pictures.OVERLAY, pictures.OVERLAY)


def test_oip_outputs_layer_equals_native_activations(client, rows):
    native = _ok(
        client.post(
            "/models/txn/activations", json={"instances": rows.tolist(), "layers": ["dense_1"]}
        )
    )
    want = np.array([inst["layers"]["dense_1"]["values"] for inst in native["instances"]])
    v2 = client.post(
        "/v2/models/txn/infer",
        json={
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.reshape(-1).tolist(),
                }
            ],
            "outputs": [{"name": "dense_1"}],
        },
    )
    if v2.status_code == 404:
        pytest.skip("the V2 infer endpoint is not available")
    out = _ok(v2)["outputs"]
    assert [o["name"] for o in out] == ["dense_1"]
    assert out[0]["shape"] == list(want.shape)
    np.testing.assert_allclose(np.reshape(out[0]["data"], want.shape), want, atol=1e-6)


def test_explorer_page_is_served(client):
    resp = client.get("/ui")
    assert resp.status_code == 200 and b"<canvas" in resp.data
    assert client.get("/ui/static/explorer.js").status_code == 200
