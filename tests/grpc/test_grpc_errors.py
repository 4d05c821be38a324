"""Every bad input of the REST suites (tests/service/test_service_protocols.py V2_ERRORS
and TFS_ERRORS, tests/service/test_v2_binary.py MALFORMED) has its gRPC twin here: the
same check answers with the gRPC status of the REST code (400 INVALID_ARGUMENT, 404
NOT_FOUND, 413 RESOURCE_EXHAUSTED, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED) and the
same message. Twins of JSON-only cases (a string where a number goes, an id that is not
a string) cannot be written in protobuf; their typed counterparts are listed instead."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import TOKEN
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ROW = np.zeros((1, 30), np.float32)
ROW_BYTES = ROW.tobytes()


def infer(model="fraud", version="", raw=(ROW_BYTES,), outputs=(), **tensor):
    """A ModelInferRequest with one tensor (defaults: fraud's [1, 30] FP32, raw)."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    spec = {"name": "input", "datatype": "FP32", "shape": [1, 30], **tensor}
    contents = spec.pop("contents", None)
    entry = request.inputs.add(**spec)
    if contents is not None:
        field, values = contents
        getattr(entry.contents, field).extend(values)
    request.raw_input_contents.extend(raw)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def with_inputs(request, *tensors):
    for spec in tensors:
        request.inputs.add(**spec)
    return request


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


OIP_ERRORS = [
    # -- twins of V2_ERRORS
    ("unknown model", infer(model="nope"), NOT_FOUND, "'nope'"),
    ("unknown version", infer(version="5"), NOT_FOUND, "no version 5"),
    ("non-numeric version", infer(version="abc"), NOT_FOUND, "'abc'"),
    ("no inputs", service_pb2.ModelInferRequest(model_name="fraud"), INVALID, "exactly one tensor"),
    (
        "two inputs",
        with_inputs(infer(raw=()), {"name": "input", "datatype": "FP32", "shape": [1, 30]}),
        INVALID,
        "got 2 tensors",
    ),
    ("wrong input name", infer(name="x"), INVALID, "'x'"),
    ("missing datatype", infer(datatype=""), INVALID, "datatype"),
    (
        "missing datatype typed",
        infer(raw=(), datatype="", contents=("fp32_contents", [0] * 30)),
        INVALID,
        "datatype",
    ),
    ("wrong shape", infer(shape=[1, 29], raw=(ROW.tobytes()[:116],)), INVALID, "[n, 30]"),
    (
        "data count mismatch",
        infer(raw=(), contents=("fp32_contents", [0.0] * 29)),
        INVALID,
        "29 elements",
    ),
    ("negative shape", infer(shape=[1, -30]), INVALID, "non-negative integers"),
    (
        "negative shape typed",
        infer(raw=(), shape=[-1, 30], contents=("fp32_contents", [0.0])),
        INVALID,
        "non-negative integers",
    ),
    (
        "unsupported datatype",
        infer(datatype="BOOL", raw=(b"\x01" * 30,)),
        INVALID,
        "'BOOL' is not supported",
    ),
    (
        "bytes for tabular",
        infer(datatype="BYTES", shape=[1], raw=(length_prefixed(b"x"),)),
        INVALID,
        "only accepted for image",
    ),
    (
        "bytes undecodable",
        infer(model="fashion", datatype="BYTES", shape=[1], raw=(length_prefixed(b"hello"),)),
        INVALID,
        "could not be decoded",
    ),
    (
        "bytes undecodable typed",
        infer(
            model="fashion",
            datatype="BYTES",
            shape=[1],
            raw=(),
            contents=("bytes_contents", [b"hello"]),
        ),
        INVALID,
        "could not be decoded",
    ),
    (
        "uint8 overflow",
        infer(
            model="fashion",
            datatype="UINT8",
            shape=[1, 28, 28],
            raw=(),
            contents=("uint_contents", [256] * 784),
        ),
        INVALID,
        "UINT8",
    ),
    (
        "unknown output",
        infer(outputs=["dense_9"]),
        INVALID,
        "available outputs: output, normalization, dense_1",
    ),
    ("empty output name", infer(outputs=[""]), INVALID, "unknown output ''"),
    (
        "batch too large",
        infer(shape=[9, 30], raw=(np.zeros((9, 30), np.float32).tobytes(),)),
        INVALID,
        "maximum of 8",
    ),
    # -- twins of MALFORMED (the binary extension: raw_input_contents)
    ("too few bytes", infer(raw=(ROW.tobytes()[:-8],)), INVALID, "needs 120 bytes"),
    ("too many bytes", infer(raw=(ROW.tobytes() + b"xy",)), INVALID, "needs 120 bytes"),
    ("unsupported raw datatype", infer(datatype="BF16"), INVALID, "'BF16'; binary data supports"),
    (
        "raw and contents",
        infer(contents=("fp32_contents", [0.0] * 30)),
        INVALID,
        "all raw or all in contents",
    ),
    (
        "raw count",
        infer(raw=(ROW.tobytes(), ROW.tobytes())),
        INVALID,
        "raw_input_contents has 2 entries for 1 input tensors",
    ),
    (
        "bytes overrun",
        infer(model="fashion", datatype="BYTES", shape=[1], raw=(struct.pack("<I", 999) + b"abc",)),
        INVALID,
        "declares 999 bytes",
    ),
    (
        "bytes short prefix",
        infer(
            model="fashion",
            datatype="BYTES",
            shape=[2],
            raw=(struct.pack("<I", 3) + b"abc" + b"\x01\x00",),
        ),
        INVALID,
        "needs a 4-byte length",
    ),
    (
        "bytes slack",
        infer(
            model="fashion", datatype="BYTES", shape=[1], raw=(struct.pack("<I", 3) + b"abc\x00",)
        ),
        INVALID,
        "take 7 bytes",
    ),
    (
        "bytes not an image",
        infer(model="fashion", datatype="BYTES", shape=[1], raw=(length_prefixed(b"hello"),)),
        INVALID,
        "could not be decoded",
    ),
    (
        "bytes count vs batch",
        infer(model="fashion", datatype="BYTES", shape=[1, 2], raw=(length_prefixed(b"a", b"b"),)),
        INVALID,
        "2 BYTES",
    ),
    ("bool values", infer(datatype="BOOL", raw=(b"\x02" * 30,)), INVALID, "expected 0 or 1"),
    ("empty batch", infer(shape=[0, 30], raw=(b"",)), INVALID, "batch is empty"),
    ("nan", infer(raw=(np.full((1, 30), np.nan, np.float32).tobytes(),)), INVALID, "NaN"),
    ("nan typed", infer(raw=(), contents=("fp32_contents", [float("nan")] * 30)), INVALID, "NaN"),
    ("inf fp64", infer(datatype="FP64", raw=(np.full((1, 30), np.inf).tobytes(),)), INVALID, "inf"),
    (
        "beyond float32",
        infer(datatype="FP64", raw=(np.full((1, 30), 1e300).tobytes(),)),
        INVALID,
        "out of the float32 range",
    ),
    (
        "pixels out of range",
        infer(
            model="fashion",
            datatype="INT16",
            shape=[1, 28, 28],
            raw=(np.full((1, 28, 28), 300, np.int16).tobytes(),),
        ),
        INVALID,
        "pixel values in [300, 300]",
    ),
    # -- typed contents and the other models
    (
        "contents in the wrong field",
        infer(raw=(), contents=("int_contents", [0] * 30)),
        INVALID,
        "expected fp32_contents",
    ),
    ("fp16 typed", infer(raw=(), datatype="FP16"), INVALID, "FP16: send raw_input_contents"),
    (
        "float ids for an int32 input",
        infer(
            model="tokens",
            name="tokens",
            shape=[1, 6],
            raw=(np.zeros((1, 6), np.float32).tobytes(),),
        ),
        INVALID,
        "takes integer ids",
    ),
    (
        "ids beyond int32",
        infer(
            model="tokens",
            name="tokens",
            datatype="INT64",
            shape=[1, 6],
            raw=(np.full((1, 6), 2**40, np.int64).tobytes(),),
        ),
        INVALID,
        "int32 in",
    ),
    (
        "a missing input of two",
        infer(
            model="pair",
            name="numeric",
            shape=[1, 8],
            raw=(),
            contents=("fp32_contents", [0.0] * 8),
        ),
        INVALID,
        "missing input tensors ['extra']",
    ),
]


def pair_sizes():
    request = infer(
        model="pair", name="numeric", shape=[1, 8], raw=(np.zeros((1, 8), np.float32).tobytes(),)
    )
    request.inputs.add(name="extra", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(np.zeros((2, 4), np.float32).tobytes())
    return request


OIP_ERRORS.append(("different batch sizes", pair_sizes(), INVALID, "different batch sizes"))
OIP_ERRORS.append(
    (
        "raw for one of two inputs",
        with_inputs(
            infer(model="pair", name="numeric", shape=[1, 8]),
            {"name": "extra", "datatype": "FP32", "shape": [1, 4]},
        ),
        INVALID,
        "raw_input_contents has 1 entries for 2 input tensors",
    )
)


def expect(call, code, fragment):
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, (err.value.code(), err.value.details())
    assert fragment in err.value.details(), err.value.details()
    return err.value


@pytest.fixture(scope="module")
def oip(channel):
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def tfs(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.mark.parametrize(
    "request_, code, fragment", [c[1:] for c in OIP_ERRORS], ids=[c[0] for c in OIP_ERRORS]
)
def test_oip_errors(oip, request_, code, fragment):
    expect(lambda: oip.ModelInfer(request_, timeout=30), code, fragment)


@pytest.mark.parametrize(
    "method, request_, fragment",
    [
        ("ModelMetadata", service_pb2.ModelMetadataRequest(name="nope"), "'nope'"),
        ("ModelReady", service_pb2.ModelReadyRequest(name="nope"), "'nope'"),
        (
            "ModelMetadata",
            service_pb2.ModelMetadataRequest(name="fraud", version="3"),
            "no version 3",
        ),
        ("ModelReady", service_pb2.ModelReadyRequest(name="fraud", version="3"), "no version 3"),
    ],
)
def test_oip_metadata_and_ready_404(oip, method, request_, fragment):
    expect(lambda: getattr(oip, method)(request_, timeout=10), NOT_FOUND, fragment)


def test_unimplemented_triton_methods(oip):
    expect(
        lambda: oip.ModelStatistics(service_pb2.ModelStatisticsRequest(name="fraud"), timeout=10),
        grpc.StatusCode.UNIMPLEMENTED,
        "",
    )


# -- TF Serving ------------------------------------------------------------------------------
def predict(model="fraud", x=ROW, key="input", version=None, signature="", output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if x is not None:
        request.inputs[key].CopyFrom(
            x if isinstance(x, tensor_pb2.TensorProto) else tf.make_tensor_proto(x)
        )
    request.output_filter.extend(output_filter)
    return request


def tensor(dtype=tf.float32, shape=(1, 30), **fields):
    proto = tf.make_tensor_proto(np.zeros(shape, np.float32)) if not fields else None
    if proto is None:
        proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
        for d in shape:
            proto.tensor_shape.dim.add(size=d)
        for name, value in fields.items():
            if name == "tensor_content" or name == "unknown_rank":
                if name == "unknown_rank":
                    proto.tensor_shape.unknown_rank = value
                else:
                    proto.tensor_content = value
            else:
                getattr(proto, name).extend(value)
    return proto


TFS_ERRORS = [
    ("predict unknown model", predict(model="nope"), NOT_FOUND, "'nope'"),
    ("unknown version", predict(version=4), NOT_FOUND, "no version 4"),
    ("bad signature", predict(signature="classify"), INVALID, "'classify'"),
    ("wrong shape", predict(x=np.zeros((1, 3), np.float32)), INVALID, "[n, 30]"),
    ("unknown output layer", predict(output_filter=["dense_99"]), NOT_FOUND, "available layers"),
    ("unknown input key", predict(key="x"), INVALID, "unknown inputs ['x']"),
    ("no inputs", predict(x=None), INVALID, "missing inputs ['input']"),
    ("batch too large", predict(x=np.zeros((9, 30), np.float32)), INVALID, "maximum of 8"),
    ("nan", predict(x=np.full((1, 30), np.nan, np.float32)), INVALID, "NaN"),
    (
        "strings for tabular",
        predict(x=tf.make_tensor_proto([b"abc"], shape=[1])),
        INVALID,
        "only accepted for image",
    ),
    (
        "strings undecodable",
        predict(model="fashion", x=tf.make_tensor_proto([b"abc"], shape=[1])),
        INVALID,
        "could not be decoded",
    ),
    ("tensor_content size", predict(x=tensor(tensor_content=b"\x00" * 100)), INVALID, "needs 120"),
    (
        "unknown rank",
        predict(x=tensor(unknown_rank=True, float_val=[0.0])),
        INVALID,
        "unknown_rank",
    ),
    ("value count", predict(x=tensor(float_val=[0.0] * 7)), INVALID, "needs 30"),
    (
        "both ways",
        predict(x=tensor(float_val=[0.0] * 30, tensor_content=b"\x00" * 120)),
        INVALID,
        "one way",
    ),
    ("wrong value field", predict(x=tensor(int_val=[0] * 30)), INVALID, "expected float_val"),
    (
        "unsupported dtype",
        predict(x=tensor(dtype=tf.complex64, scomplex_val=[0.0] * 60)),
        INVALID,
        "DT_COMPLEX64",
    ),
    ("empty batch", predict(x=np.zeros((0, 30), np.float32)), INVALID, "batch is empty"),
    (
        "pixels out of range",
        predict(model="fashion", x=np.full((1, 28, 28, 1), 300, np.float32)),
        INVALID,
        "pixel values in [300, 300]",
    ),
    (
        "ids beyond int32",
        predict(model="tokens", key="tokens", x=np.full((1, 6), 2**40, np.int64)),
        INVALID,
        "int32 in",
    ),
    (
        "float ids",
        predict(model="tokens", key="tokens", x=np.zeros((1, 6), np.float32)),
        INVALID,
        "takes integer ids",
    ),
    (
        "missing one of two inputs",
        predict(model="pair", key="numeric", x=np.zeros((1, 8), np.float32)),
        INVALID,
        "missing inputs ['extra']",
    ),
]


@pytest.mark.parametrize(
    "request_, code, fragment", [c[1:] for c in TFS_ERRORS], ids=[c[0] for c in TFS_ERRORS]
)
def test_tfs_predict_errors(tfs, request_, code, fragment):
    expect(lambda: tfs.Predict(request_, timeout=30), code, fragment)


def test_tfs_metadata_errors(tfs, channel):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "nope"
    expect(lambda: tfs.GetModelMetadata(request, timeout=10), NOT_FOUND, "'nope'")
    request.model_spec.name = "fraud"
    del request.metadata_field[:]
    request.metadata_field.append("graph")
    expect(lambda: tfs.GetModelMetadata(request, timeout=10), INVALID, "['signature_def']")
    status = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    expect(lambda: status.GetModelStatus(request, timeout=10), NOT_FOUND, "'nope'")
    request.model_spec.name = "fraud"
    request.model_spec.version.value = 4
    expect(lambda: status.GetModelStatus(request, timeout=10), NOT_FOUND, "no version 4")
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "fraud"
    request.model_spec.version_label = "stable"
    expect(lambda: status.GetModelStatus(request, timeout=10), NOT_FOUND, "version labels")


# -- limits and the introspection token (the secured server) ----------------------------------
@pytest.fixture(scope="module")
def secured_channel(secured):
    with grpc.insecure_channel(secured.target) as ch:
        yield ch


BEARER = (("authorization", f"Bearer {TOKEN}"),)


def test_activation_cap_is_resource_exhausted(secured_channel):
    oip = service_pb2_grpc.GRPCInferenceServiceStub(secured_channel)
    request = infer(
        shape=[2, 30], raw=(np.zeros((2, 30), np.float32).tobytes(),), outputs=["normalization"]
    )
    expect(
        lambda: oip.ModelInfer(request, metadata=BEARER, timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "60 values",
    )


def test_message_over_the_body_limit_is_resource_exhausted(secured_channel):
    oip = service_pb2_grpc.GRPCInferenceServiceStub(secured_channel)
    x = np.zeros((2, 28, 28, 1), np.float32)  # 6272 bytes > LAYERSCOPE_MAX_BODY_BYTES=4096
    request = infer(model="fashion", shape=list(x.shape), raw=(x.tobytes(),))
    expect(lambda: oip.ModelInfer(request, timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED, "")


def test_hidden_layers_need_the_token(secured_channel):
    oip = service_pb2_grpc.GRPCInferenceServiceStub(secured_channel)
    tfs = prediction_service_pb2_grpc.PredictionServiceStub(secured_channel)
    request = infer(outputs=["dense_1"])
    err = expect(
        lambda: oip.ModelInfer(request, timeout=30),
        grpc.StatusCode.UNAUTHENTICATED,
        "authorization: Bearer <token>",
    )
    assert "no authorization metadata" in err.details()
    expect(
        lambda: oip.ModelInfer(request, metadata=(("authorization", "Bearer wrong"),), timeout=30),
        grpc.StatusCode.PERMISSION_DENIED,
        "not valid",
    )
    response = oip.ModelInfer(request, metadata=BEARER, timeout=30)
    assert [o.name for o in response.outputs] == ["dense_1"]
    assert oip.ModelInfer(infer(outputs=["output"]), timeout=30).outputs[0].name == "output"
    filtered = predict(output_filter=["dense_1"])
    expect(lambda: tfs.Predict(filtered, timeout=30), grpc.StatusCode.UNAUTHENTICATED, "Bearer")
    assert set(tfs.Predict(filtered, metadata=BEARER, timeout=30).outputs) == {"dense_1"}


def test_metadata_lists_hidden_layers_only_with_the_token(secured_channel):
    oip = service_pb2_grpc.GRPCInferenceServiceStub(secured_channel)
    request = service_pb2.ModelMetadataRequest(name="fraud")
    public = [o.name for o in oip.ModelMetadata(request, timeout=10).outputs]
    full = [o.name for o in oip.ModelMetadata(request, metadata=BEARER, timeout=10).outputs]
    assert public == ["output"]
    assert full[0] == "output" and "dense_1" in full and len(full) > 2
