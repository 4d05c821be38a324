"""Open Inference Protocol binary tensor data extension (service/binary_tensors.py) on
``POST /v2/models/{name}/infer``: through the Flask test client and a real Gunicorn.

Binary inputs give the same results as JSON inputs, binary outputs decode to the JSON
values (hidden layers too), every malformed body is a 400 naming the problem, and the
client helpers round-trip every datatype."""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass

import numpy as np
import pytest
import requests
import svc_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from bench.server import LayerscopeServer
from service import binary_tensors as bt
from service import create_app

HEADER = bt.HEADER
TRANSPORTS = ["flask", "gunicorn"]


# -- transports ------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    @property
    def json(self) -> dict:
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        return json.loads(self.body)

    def decoded(self) -> tuple[dict, dict]:
        assert self.status == 200, self.body[:300]
        return bt.decode_response(self.body, self.headers)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """A real Gunicorn (service/entrypoint.sh) serving the session repository."""
    tmp = tmp_path_factory.mktemp("v2-binary")
    env = {
        "LAYERSCOPE_MAX_BATCH_SIZE": "8",
        "LAYERSCOPE_POLL_INTERVAL": "0",
        "LAYERSCOPE_LOG_LEVEL": "warning",
    }
    srv = LayerscopeServer(repo, tmp, workers=2, threads=2, env=env)
    srv.start()
    try:
        srv.wait_workers_ready(timeout=300)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=TRANSPORTS)
def post(request, app):
    """post(path, data=bytes | json=obj, headers=...) -> Reply, via Flask or Gunicorn."""
    if request.param == "flask":
        client = app.test_client()

        def call(path, data=None, headers=None, json=None):
            r = client.post(path, data=data, headers=headers or {}, json=json)
            return Reply(r.status_code, dict(r.headers), r.data)

        return call
    srv = request.getfixturevalue("server")

    def call(path, data=None, headers=None, json=None):
        r = requests.post(srv.url + path, data=data, headers=headers, json=json, timeout=60)
        return Reply(r.status_code, dict(r.headers), r.content)

    return call


def binary(post, path, json_obj, arrays, **headers) -> Reply:
    body, hdrs = bt.encode_request(json_obj, arrays)
    return post(path, data=body, headers={**hdrs, **headers})


def tensor(shape, datatype, **extra) -> dict:
    return {"name": "input", "shape": list(shape), "datatype": datatype, **extra}


def json_outputs(reply: Reply) -> dict[str, np.ndarray]:
    assert reply.status == 200, reply.body[:300]
    return {
        o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
        for o in reply.json["outputs"]
    }


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def close(a: np.ndarray, b: np.ndarray, tol: float = 1e-6) -> bool:
    return a.shape == b.shape and float(np.max(np.abs(a - b), initial=0.0)) <= tol


# -- (a) binary inputs = JSON inputs -----------------------------------------------------------
def test_server_metadata_lists_the_extension(app):
    extensions = app.test_client().get("/v2").json["extensions"]
    assert "binary_tensor_data" in extensions and "layer_outputs" in extensions


def test_tabular_fp32_binary_equals_json(post, keras_models):
    x = svc_factory.tabular_samples(8, seed=31).astype(np.float32)
    path = "/v2/models/fraud/infer"
    want = json_outputs(post(path, json={"inputs": [tensor(x.shape, "FP32", data=x.tolist())]}))
    r = binary(post, path, {"id": "b1", "inputs": [tensor(x.shape, "FP32")]}, {"input": x})
    assert r.status == 200 and r.json["id"] == "b1"  # JSON outputs: a plain JSON response
    assert HEADER not in r.headers
    got = json_outputs(r)
    assert close(got["output"], want["output"])
    assert close(got["output"], np.asarray(keras_models["fraud"](x, training=False)), 1e-5)


@pytest.mark.parametrize("datatype", ["FP64", "FP16", "INT32", "INT64"])
def test_tabular_other_datatypes(post, datatype):
    x = svc_factory.tabular_samples(3, seed=32)
    x[:, 0] /= 1000  # Time within the float16 range
    x = np.round(x) if datatype.startswith("INT") else x
    x = x.astype(bt.DATATYPES[datatype])
    path = "/v2/models/fraud/versions/1/infer"
    ref = x.astype(np.float32)
    want = json_outputs(post(path, json={"inputs": [tensor(x.shape, "FP32", data=ref.tolist())]}))
    got = json_outputs(binary(post, path, {"inputs": [tensor(x.shape, datatype)]}, {"input": x}))
    assert close(got["output"], want["output"])


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
@pytest.mark.parametrize("hw_only", [False, True])
def test_image_binary_equals_json(post, keras_models, datatype, hw_only):
    x = svc_factory.image_samples(8, seed=33)
    path = "/v2/models/fashion/infer"
    want = json_outputs(post(path, json={"inputs": [tensor(x.shape, "FP32", data=x.tolist())]}))
    arr = x.astype(bt.DATATYPES[datatype])
    arr = arr[..., 0] if hw_only else arr  # [n, 28, 28] is accepted for one channel
    got = json_outputs(
        binary(post, path, {"inputs": [tensor(arr.shape, datatype)]}, {"input": arr})
    )
    assert close(got["output"], want["output"])
    assert close(got["output"], np.asarray(keras_models["fashion"](x, training=False)), 1e-5)


def test_image_bytes_png_files(post):
    """BYTES in binary: each element a whole PNG file (no base64)."""
    x = svc_factory.image_samples(3, seed=34)
    files = [png(img[:, :, 0]) for img in x]
    path = "/v2/models/fashion/infer"
    want = json_outputs(post(path, json={"inputs": [tensor(x.shape, "FP32", data=x.tolist())]}))
    got = json_outputs(binary(post, path, {"inputs": [tensor([3], "BYTES")]}, {"input": files}))
    assert close(got["output"], want["output"])


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
def test_any_content_type_with_the_header(post, content_type):
    x = svc_factory.tabular_samples(1, seed=35).astype(np.float32)
    body, headers = bt.encode_request({"inputs": [tensor(x.shape, "FP32")]}, {"input": x})
    headers = {HEADER: headers[HEADER]} | ({"Content-Type": content_type} if content_type else {})
    assert post("/v2/models/fraud/infer", data=body, headers=headers).status == 200


# -- (b) binary outputs = JSON outputs ---------------------------------------------------------
def test_every_layer_as_binary_outputs(post, app):
    """All hidden layers of the CNN in one binary response decode to the JSON values."""
    x = svc_factory.image_samples(2, seed=36)
    names = [o["name"] for o in app.test_client().get("/v2/models/fashion").json["outputs"]]
    assert len(names) > 4
    path = "/v2/models/fashion/infer"
    req = {"inputs": [tensor(x.shape, "FP32", data=x.tolist())]}
    want = json_outputs(post(path, json={**req, "outputs": [{"name": n} for n in names]}))
    outputs = [{"name": n, "parameters": {"binary_data": True}} for n in names]
    r = post(path, json={**req, "outputs": outputs})
    assert r.headers["Content-Type"] == bt.OCTET_STREAM and int(r.headers[HEADER]) > 0
    obj, got = r.decoded()
    assert [o["name"] for o in obj["outputs"]] == names
    for entry in obj["outputs"]:
        assert "data" not in entry and entry["datatype"] == "FP32"
        size = entry["parameters"]["binary_data_size"]
        assert size == 4 * math.prod(entry["shape"])
        assert close(got[entry["name"]], want[entry["name"]]), entry["name"]
    json_part = int(r.headers[HEADER])
    assert len(r.body) == json_part + sum(
        o["parameters"]["binary_data_size"] for o in obj["outputs"]
    )


def test_request_level_binary_data_output_with_binary_input(post):
    x = svc_factory.image_samples(2, seed=37).astype(np.uint8)
    path = "/v2/models/fashion/infer"
    want = json_outputs(
        post(
            path,
            json={
                "inputs": [tensor(x.shape, "FP32", data=x.astype(float).tolist())],
                "outputs": [{"name": "conv2d_1"}, {"name": "output"}],
            },
        )
    )
    req = {
        "inputs": [tensor(x.shape, "UINT8")],
        "outputs": [{"name": "conv2d_1"}, {"name": "output"}],
        "parameters": {"binary_data_output": True},
    }
    obj, got = binary(post, path, req, {"input": x}).decoded()
    assert all("binary_data_size" in o["parameters"] for o in obj["outputs"])
    for name in ("conv2d_1", "output"):
        assert close(got[name], want[name]), name


def test_binary_data_output_without_outputs_returns_the_prediction(post):
    x = svc_factory.tabular_samples(2, seed=38).astype(np.float32)
    req = {"inputs": [tensor(x.shape, "FP32")], "parameters": {"binary_data_output": True}}
    obj, got = binary(post, "/v2/models/fraud/infer", req, {"input": x}).decoded()
    assert [o["name"] for o in obj["outputs"]] == ["output"] and got["output"].shape == (2, 1)


def test_mixed_json_and_binary_outputs(post):
    x = svc_factory.image_samples(1, seed=39)
    path = "/v2/models/fashion/infer"
    outputs = [
        {"name": "output"},
        {"name": "dense_1", "parameters": {"binary_data": True}},
        {"name": "conv2d_1", "parameters": {"binary_data": False}},
    ]
    req = {"inputs": [tensor(x.shape, "FP32", data=x.tolist())], "outputs": outputs}
    want = json_outputs(post(path, json=req | {"outputs": [{"name": o["name"]} for o in outputs]}))
    # request-level True, overridden per output
    r = post(path, json=req | {"parameters": {"binary_data_output": True}})
    obj, got = r.decoded()
    kinds = {
        o["name"]: ("data" in o, "binary_data_size" in o.get("parameters", {}))
        for o in obj["outputs"]
    }
    assert kinds == {"output": (False, True), "dense_1": (False, True), "conv2d_1": (True, False)}
    assert len(r.body) == int(r.headers[HEADER]) + 4 * (10 + 6)
    for name in want:
        assert close(got[name], want[name]), name


def test_hidden_layers_in_binary_need_the_introspection_token(repo):
    app = create_app(
        {
            "model_repository": repo,
            "poll_interval": 0,
            "load_in_background": False,
            "introspection_token": "s3cret",
            "log_level": "warning",
        }
    )
    client = app.test_client()
    x = svc_factory.tabular_samples(1, seed=40).astype(np.float32)
    req = {"inputs": [tensor(x.shape, "FP32")], "outputs": [{"name": "dense_1"}]}
    body, headers = bt.encode_request(
        req | {"parameters": {"binary_data_output": True}}, {"input": x}
    )
    r = client.post("/v2/models/fraud/infer", data=body, headers=headers)
    assert r.status_code == 401 and "Bearer" in r.json["error"]
    r = client.post(
        "/v2/models/fraud/infer", data=body, headers=headers | {"Authorization": "Bearer s3cret"}
    )
    obj, got = bt.decode_response(r.data, r.headers)
    assert r.status_code == 200 and got["dense_1"].shape == (1, 6)


# -- (c) malformed bodies --------------------------------------------------------------------
ROW = np.zeros((1, 30), np.float32)
GOOD_JSON = {"inputs": [tensor([1, 30], "FP32", parameters={"binary_data_size": 120})]}


def raw(json_obj, tail: bytes = ROW.tobytes(), length: int | str | None = None):
    head = json.dumps(json_obj).encode()
    return head + tail, {HEADER: str(len(head) if length is None else length)}


def bytes_input(elements: list[bytes], shape=None, size=None) -> tuple[bytes, dict]:
    tail = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    entry = tensor(shape or [len(elements)], "BYTES")
    entry["parameters"] = {"binary_data_size": len(tail) if size is None else size}
    return raw({"inputs": [entry]}, tail)


def with_input(**changes) -> dict:
    entry = dict(GOOD_JSON["inputs"][0])
    entry.update(changes)
    return {"inputs": [entry]}


def _bytes_overrun():
    body, headers = bytes_input([b"abc"])
    head, tail = body[: int(headers[HEADER])], body[int(headers[HEADER]) :]
    return head + struct.pack("<I", 999) + tail[4:], headers


def _bytes_short_prefix():
    entry = tensor([2], "BYTES", parameters={"binary_data_size": 9})
    return raw({"inputs": [entry]}, struct.pack("<I", 3) + b"abc" + b"\x01\x00")


MALFORMED = [
    ("header not integer", "fraud", lambda: raw(GOOD_JSON, length="abc"), "'abc'"),
    ("header float", "fraud", lambda: raw(GOOD_JSON, length="1.5"), "'1.5'"),
    ("header negative", "fraud", lambda: raw(GOOD_JSON, length=-3), "is -3"),
    ("header beyond body", "fraud", lambda: raw(GOOD_JSON, length=10**6), "has only"),
    ("header zero", "fraud", lambda: raw(GOOD_JSON, length=0), "is empty"),
    ("json malformed", "fraud", lambda: raw(GOOD_JSON, length=7), "not valid JSON"),
    ("json not object", "fraud", lambda: raw([1, 2], b""), "expected an object"),
    (
        "size a string",
        "fraud",
        lambda: raw(with_input(parameters={"binary_data_size": "120"})),
        "binary_data_size is '120'",
    ),
    (
        "size negative",
        "fraud",
        lambda: raw(with_input(parameters={"binary_data_size": -120})),
        "binary_data_size is -120",
    ),
    (
        "size boolean",
        "fraud",
        lambda: raw(with_input(parameters={"binary_data_size": True})),
        "binary_data_size is True",
    ),
    ("too few bytes", "fraud", lambda: raw(GOOD_JSON, ROW.tobytes()[:-8]), "too few bytes"),
    ("too many bytes", "fraud", lambda: raw(GOOD_JSON, ROW.tobytes() + b"xy"), "too many bytes"),
    (
        "size vs shape",
        "fraud",
        lambda: raw(with_input(parameters={"binary_data_size": 116}), ROW.tobytes()[:116]),
        "needs 120 bytes",
    ),
    (
        "unsupported datatype",
        "fraud",
        lambda: raw(with_input(datatype="BF16")),
        "'BF16'; binary data supports",
    ),
    (
        "data and binary",
        "fraud",
        lambda: raw(with_input(data=[0.0] * 30)),
        "both 'data' and parameters.binary_data_size",
    ),
    (
        "input parameters not an object",
        "fraud",
        lambda: raw(with_input(parameters=[120])),
        "inputs[0].parameters is [120]",
    ),
    (
        "shape not integers",
        "fraud",
        lambda: raw(with_input(shape=[1, "30"])),
        "inputs[0].shape is [1, '30']",
    ),
    ("bytes overrun", "fashion", _bytes_overrun, "declares 999 bytes"),
    ("bytes short prefix", "fashion", _bytes_short_prefix, "needs a 4-byte length"),
    (
        "bytes slack",
        "fashion",
        lambda: raw(
            {"inputs": [tensor([1], "BYTES", parameters={"binary_data_size": 8})]},
            struct.pack("<I", 3) + b"abc\x00",
        ),
        "take 7 bytes but binary_data_size is 8",
    ),
    ("bytes not an image", "fashion", lambda: bytes_input([b"hello"]), "could not be decoded"),
    ("bytes count vs batch", "fashion", lambda: bytes_input([b"a", b"b"], shape=[1, 2]), "2 BYTES"),
    ("bytes for tabular", "fraud", lambda: bytes_input([b"a"]), "only accepted for image"),
    (
        "bool values",
        "fraud",
        lambda: raw(with_input(datatype="BOOL", parameters={"binary_data_size": 30}), b"\x02" * 30),
        "expected 0 or 1",
    ),
    (
        "bool for the model",
        "fraud",
        lambda: raw(with_input(datatype="BOOL", parameters={"binary_data_size": 30}), b"\x01" * 30),
        "'BOOL' is not supported",
    ),
    (
        "wrong shape",
        "fraud",
        lambda: raw(
            with_input(shape=[1, 29], parameters={"binary_data_size": 116}), ROW.tobytes()[:116]
        ),
        "expected [n, 30]",
    ),
    (
        "batch too large",
        "fraud",
        lambda: raw(
            with_input(shape=[9, 30], parameters={"binary_data_size": 9 * 120}),
            np.zeros((9, 30), np.float32).tobytes(),
        ),
        "maximum of 8",
    ),
    (
        "empty batch",
        "fraud",
        lambda: raw(with_input(shape=[0, 30], parameters={"binary_data_size": 0}), b""),
        "batch is empty",
    ),
    ("nan", "fraud", lambda: raw(GOOD_JSON, np.full((1, 30), np.nan, np.float32).tobytes()), "NaN"),
    (
        "inf fp64",
        "fraud",
        lambda: raw(
            with_input(datatype="FP64", parameters={"binary_data_size": 240}),
            np.full((1, 30), np.inf).tobytes(),
        ),
        "inf",
    ),
    (
        "beyond float32",
        "fraud",
        lambda: raw(
            with_input(datatype="FP64", parameters={"binary_data_size": 240}),
            np.full((1, 30), 1e300).tobytes(),
        ),
        "out of the float32 range",
    ),
    (
        "pixels out of range",
        "fashion",
        lambda: raw(
            with_input(shape=[1, 28, 28], datatype="INT16", parameters={"binary_data_size": 1568}),
            np.full((1, 28, 28), 300, np.int16).tobytes(),
        ),
        "pixel values in [300, 300]",
    ),
    (
        "size without header",
        "fraud",
        lambda: (json.dumps(GOOD_JSON).encode(), {"Content-Type": "application/json"}),
        f"no {HEADER} header",
    ),
    (
        "binary_data_output not bool",
        "fraud",
        lambda: raw(GOOD_JSON | {"parameters": {"binary_data_output": "yes"}}),
        "binary_data_output is 'yes'",
    ),
    (
        "binary_data not bool",
        "fraud",
        lambda: raw(
            GOOD_JSON | {"outputs": [{"name": "output", "parameters": {"binary_data": 1}}]}
        ),
        "binary_data is 1",
    ),
    (
        "output parameters not object",
        "fraud",
        lambda: raw(GOOD_JSON | {"outputs": [{"name": "output", "parameters": "x"}]}),
        "outputs[0].parameters must be an object",
    ),
    (
        "two binary inputs",
        "fraud",
        lambda: raw({"inputs": GOOD_JSON["inputs"] * 2}, ROW.tobytes() * 2),
        "two binary tensors are named 'input'",
    ),
    (
        "inputs not a list",
        "fraud",
        lambda: raw({"inputs": {"name": "input"}}, b"xx"),
        "expected a list of tensors",
    ),
]


@pytest.mark.parametrize(
    "model, make, fragment", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_binary_requests_are_400(post, model, make, fragment):
    body, headers = make()
    r = post(f"/v2/models/{model}/infer", data=body, headers=headers)
    assert r.status == 400, (r.status, r.body[:300])
    message = r.json["error"]
    assert message and set(r.json) == {"error"}
    assert fragment in message, message


def test_limits_apply_to_binary_requests(small_app):
    """max_body_bytes (413), max batch size (400) and the activation cap (413)."""
    client = small_app.test_client()
    big = np.zeros((40, 30), np.float32)  # 4800 bytes > the 4096-byte limit
    body, headers = bt.encode_request({"inputs": [tensor(big.shape, "FP32")]}, {"input": big})
    r = client.post("/v2/models/fraud/infer", data=body, headers=headers)
    assert r.status_code == 413 and "4096" in r.json["error"]
    x = np.zeros((3, 30), np.float32)
    body, headers = bt.encode_request({"inputs": [tensor(x.shape, "FP32")]}, {"input": x})
    r = client.post("/v2/models/fraud/infer", data=body, headers=headers)
    assert r.status_code == 400 and "maximum of 2" in r.json["error"]
    x = np.zeros((2, 30), np.float32)
    req = {
        "inputs": [tensor(x.shape, "FP32")],
        "outputs": [{"name": "normalization", "parameters": {"binary_data": True}}],
    }
    body, headers = bt.encode_request(req, {"input": x})
    r = client.post("/v2/models/fraud/infer", data=body, headers=headers)
    assert r.status_code == 413 and "60 values" in r.json["error"]


@pytest.mark.parametrize("length", ["0\x1f", "\x1c2", "2\x0b", "\u0663", "1\u00a0", "\u20022"])
def test_header_length_takes_ascii_digits_only(length):
    """Characters re's \\s / \\d match but int() refuses (or HTTP never sends) are a
    BinaryTensorError naming the header, not a ValueError (found by the fuzz test below)."""
    with pytest.raises(bt.BinaryTensorError, match=bt.HEADER):
        bt.parse_request(b'{"inputs": []}', length)


def test_header_length_allows_spaces_and_tabs_around_the_number():
    head = json.dumps({"inputs": []}).encode()
    assert bt.parse_request(head, f" \t{len(head)}\t ") == bt.parse_request(head, len(head))


# -- (d) the codec: round trips ---------------------------------------------------------------
NUMERIC = sorted(bt.DATATYPES)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
CODEC = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@st.composite
def tensors(draw):
    """{name: array or BYTES list} of 1-4 tensors of any datatype."""
    out = {}
    for i in range(draw(st.integers(1, 4))):
        datatype = draw(st.sampled_from([*NUMERIC, "BYTES"]))
        if datatype == "BYTES":
            out[f"t{i}"] = draw(st.lists(st.binary(max_size=12), max_size=6))
        else:
            out[f"t{i}"] = draw(hnp.arrays(bt.DATATYPES[datatype], SHAPES))
    return out


def same(sent, got) -> bool:
    if isinstance(sent, list):
        return list(np.asarray(got, dtype=object).reshape(-1)) == sent
    return got.dtype == sent.dtype and got.shape == sent.shape and got.tobytes() == sent.tobytes()


@CODEC
@given(arrays=tensors())
def test_request_round_trip(arrays):
    body, headers = bt.encode_request({"id": "r"}, arrays)
    assert headers["Content-Type"] == bt.OCTET_STREAM
    obj, got = bt.parse_request(body, headers[HEADER])
    assert obj["id"] == "r" and [e["name"] for e in obj["inputs"]] == list(arrays)
    for name, sent in arrays.items():
        assert same(sent, got[name]), name


@CODEC
@given(arrays=tensors())
def test_response_round_trip(arrays):
    body, headers = bt.encode_response({"model_name": "m"}, arrays)
    obj, got = bt.decode_response(body, headers)
    assert obj["model_name"] == "m"
    for name, sent in arrays.items():
        assert same(sent, got[name]), name


@CODEC
@given(datatype=st.sampled_from(NUMERIC), shape=SHAPES, data=st.data())
def test_listed_inputs_keep_their_datatype_and_shape(datatype, shape, data):
    """An input already listed in the JSON is cast to its datatype, in listed order."""
    values = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 1)))
    listed = {"inputs": [{"name": "b", "datatype": datatype, "shape": list(shape)}, {"name": "a"}]}
    body, headers = bt.encode_request(listed, {"a": [b"x"], "b": values})
    obj, got = bt.parse_request(body, headers[HEADER])
    assert [e["name"] for e in obj["inputs"]] == ["b", "a"] and got["a"] == [b"x"]
    assert got["b"].dtype == bt.DATATYPES[datatype] and np.array_equal(got["b"], values)
    assert "data" not in listed["inputs"][0] and "parameters" not in listed["inputs"][0]


def test_plain_lists():
    """Numbers in lists take the listed datatype (or numpy's); str / bytes lists are BYTES."""
    listed = {"inputs": [{"name": "f", "datatype": "FP16", "shape": [2]}]}
    body, headers = bt.encode_request(listed, {"f": [1.5, 2.5], "i": [[1, 2]], "s": ["ab", b"c"]})
    obj, got = bt.parse_request(body, headers[HEADER])
    assert got["f"].dtype == np.float16 and got["f"].tolist() == [1.5, 2.5]
    assert got["i"].dtype == np.int64 and got["i"].shape == (1, 2)
    assert got["s"] == [b"ab", b"c"] and obj["inputs"][2]["shape"] == [2]


def test_numeric_inputs_are_views_of_the_body():
    x = np.arange(60, dtype=np.float32).reshape(2, 30)
    body, headers = bt.encode_request({}, {"input": x})
    _, got = bt.parse_request(body, headers[HEADER])
    assert not got["input"].flags.owndata and not got["input"].flags.writeable
    assert np.array_equal(got["input"], x)


def test_decode_plain_json_response():
    body = json.dumps(
        {"outputs": [{"name": "o", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    ).encode()
    obj, got = bt.decode_response(body, {"Content-Type": "application/json"})
    assert got["o"].dtype == np.float32 and got["o"].tolist() == [[1.0, 2.0]]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    head=st.one_of(
        st.just(json.dumps(GOOD_JSON).encode()),
        st.builds(
            lambda x: json.dumps(x).encode(), st.dictionaries(st.text(max_size=5), st.integers())
        ),
        st.binary(max_size=40),
    ),
    tail=st.binary(max_size=200),
    length=st.one_of(st.integers(-5, 300), st.text(max_size=6)),
)
def test_parser_raises_only_its_own_error(head, tail, length):
    """Arbitrary bodies and headers: a parse, or a BinaryTensorError; nothing else."""
    try:
        bt.parse_request(head + tail, length)
    except bt.BinaryTensorError as exc:
        assert str(exc)
