"""Introspection of bring-your-own Keras models: small models with random weights built
here (a functional CNN with a nested backbone, an Embedding + LSTM text model with int32
token inputs, a two-input residual tabular model, a regression model, a two-output model,
a subclassed model), each saved as a bare ``models/<name>/1/model.keras`` and served by
the app factory. Every expected value comes from Keras itself (sub-models, GradientTape)
or from numpy over Keras' outputs."""

from __future__ import annotations

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from service.introspection import pictures  # noqa: E402

from .byom_models import DIM, UNITS, save_zoo  # noqa: E402
from .byom_models import tokens as _tokens  # noqa: E402


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """{name: keras model} saved bare under a tmp repository; returns (root, models)."""
    root = tmp_path_factory.mktemp("byom")
    return root, save_zoo(root)


@pytest.fixture(scope="module")
def client(zoo):
    from service import create_app

    root, _ = zoo
    app = create_app(
        {"model_repository": str(root), "load_in_background": False, "poll_interval": 0}
    )
    app.testing = True
    return app.test_client()


def _ok(resp, status=200):
    assert resp.status_code == status, resp.get_data(as_text=True)[:800]
    return resp.get_json()


def _png(resp) -> Image.Image:
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == "image/png"
    img = Image.open(io.BytesIO(resp.data))
    img.load()
    assert img.format == "PNG"
    return img


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 16, 16, 3)).astype(np.float32)


# -- layer tables -----------------------------------------------------------------------------
def test_layer_tables_list_nested_layers_and_recurrent_states(client):
    cnn = _ok(client.get("/models/cnn/layers"))
    names = [r["name"] for r in cnn["layers"]]
    assert names[0] == "image"
    assert {"backbone/conv_a", "backbone/pool", "backbone/conv_b", "gap", "classes"} <= set(names)
    row = next(r for r in cnn["layers"] if r["name"] == "backbone/conv_b")
    assert row["parent"] == "backbone" and row["output_shape"] == [None, 8, 8, 6]
    assert row["params"] == 3 * 3 * 4 * 6 + 6 and row["filters"] == 6
    text = _ok(client.get("/models/text/layers"))
    rows = {r["name"]: r for r in text["layers"]}
    assert rows["lstm:sequence"]["output_shape"] == [None, None, UNITS]
    assert rows["lstm:sequence"]["derived"] == "sequence"
    assert rows["embedding"]["output_shape"] == [None, None, DIM]
    assert rows["positive"]["role"] == "output"


# -- activations and statistics ---------------------------------------------------------------
def test_nested_layer_activations_equal_keras(client, zoo):
    model = zoo[1]["cnn"]
    x = _images(2, 1)
    body = _ok(
        client.post(
            "/models/cnn/activations",
            json={"instances": x.tolist(), "layers": ["backbone/conv_a", "backbone/conv_b", "gap"]},
        )
    )
    backbone = model.get_layer("backbone")
    want_a = np.asarray(keras.Model(backbone.input, backbone.get_layer("conv_a").output)(x))
    want_b = np.asarray(backbone(x))
    got_a = np.array([i["layers"]["backbone/conv_a"]["values"] for i in body["instances"]])
    got_b = np.array([i["layers"]["backbone/conv_b"]["values"] for i in body["instances"]])
    np.testing.assert_allclose(got_a, want_a, atol=1e-5)
    np.testing.assert_allclose(got_b, want_b, atol=1e-5)
    probs = np.asarray(model(x))
    for inst, p in zip(body["instances"], probs, strict=True):
        assert inst["prediction"]["class_index"] == int(np.argmax(p))
        assert list(inst["prediction"]["probabilities"].values()) == pytest.approx(p, abs=1e-5)
    stats_b = body["instances"][0]["layers"]["backbone/conv_b"]["stats"]
    assert stats_b["mean"] == pytest.approx(float(want_b[0].mean()), abs=1e-5)
    unit_means = want_b[0].reshape(-1, 6).mean(axis=0)
    assert [t["unit"] for t in stats_b["top_k"]] == list(np.argsort(-unit_means, kind="stable")[:5])


def test_sequence_statistics_per_unit_over_time(client, zoo):
    model = zoo[1]["text"]
    x = _tokens(3, 2)
    body = _ok(
        client.post(
            "/models/text/activations",
            json={"instances": x.tolist(), "layers": ["lstm:sequence", "lstm", "embedding"]},
        )
    )
    twin = keras.layers.LSTM(UNITS, return_sequences=True)
    emb = model.get_layer("embedding")
    seq_in = emb(x)
    twin(seq_in)  # build
    twin.set_weights(model.get_layer("lstm").get_weights())
    want = np.asarray(twin(seq_in, mask=emb.compute_mask(x)))
    got = np.array([i["layers"]["lstm:sequence"]["values"] for i in body["instances"]])
    assert got.shape == (3, 7, UNITS)
    np.testing.assert_allclose(got, want, atol=1e-5)
    last = np.array([i["layers"]["lstm"]["values"] for i in body["instances"]])
    np.testing.assert_allclose(
        last, np.asarray(model.get_layer("lstm")(seq_in, mask=emb.compute_mask(x))), atol=1e-5
    )
    s = body["instances"][0]["layers"]["lstm:sequence"]["stats"]
    per_unit = want[0].mean(axis=0)
    assert [t["unit"] for t in s["top_k"]] == list(np.argsort(-per_unit, kind="stable")[:5])
    assert s["top_k"][0]["value"] == pytest.approx(float(per_unit.max()), abs=1e-5)
    assert body["inactive_rules"]["lstm:sequence"] == "|v| <= 0.01"  # the LSTM's tanh
    assert s["inactive_fraction"] == pytest.approx(np.mean(np.abs(want[0]) <= 0.01))
    prob = np.asarray(model(x))[:, 0]
    got_p = [i["prediction"]["positive_probability"] for i in body["instances"]]
    np.testing.assert_allclose(got_p, prob, atol=1e-5)


def test_reference_statistics_of_a_sequence_layer_reduce_time(client, zoo, runtimes_of):
    body = _ok(client.get("/models/text/layers/lstm:sequence/stats"))
    rt = runtimes_of("text")
    (tokens,), _ = rt.read_reference()
    acts = rt.activations(tokens, ["lstm:sequence"])["lstm:sequence"]
    assert body["samples"] == len(tokens) and body["units"] == UNITS
    flat = acts.reshape(-1, UNITS).astype(np.float64)
    np.testing.assert_allclose(body["per_unit"]["mean"], flat.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(body["per_unit"]["std"], flat.std(axis=0), atol=1e-6)
    np.testing.assert_allclose(body["per_unit"]["max"], flat.max(axis=0), atol=1e-6)
    active = (np.abs(acts) > 0.01).any(axis=1).mean(axis=0)  # tanh: |v| <= 0.01 is inactive
    assert body["inactive_rule"] == "|v| <= 0.01"
    np.testing.assert_allclose(body["per_unit"]["active_fraction"], active)


def test_multi_input_reference_statistics_and_samples(client, zoo):
    root, models = zoo
    ref = np.load(root / "two_in" / "1" / "reference.npz")
    body = _ok(client.get("/models/two_in/layers/add/stats"))
    model = models["two_in"]
    want = np.asarray(
        keras.Model(model.inputs, model.get_layer("add").output)([ref["account"], ref["usage"]])
    )
    assert body["samples"] == 40 and body["units"] == 8
    np.testing.assert_allclose(body["per_unit"]["mean"], want.mean(axis=0), atol=1e-5)
    assert body["dead_units"] == np.flatnonzero((want <= 0).all(axis=0)).tolist()
    samples = _ok(client.get("/models/two_in/samples?n=2&offset=3"))
    assert samples["total"] == 40 and samples["input"] is None
    assert [s["name"] for s in samples["inputs"]] == ["account", "usage"]
    first = samples["samples"][0]
    assert first["index"] == 3 and set(first["instance"]) == {"account", "usage"}
    np.testing.assert_allclose(first["instance"]["usage"], ref["usage"][3], rtol=1e-6)
    assert first["label"] in ("0", "1", "2")
    assert list(first["features"]["account"]) == ["x0", "x1", "x2", "x3"]
    # a sample row goes straight back into the activations endpoint
    again = _ok(
        client.post(
            "/models/two_in/activations",
            json={"instances": [first["instance"]], "layers": ["concat"], "include": ["values"]},
        )
    )
    row = np.concatenate([ref["account"][3], ref["usage"][3]])
    np.testing.assert_allclose(again["instances"][0]["layers"]["concat"]["values"], row, rtol=1e-6)
    tokens = _ok(client.get("/models/text/samples?n=2"))["samples"]
    assert tokens[0]["instance"] == _tokens(12, 1)[0].tolist() and tokens[1]["label"] == "positive"


def test_no_reference_sample_is_404_saying_how_to_add_one(client):
    msg = _ok(client.get("/models/reg/layers/hidden/stats"), 404)["error"]
    assert "'reg'" in msg and "reference.npz" in msg and "serving.yaml" in msg
    listing = _ok(client.get("/models/reg/samples"))  # nothing to list: empty, with why
    assert listing["total"] == 0 and listing["samples"] == []
    assert "reference.npz" in listing["reason"]


def test_regression_and_multi_output_predictions(client, zoo):
    x = np.random.default_rng(3).normal(size=(2, 5)).astype(np.float32)
    body = _ok(client.post("/models/reg/activations", json={"instances": x.tolist()}))
    want = np.asarray(zoo[1]["reg"](x))
    assert body["layers"] == ["hidden"]
    for inst, w in zip(body["instances"], want, strict=True):
        assert inst["prediction"]["value"] == pytest.approx(w.tolist(), abs=1e-5)
    y = np.random.default_rng(4).normal(size=(2, 6)).astype(np.float32)
    two = _ok(client.post("/models/two_out/activations", json={"instances": y.tolist()}))
    churn, spend = (np.asarray(v) for v in zoo[1]["two_out"](y))
    for i, inst in enumerate(two["instances"]):
        outs = inst["prediction"]["outputs"]
        assert outs["churn"]["positive_probability"] == pytest.approx(float(churn[i, 0]), abs=1e-5)
        assert outs["spend"]["value"] == pytest.approx(float(spend[i, 0]), abs=1e-5)


# -- pictures --------------------------------------------------------------------------------
def test_pictures_per_rank(client):
    one = {"instances": _images(1, 5).tolist()}
    grid = _png(client.post("/models/cnn/layers/backbone%2Fconv_b/picture.png", json=one))
    assert grid.size == pictures.grid_size(6)
    strip = _png(client.post("/models/cnn/layers/gap/picture.png", json=one))
    assert strip.size == pictures.strip_size(6)
    tokens = {"instances": _tokens(1, 6).tolist()}
    seq = _png(client.post("/models/text/layers/lstm:sequence/picture.png", json=tokens))
    assert seq.size == pictures.sequence_size(7, UNITS)
    emb = _png(client.post("/models/text/layers/embedding/picture.png", json=tokens))
    assert emb.size == pictures.sequence_size(7, DIM)
    rows = {"instances": np.zeros((3, 5)).tolist()}
    assert _png(client.post("/models/reg/layers/hidden/picture.png", json=rows)).size == (
        pictures.strip_size(8, 3)
    )
    two = {"instances": _tokens(2, 6).tolist()}
    msg = _ok(client.post("/models/text/layers/lstm:sequence/picture.png", json=two), 400)
    assert "one instance" in msg["error"] and "2" in msg["error"]


def test_sequence_heatmap_and_fallbacks():
    values = np.arange(12, dtype=np.float64).reshape(3, 4)
    img = np.asarray(Image.open(io.BytesIO(pictures.sequence_heatmap(values))))
    w, h = pictures.sequence_size(3, 4)
    assert img.shape == (h, w, 3)
    assert tuple(img[0, 0]) == (68, 1, 84) and tuple(img[-1, -1]) == (253, 231, 37)
    five = Image.open(io.BytesIO(pictures.layer_picture(np.random.rand(2, 3, 4, 5))))
    assert five.size == pictures.sequence_size(24, 5)
    wide = Image.open(io.BytesIO(pictures.heat_strip(np.random.rand(1, 10_000))))
    assert wide.size == (pictures.MAX_CELLS, pictures.STRIP_HEIGHT)


# -- attributions ----------------------------------------------------------------------------
def _manual_gradcam(model, x, cls):
    """Grad-CAM at backbone/conv_b by hand: the gradient of the class logit through Keras."""
    backbone = model.get_layer("backbone")
    head = model.get_layer("classes")
    with tf.GradientTape() as tape:
        feats = backbone(x)
        tape.watch(feats)
        logits = tf.matmul(model.get_layer("gap")(feats), head.kernel) + head.bias
        score = tf.gather(logits, cls, axis=1, batch_dims=1)
    grads = tape.gradient(score, feats)
    cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, (1, 2), keepdims=True) * feats, -1))
    cam = np.asarray(cam)
    return cam / np.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-30)


def test_gradcam_on_a_nested_layer_equals_a_hand_computation(client, zoo):
    model = zoo[1]["cnn"]
    x = _images(3, 8)
    body = _ok(client.post("/models/cnn/explain", json={"instances": x.tolist()}))
    assert body["method"] == "gradcam" and body["layer"] == "backbone/conv_b"
    assert body["image_input"] == "image" and body["output"] == "classes"
    predicted = np.argmax(np.asarray(model(x)), axis=1)
    want = _manual_gradcam(model, x, predicted)
    for inst, w, c in zip(body["instances"], want, predicted, strict=True):
        assert inst["class_index"] == c
        np.testing.assert_allclose(inst["heatmap"], w, atol=1e-4)
        assert np.asarray(inst["heatmap_input"]).shape == (16, 16)
    early = _ok(
        client.post(
            "/models/cnn/explain",
            json={"instances": x[:1].tolist(), "layer": "backbone/conv_a", "class": 2},
        )
    )
    assert early["layer"] == "backbone/conv_a" and early["instances"][0]["class_index"] == 2
    assert np.asarray(early["instances"][0]["heatmap"]).shape == (16, 16)
    msg = _ok(
        client.post("/models/cnn/explain", json={"instances": x[:1].tolist(), "layer": "gap"}), 400
    )["error"]
    assert "'gap'" in msg and "backbone/conv_b" in msg
    cam = _png(client.post("/models/cnn/explain.png", json={"instances": x[:1].tolist()}))
    assert cam.size == (pictures.OVERLAY, pictures.OVERLAY)


def _completeness(inst):
    c = inst["completeness"]
    assert c["f_x_minus_f_baseline"] == pytest.approx(c["f_x"] - c["f_baseline"], abs=1e-6)
    if abs(c["f_x_minus_f_baseline"]) > 1e-3:
        assert c["relative_error"] < 0.05 and c["within_5_percent"], c
    else:
        assert c["absolute_error"] < 1e-4, c
    return c


def test_integrated_gradients_on_token_embeddings(client, zoo):
    model = zoo[1]["text"]
    x = _tokens(4, 9)
    body = _ok(
        client.post(
            "/models/text/explain",
            json={"instances": x.tolist(), "class": "positive", "steps": 128},
        )
    )
    assert body["method"] == "integrated_gradients" and body["baseline"] == "zeros"
    assert body["embedding_baseline"] == "zeros"
    assert body["variables"] == [{"name": "embedding", "input": "tokens", "kind": "embedding"}]
    prob = np.asarray(model(x))[:, 0]
    emb = model.get_layer("embedding")
    # f(baseline): the model with the embedding output replaced by zeros, the mask kept
    zero = np.zeros((4, 7, DIM), np.float32)
    f_b = np.asarray(
        model.get_layer("positive")(model.get_layer("lstm")(zero, mask=emb.compute_mask(x)))
    )[:, 0]
    for i, inst in enumerate(body["instances"]):
        attr = np.asarray(inst["attributions"])
        assert attr.shape == (7,)  # one number per token
        c = _completeness(inst)
        assert c["f_x"] == pytest.approx(float(prob[i]), abs=1e-5)
        assert c["f_baseline"] == pytest.approx(float(f_b[i]), abs=1e-5)
        assert c["sum_of_attributions"] == pytest.approx(attr.sum(), abs=1e-5)
        if i % 2:  # padded (masked) positions cannot contribute
            np.testing.assert_allclose(attr[-2:], 0.0, atol=1e-7)
    custom = _ok(
        client.post(
            "/models/text/explain",
            json={"instances": x[:1].tolist(), "baseline": [1] * 7, "steps": 64},
        )
    )
    assert custom["baseline"] == "custom" and custom["embedding_baseline"] == "tokens"
    _completeness(custom["instances"][0])
    short = {"instances": x[:1].tolist(), "baseline": [1, 2, 3]}
    assert "baseline" in _ok(client.post("/models/text/explain", json=short), 400)["error"]
    bars = _png(client.post("/models/text/explain.png", json={"instances": x[:1].tolist()}))
    assert bars.size == (pictures.BAR_WIDTH, 7 * pictures.BAR_ROW)


def test_integrated_gradients_on_two_inputs(client, zoo):
    root, models = zoo
    ref = np.load(root / "two_in" / "1" / "reference.npz")
    rng = np.random.default_rng(10)
    rows = [
        {"account": rng.normal(size=4).tolist(), "usage": rng.normal(size=3).tolist()}
        for _ in range(3)
    ]
    body = _ok(client.post("/models/two_in/explain", json={"instances": rows, "class": 1}))
    assert body["baseline"] == "reference_mean"
    np.testing.assert_allclose(
        body["baseline_values"]["usage"], ref["usage"].mean(axis=0), rtol=1e-5
    )
    a = np.array([r["account"] for r in rows], np.float32)
    b = np.array([r["usage"] for r in rows], np.float32)
    prob = np.asarray(models["two_in"]([a, b]))[:, 1]
    for i, inst in enumerate(body["instances"]):
        assert set(inst["attributions"]) == {"account", "usage"}
        assert list(inst["attributions"]["account"]) == ["x0", "x1", "x2", "x3"]
        c = _completeness(inst)
        assert c["f_x"] == pytest.approx(float(prob[i]), abs=1e-5)
        total = sum(sum(v.values()) for v in inst["attributions"].values())
        assert c["sum_of_attributions"] == pytest.approx(total, abs=1e-5)
    bars = _png(client.post("/models/two_in/explain.png", json={"instances": rows[:1]}))
    assert bars.size == (pictures.BAR_WIDTH, 7 * pictures.BAR_ROW)
    msg = _ok(client.post("/models/two_in/explain", json={"instances": [[1, 2, 3]]}), 400)["error"]
    assert "account" in msg


def test_integrated_gradients_explain_a_regression_unit(client, zoo):
    x = np.random.default_rng(11).normal(size=(3, 5)).astype(np.float32)
    body = _ok(
        client.post("/models/reg/explain", json={"instances": x.tolist(), "unit": 1, "steps": 128})
    )
    assert body["output"] == "value" and "unit 1" in body["explained_function"]
    want = np.asarray(zoo[1]["reg"](x))[:, 1]
    base = np.asarray(zoo[1]["reg"](np.zeros((1, 5), np.float32)))[0, 1]
    for i, inst in enumerate(body["instances"]):
        assert inst["unit"] == 1 and inst["value"] == pytest.approx(float(want[i]), abs=1e-5)
        c = _completeness(inst)
        assert c["f_baseline"] == pytest.approx(float(base), abs=1e-5)
        assert inst["prediction"]["value"] == pytest.approx(
            np.asarray(zoo[1]["reg"](x))[i].tolist(), abs=1e-5
        )
    for bad, needle in (
        ({"unit": 2}, "unit"),
        ({"class": 0}, "unit"),
        ({"output": "nope"}, "value"),
    ):
        msg = _ok(
            client.post("/models/reg/explain", json={"instances": x[:1].tolist(), **bad}), 400
        )
        assert needle in msg["error"]
    msg = _ok(
        client.post("/models/reg/explain", json={"instances": x[:1].tolist(), "method": "gradcam"}),
        400,
    )["error"]
    assert "convolutional" in msg and "x (tabular)" in msg


def test_integrated_gradients_per_output(client, zoo):
    x = np.random.default_rng(12).normal(size=(2, 6)).astype(np.float32)
    churn, spend = (np.asarray(v) for v in zoo[1]["two_out"](x))
    body = _ok(
        client.post("/models/two_out/explain", json={"instances": x.tolist(), "output": "spend"})
    )
    assert body["output"] == "spend"
    for i, inst in enumerate(body["instances"]):
        assert inst["value"] == pytest.approx(float(spend[i, 0]), abs=1e-5)
        _completeness(inst)
    first = _ok(
        client.post("/models/two_out/explain", json={"instances": x.tolist(), "class": "positive"})
    )
    assert first["output"] == "churn"
    for i, inst in enumerate(first["instances"]):
        assert inst["label"] == "positive"
        assert inst["probability"] == pytest.approx(float(churn[i, 0]), abs=1e-5)
        assert inst["prediction"]["positive_probability"] == pytest.approx(
            float(churn[i, 0]), abs=1e-5
        )
        _completeness(inst)
    by_index = _ok(
        client.post("/models/two_out/explain", json={"instances": x.tolist(), "output": 1})
    )
    assert by_index["output"] == "spend"


# -- a model without a graph -----------------------------------------------------------------
SUBCLASSED_CALLS = [
    ("get", "/models/sub/layers", None),
    ("post", "/models/sub/activations", {"instances": [[0.0] * 5]}),
    ("post", "/models/sub/explain", {"instances": [[0.0] * 5]}),
    ("post", "/models/sub/explain.png", {"instances": [[0.0] * 5]}),
    ("post", "/models/sub/layers/0/picture.png", {"instances": [[0.0] * 5]}),
    ("get", "/models/sub/layers/0/stats", None),
    ("get", "/models/sub/samples", None),
]


@pytest.mark.parametrize(("method", "path", "body"), SUBCLASSED_CALLS)
def test_subclassed_model_introspection_is_422_saying_why(client, method, path, body):
    resp = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    msg = _ok(resp, 422)["error"]
    assert "'sub'" in msg and "subclassed" in msg and "Functional or Sequential" in msg


def test_subclassed_model_still_predicts(client, zoo):
    x = np.random.default_rng(13).normal(size=(2, 5)).astype(np.float32)
    body = _ok(client.post("/models/sub/predict", json={"instances": x.tolist()}))
    want = np.asarray(zoo[1]["sub"](x))
    # no graph: the softmax cannot be seen, so the output is served as raw values
    np.testing.assert_allclose([p["value"] for p in body["predictions"]], want, atol=1e-5)


@pytest.fixture(scope="module")
def runtimes_of(client):
    """Look a served runtime up by name (the one the app loaded)."""
    app = client.application

    def get(name):
        with app.app_context():
            return app.extensions["layerscope"].repository.get(name)

    return get


def test_gradcam_of_a_regression_unit_in_a_sequential_holding_a_backbone():
    """Library level: a Sequential around a functional backbone, a linear 2-unit head;
    Grad-CAM of unit 1 equals the hand computation (the gradient of the raw value)."""
    from service.introspection import attribution

    keras.utils.set_random_seed(5)
    inner = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="conv")(inner)
    backbone = keras.Model(inner, h, name="features")
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            backbone,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(2, name="head"),
        ]
    )
    x = np.random.default_rng(2).uniform(0, 1, (3, 12, 12, 3)).astype(np.float32)
    explainers = attribution.Explainers(model)
    assert explainers.spatial_layers() == ["features/conv", "features"]
    cam = explainers.gradcam()
    assert cam.layer == "features/conv"
    out = cam(x, np.full(3, -1, np.int32), unit=1)
    with tf.GradientTape() as tape:
        feats = backbone(x)
        tape.watch(feats)
        value = model.get_layer("head")(model.get_layer("gap")(feats))[:, 1]
    grads = tape.gradient(value, feats)
    want = np.asarray(
        tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, (1, 2), keepdims=True) * feats, -1))
    )
    want = want / np.maximum(want.max(axis=(1, 2), keepdims=True), 1e-30)
    np.testing.assert_allclose(out["cam"], want, atol=1e-5)
    np.testing.assert_allclose(out["probs"], np.asarray(model(x)), atol=1e-5)
    assert (out["class"] == 1).all()
    ig = explainers.integrated_gradients()(
        x, np.zeros((12, 12, 3), np.float32), np.full(3, -1, np.int32), steps=128, unit=1
    )
    delta = np.asarray(model(x))[:, 1] - np.asarray(model(np.zeros((1, 12, 12, 3))))[0, 1]
    np.testing.assert_allclose(ig["delta"], delta, atol=1e-5)
    assert (ig["relative_error"][np.abs(delta) > 1e-3] < 0.05).all()
    assert ig["attributions"].shape == x.shape
