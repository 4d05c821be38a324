"""Bare versions (a folder holding only model.keras) of models our pipeline did not train:
discovery, derived metadata, serving.yaml, checksums, limits, and every protocol with
inputs by name, integer inputs, regression and multi-output heads. Small Keras models
with random weights are built here; expected values come from Keras itself."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers as L  # noqa: E402

from service import create_app, model_file  # noqa: E402
from service.binary_tensors import decode_response, encode_request  # noqa: E402
from service.repository import FAILED, READY, ModelRepository  # noqa: E402
from service.runtime import Limits, ModelRuntime, bare_metadata  # noqa: E402


def _two_inputs() -> keras.Model:
    a = keras.Input((4,), name="numeric")
    b = keras.Input((3,), name="flags")
    h = L.Dense(4, activation="relu", name="dense")(a)
    merged = L.Concatenate(name="merge")([L.Add(name="residual")([a, h]), b])
    return keras.Model([a, b], L.Dense(1, activation="sigmoid", name="score")(merged))


def _text() -> keras.Model:
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    e = L.Embedding(20, 4, name="embed")(tokens)
    return keras.Model(
        tokens, L.Dense(3, activation="softmax", name="topic")(L.GRU(5, name="gru")(e))
    )


def _heads() -> keras.Model:
    x = keras.Input((5,), name="x")
    shared = L.Dense(5, activation="tanh", name="shared")
    z = shared(shared(x))
    return keras.Model(
        x, [L.Dense(1, activation="sigmoid", name="churn")(z), L.Dense(2, name="spend")(z)]
    )


def _regression() -> keras.Model:
    x = keras.Input((3,), name="features")
    return keras.Model(x, L.Dense(1, name="price")(L.Dense(4, activation="relu", name="h")(x)))


BUILDERS = {"pair": _two_inputs, "text": _text, "heads": _heads, "price": _regression}


def _bare(root: Path, name: str, model: keras.Model, version: int = 1) -> Path:
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    return folder


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("bare")
    models = {name: build() for name, build in BUILDERS.items()}
    for name, model in models.items():
        _bare(root, name, model)
    (root / "heads" / model_file.FILE_NAME).write_text(
        "outputs:\n  churn: {class_names: [stays, leaves], threshold: 0.4}\n"
    )
    return root, models


@pytest.fixture(scope="module")
def client(zoo):
    root, _ = zoo
    app = create_app(
        {"model_repository": str(root), "load_in_background": False, "poll_interval": 0}
    )
    return app.test_client()


def _rng_inputs(name: str, n: int = 3):
    rng = np.random.default_rng(7)
    if name == "pair":
        return {
            "numeric": rng.normal(size=(n, 4)).astype("float32"),
            "flags": rng.integers(0, 2, size=(n, 3)).astype("float32"),
        }
    if name == "text":
        return rng.integers(0, 20, size=(n, 6)).astype("int32")
    if name == "heads":
        return rng.normal(size=(n, 5)).astype("float32")
    return rng.normal(size=(n, 3)).astype("float32")


def _keras(models, name, x):
    out = models[name](x if not isinstance(x, dict) else [x["numeric"], x["flags"]])
    return [np.asarray(o) for o in keras.tree.flatten(out)]


def test_bare_versions_are_discovered_and_described(client):
    listed = {m["name"]: m for m in client.get("/models").json["models"]}
    assert set(listed) == set(BUILDERS)
    for entry in listed.values():
        (version,) = entry["versions"]
        assert version["status"] == READY and version["source"] == "bare"
        assert version["checksum"] == "unverified"
    pair = client.get("/models/pair").json["metadata"]
    assert [(i["name"], i["shape"], i["dtype"]) for i in pair["inputs"]] == [
        ("numeric", [4], "float32"),
        ("flags", [3], "float32"),
    ]
    assert pair["task"] == "binary_classification" and pair["checksum"] == "unverified"
    text = client.get("/models/text").json["metadata"]
    assert text["inputs"] == [
        {"name": "tokens", "shape": [None], "dtype": "int32", "kind": "sequence"}
    ]
    assert text["outputs"][0]["task"] == "multiclass_classification"
    heads = client.get("/models/heads").json["metadata"]
    assert heads["task"] == "multi_output"
    assert [(o["name"], o["task"]) for o in heads["outputs"]] == [
        ("churn", "binary_classification"),
        ("spend", "regression"),
    ]
    assert heads["outputs"][0]["class_names"] == ["stays", "leaves"]
    names = [row["name"] for row in heads["layers"]]
    assert names == ["x", "shared", "shared@1", "spend", "churn"] or set(names) == {
        "x",
        "shared",
        "shared@1",
        "spend",
        "churn",
    }
    assert client.get("/models/price").json["metadata"]["task"] == "regression"


def test_native_predictions_for_every_head(client, zoo):
    _, models = zoo
    x = _rng_inputs("pair", 2)
    rows = [{k: v[i].tolist() for k, v in x.items()} for i in range(2)]
    got = client.post("/models/pair/predict", json={"instances": rows}).json["predictions"]
    expected = _keras(models, "pair", x)[0][:, 0]
    assert [p["positive_probability"] for p in got] == pytest.approx(expected.tolist(), abs=1e-6)

    tokens = _rng_inputs("text", 2)
    got = client.post("/models/text/predict", json={"instances": tokens.tolist()}).json
    probs = _keras(models, "text", tokens)[0]
    assert [p["class_index"] for p in got["predictions"]] == probs.argmax(axis=1).tolist()
    assert list(got["predictions"][0]["probabilities"]) == ["0", "1", "2"]

    price = _rng_inputs("price", 2)
    got = client.post("/models/price/predict", json={"instances": price.tolist()}).json
    assert [p["value"] for p in got["predictions"]] == pytest.approx(
        _keras(models, "price", price)[0][:, 0].tolist(), abs=1e-6
    )

    heads = _rng_inputs("heads", 2)
    got = client.post("/models/heads/predict", json={"instances": heads.tolist()}).json
    churn, spend = _keras(models, "heads", heads)
    first = got["predictions"][0]["outputs"]
    assert first["churn"]["positive_probability"] == pytest.approx(float(churn[0, 0]), abs=1e-6)
    assert first["churn"]["threshold"] == 0.4 and first["churn"]["label"] in ("stays", "leaves")
    assert first["spend"]["value"] == pytest.approx(spend[0].tolist(), abs=1e-6)


def test_tf_serving_rows_and_columns_by_input_name(client, zoo):
    _, models = zoo
    x = _rng_inputs("pair", 3)
    expected = _keras(models, "pair", x)[0]
    rows = [{k: v[i].tolist() for k, v in x.items()} for i in range(3)]
    by_rows = client.post("/v1/models/pair:predict", json={"instances": rows}).json
    columns = {k: v.tolist() for k, v in x.items()}
    by_columns = client.post("/v1/models/pair:predict", json={"inputs": columns}).json
    np.testing.assert_allclose(by_rows["predictions"], expected, atol=1e-6)
    np.testing.assert_allclose(by_columns["outputs"], expected, atol=1e-6)
    meta = client.get("/v1/models/text/metadata").json
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["tokens"]["dtype"] == "DT_INT32"
    heads = client.post("/v1/models/heads:predict", json={"instances": [[0.1] * 5]}).json
    assert set(heads["predictions"][0]) == {"churn", "spend"}
    hidden = client.post(
        "/v1/models/pair:predict", json={"instances": rows[:1], "output_layers": ["merge"]}
    ).json["predictions"][0]
    assert set(hidden) == {"score", "merge"} and len(hidden["merge"]) == 7


def test_open_inference_protocol_one_tensor_per_input(client, zoo):
    _, models = zoo
    x = _rng_inputs("pair", 2)
    meta = client.get("/v2/models/pair").json
    assert [i["name"] for i in meta["inputs"]] == ["numeric", "flags"]
    assert {"score", "merge", "residual", "dense"} <= {o["name"] for o in meta["outputs"]}
    body = {
        "inputs": [  # in any order, by name
            {
                "name": "flags",
                "shape": [2, 3],
                "datatype": "FP32",
                "data": x["flags"].ravel().tolist(),
            },
            {"name": "numeric", "shape": [2, 4], "datatype": "FP32", "data": x["numeric"].tolist()},
        ],
        "outputs": [{"name": "score"}, {"name": "residual"}],
    }
    got = {o["name"]: o for o in client.post("/v2/models/pair/infer", json=body).json["outputs"]}
    np.testing.assert_allclose(
        got["score"]["data"], _keras(models, "pair", x)[0].ravel(), atol=1e-6
    )
    residual = keras.Model(models["pair"].inputs, models["pair"].get_layer("residual").output)
    np.testing.assert_allclose(
        got["residual"]["data"], np.asarray(residual([x["numeric"], x["flags"]])).ravel(), atol=1e-6
    )
    tokens = _rng_inputs("text", 2)
    assert client.get("/v2/models/text").json["inputs"][0]["datatype"] == "INT32"
    for datatype in ("INT32", "INT64"):
        tensor = {
            "name": "tokens",
            "shape": [2, 6],
            "datatype": datatype,
            "data": tokens.ravel().tolist(),
        }
        out = client.post("/v2/models/text/infer", json={"inputs": [tensor]}).json["outputs"][0]
        np.testing.assert_allclose(
            out["data"], _keras(models, "text", tokens)[0].ravel(), atol=1e-6
        )
    # binary tensor data: int32 tokens in, the GRU's hidden states and the output back
    request = {
        "inputs": [{"name": "tokens", "shape": [2, 6], "datatype": "INT32"}],
        "outputs": [{"name": "topic"}, {"name": "gru:sequence"}],
        "parameters": {"binary_data_output": True},
    }
    data, headers = encode_request(request, {"tokens": tokens})
    r = client.post("/v2/models/text/infer", data=data, headers=headers)
    _, arrays = decode_response(r.data, r.headers)
    assert arrays["gru:sequence"].shape == (2, 6, 5)
    gru = models["text"].get_layer("gru")
    last = np.asarray(keras.Model(models["text"].inputs, gru.output)(tokens))
    np.testing.assert_allclose(arrays["gru:sequence"][:, -1], last, atol=1e-5)


@pytest.mark.parametrize(
    "path,body,status,fragment",
    [
        (
            "/models/pair/predict",
            {"instances": [[1, 2, 3, 4]]},
            400,
            "expected an object keyed by input name",
        ),
        (
            "/models/pair/predict",
            {"instances": [{"numeric": [1, 2, 3, 4]}]},
            400,
            "missing inputs ['flags']",
        ),
        (
            "/models/pair/predict",
            {"instances": [{"numeric": [1] * 4, "flags": [0] * 3, "x": 1}]},
            400,
            "unknown inputs ['x']",
        ),
        ("/models/text/predict", {"instances": [[1.5, 2]]}, 400, "expected an integer id"),
        ("/models/text/predict", {"instances": [[1, 2], [3]]}, 400, "tokens"),
        ("/models/text/predict", {"instances": [[1, 2**40]]}, 400, "int32"),
        (
            "/v1/models/pair:predict",
            {"inputs": {"numeric": [[1] * 4]}},
            400,
            "missing inputs ['flags']",
        ),
        (
            "/v1/models/pair:predict",
            {"inputs": {"numeric": [[1] * 4], "flags": [[0] * 3] * 2}},
            400,
            "different batch sizes",
        ),
        (
            "/v2/models/pair/infer",
            {
                "inputs": [
                    {"name": "numeric", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ]
            },
            400,
            "missing input tensors ['flags']",
        ),
        (
            "/v2/models/pair/infer",
            {
                "inputs": [
                    {"name": "nope", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ]
            },
            400,
            "the inputs ['numeric', 'flags']",
        ),
        (
            "/v2/models/text/infer",
            {"inputs": [{"name": "tokens", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
            400,
            "takes integer ids",
        ),
        (
            "/v2/models/text/infer",
            {
                "inputs": [
                    {"name": "tokens", "shape": [1, 2], "datatype": "INT32", "data": [1, 2.5]}
                ]
            },
            400,
            "integer",
        ),
    ],
)
def test_bad_input_is_a_clear_400(client, path, body, status, fragment):
    r = client.post(path, json=body)
    assert r.status_code == status, r.json
    assert fragment in r.json["error"], r.json["error"]


def test_regression_has_no_class_counters(client):
    client.post("/models/price/predict", json={"instances": [[1, 2, 3]]})
    text = client.get("/metrics").get_data(as_text=True)
    assert not [
        line
        for line in text.splitlines()
        if "predictions_total" in line and 'model="price"' in line
    ]


def test_serving_yaml_checksum_is_verified(tmp_path):
    keras.utils.set_random_seed(1)
    folder = _bare(tmp_path, "price", _regression())
    digest = hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest()
    (tmp_path / "price" / model_file.FILE_NAME).write_text(
        f"versions:\n  1: {{sha256: {digest}}}\n"
    )
    _bare(tmp_path, "price", _regression(), version=2)  # a different file under the same record
    (tmp_path / "price" / model_file.FILE_NAME).write_text(
        f"versions:\n  1: {{sha256: {digest}}}\n  2: {{sha256: {digest}}}\n"
    )
    repo = ModelRepository(tmp_path, poll_interval=0)
    repo.load_now()
    assert repo.state("price", 1).status == READY
    assert repo.state("price", 1).describe()["checksum"] == "verified"
    failed = repo.state("price", 2)
    assert failed.status == FAILED and "checksum mismatch" in failed.reason
    assert "serving.yaml says sha256" in failed.reason


@pytest.mark.parametrize(
    "text,fragment",
    [
        (
            "inputs:\n  x: {kind: picture}\n",
            "inputs.x.kind: expected one of image, tabular, sequence, tensor. "
            "Received: kind='picture'",
        ),
        ("threshold: 2\n", "threshold: expected a number in (0, 1). Received: threshold=2"),
        ("colour: red\n", "unknown key 'colour'"),
        ("versions:\n  1: {sha256: abc}\n", "versions.1.sha256: expected 64 lowercase hex digits"),
        (
            "reference: ../../etc/passwd\n",
            "reference: expected a file name inside the model folder",
        ),
        ("task: clustering\n", "task: expected one of binary_classification"),
        ("[1, 2\n", "cannot be read as YAML"),
    ],
)
def test_an_invalid_serving_yaml_fails_the_model_with_a_clear_message(tmp_path, text, fragment):
    keras.utils.set_random_seed(1)
    _bare(tmp_path, "price", _regression())
    (tmp_path / "price" / model_file.FILE_NAME).write_text(text)
    repo = ModelRepository(tmp_path, poll_interval=0)
    repo.load_now()
    state = repo.state("price", 1)
    assert state.status == FAILED
    assert fragment in state.reason, state.reason
    assert state.reason.startswith("serving.yaml: ")


def test_serving_yaml_declares_images_features_and_classes(tmp_path):
    keras.utils.set_random_seed(2)
    image = keras.Input((8, 8, 1), name="scan")
    flat = L.Flatten(name="flat")(L.Conv2D(2, 3, activation="relu", name="conv")(image))
    _bare(tmp_path, "scan", keras.Model(image, L.Dense(2, activation="softmax", name="p")(flat)))
    (tmp_path / "scan" / model_file.FILE_NAME).write_text(
        "class_names: [healthy, lesion]\ninputs:\n  scan: {kind: image, value_range: [0, 255]}\n"
    )
    _bare(tmp_path, "price", _regression())
    (tmp_path / "price" / model_file.FILE_NAME).write_text(
        "inputs:\n  features: {features: [rooms, area, age]}\n"
    )
    client = create_app(
        {"model_repository": str(tmp_path), "load_in_background": False, "poll_interval": 0}
    ).test_client()
    meta = client.get("/models/scan").json["metadata"]
    assert meta["class_names"] == ["healthy", "lesion"]
    assert meta["inputs"][0]["value_range"] == [0.0, 255.0]
    too_bright = client.post("/models/scan/predict", json={"instances": [[[300] * 8] * 8]})
    assert too_bright.status_code == 400 and "[0, 255]" in too_bright.json["error"]
    named = client.post(
        "/models/price/predict", json={"instances": [{"rooms": 3, "area": 70, "age": 12}]}
    )
    assert named.status_code == 200, named.json
    assert client.get("/models/price").json["metadata"]["inputs"][0]["features"] == [
        "rooms",
        "area",
        "age",
    ]


def test_hot_reload_of_a_bare_version(tmp_path):
    keras.utils.set_random_seed(4)
    _bare(tmp_path, "price", _regression())
    repo = ModelRepository(tmp_path, poll_interval=0)
    repo.load_now()
    _bare(tmp_path, "price", _regression(), version=2)
    repo.refresh()
    assert repo.get("price").version == 2
    shutil.rmtree(tmp_path / "price" / "2")
    repo.refresh()
    assert repo.get("price").version == 1


def test_limits_refuse_large_models_and_string_inputs(tmp_path):
    keras.utils.set_random_seed(5)
    folder = _bare(tmp_path, "price", _regression())
    size = (folder / "model.keras").stat().st_size
    too_big = ModelRuntime(
        folder, bare_metadata(folder, "price", 1), limits=Limits(max_model_bytes=size - 1)
    )
    with pytest.raises(Exception, match="LAYERSCOPE_MAX_MODEL_BYTES"):
        too_big.load()
    many = ModelRuntime(
        folder, bare_metadata(folder, "price", 1), limits=Limits(max_model_params=10)
    )
    with pytest.raises(Exception, match=r"the model has 21 parameters, over the limit of 10"):
        many.load()
    text = keras.Input((1,), dtype="string", name="text")
    vectorize = L.StringLookup(vocabulary=["a", "b"], name="lookup")
    model = keras.Model(
        text, L.Dense(1, name="out")(L.Flatten()(L.Embedding(4, 2)(vectorize(text))))
    )
    folder = _bare(tmp_path, "strings", model)
    repo = ModelRepository(tmp_path, poll_interval=0)
    repo.load_now()
    state = repo.state("strings", 1)
    assert state.status == FAILED and "dtype string" in state.reason, state.reason
    assert repo.state("price", 1).status == READY  # one bad model does not stop the others


def test_a_large_model_serves_at_once_and_is_accelerated_in_the_background(tmp_path):
    """Above LAYERSCOPE_LITERT_SYNC_MAX_PARAMS the version is ready with TensorFlow, and
    LiteRT replaces its engines once converted and gated."""
    pytest.importorskip("ai_edge_litert")
    import time

    from service.serving import runtime_factory
    from service.settings import load_settings

    keras.utils.set_random_seed(6)
    folder = _bare(tmp_path, "price", _regression())
    make = runtime_factory(load_settings({"litert_sync_max_params": 10}))
    runtime = make(folder, bare_metadata(folder, "price", 1))
    runtime.load()
    assert runtime.ready and runtime._accelerate_later()  # 21 parameters > 10
    x = _rng_inputs("price", 4)
    expected = runtime.tensorflow.predict([x])[0]
    deadline = time.monotonic() + 120
    while runtime.accelerator.pending and time.monotonic() < deadline:
        np.testing.assert_allclose(runtime.raw_predict(x), expected, atol=1e-5)  # serving
        time.sleep(0.05)
    assert not runtime.accelerator.pending
    assert runtime.describe()["runtime"]["predict"] == "litert", runtime.describe()["runtime"]
    assert runtime.predictor is runtime.accelerator.predictor
    np.testing.assert_allclose(runtime.raw_predict(x), expected, atol=1e-5)
    small = runtime_factory(load_settings())(folder, bare_metadata(folder, "price", 1))
    small.load()  # under the limit: converted before it serves, as before
    assert (
        not small._accelerate_later()
        and not small.accelerator.pending
        and small.describe()["runtime"]["predict"] == "litert"
    )
