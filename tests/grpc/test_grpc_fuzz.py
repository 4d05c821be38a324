"""Hypothesis against the gRPC port: ModelInferRequests and PredictRequests built from
arbitrary names, datatypes, shapes, raw bytes and typed values, and bytes that are no
message at all. Whatever comes in, the answer is OK or a status that blames the input
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...), never UNKNOWN or INTERNAL, and
the server keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
MODELS = st.sampled_from(["fraud", "fashion", "pair", "tokens", "nope", ""])
NAMES = st.sampled_from(["input", "numeric", "extra", "tokens", "x", ""])
DATATYPES = st.sampled_from(
    [
        "FP32",
        "FP64",
        "FP16",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "BOOL",
        "BYTES",
        "BF16",
        "fp32",
        "",
    ]
)
# shapes near the models' own ([n, 30], [n, 28, 28, 1], [n, 8], [n, 4], [n, 6]) and others
DIMS = st.sampled_from([0, 1, 2, 3, 4, 6, 8, 9, 28, 30, -1, 2**40])
SHAPES = st.one_of(
    st.lists(DIMS, min_size=0, max_size=5),
    st.sampled_from([[1, 30], [2, 30], [1, 28, 28, 1], [1, 28, 28], [1, 8], [1, 4], [2, 6]]),
)
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def fitting_bytes(draw, datatype, shape):
    """Raw contents: often exactly the shape's size (so deeper checks run), else any."""
    sizes = {
        "FP64": 8,
        "INT64": 8,
        "UINT64": 8,
        "FP32": 4,
        "INT32": 4,
        "UINT32": 4,
        "FP16": 2,
        "INT16": 2,
        "UINT16": 2,
    }
    count = int(np.prod(shape)) if shape and all(0 <= d < 5000 for d in shape) else 3
    if draw(st.booleans()) and count < 5000:
        n = count * sizes.get(datatype, 1)
        kind = draw(st.sampled_from(["zeros", "random", "nan", "big"]))
        if kind == "zeros":
            return b"\x00" * n
        if kind == "nan" and datatype == "FP32":
            return np.full(count, np.nan, np.float32).tobytes()
        if kind == "big" and datatype == "FP32":
            return np.full(count, 1e30, np.float32).tobytes()
        return draw(st.binary(min_size=n, max_size=n)) if n <= 512 else b"\x07" * n
    return draw(st.binary(max_size=64))


@st.composite
def infer_requests(draw):
    request = service_pb2.ModelInferRequest(
        model_name=draw(MODELS), model_version=draw(st.sampled_from(["", "1", "2", "v1", "x"]))
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        datatype, shape = draw(DATATYPES), draw(SHAPES)
        entry = request.inputs.add(name=draw(NAMES), datatype=datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(fitting_bytes(draw, datatype, shape))
        else:
            field = draw(
                st.sampled_from(
                    [
                        "fp32_contents",
                        "int_contents",
                        "int64_contents",
                        "uint_contents",
                        "bytes_contents",
                        "bool_contents",
                    ]
                )
            )
            n = draw(st.integers(0, 40))
            values = {
                "fp32_contents": st.floats(width=32),
                "int_contents": st.integers(-(2**31), 2**31 - 1),
                "int64_contents": st.integers(-(2**63), 2**63 - 1),
                "uint_contents": st.integers(0, 2**32 - 1),
                "bytes_contents": st.binary(max_size=8),
                "bool_contents": st.booleans(),
            }[field]
            getattr(entry.contents, field).extend(draw(st.lists(values, min_size=n, max_size=n)))
    if draw(st.booleans()):
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(
            name=draw(
                st.sampled_from(["output", "dense_1", "conv2d_1", "score", "embedding", "nope", ""])
            )
        )
    return request


@st.composite
def predict_requests(draw):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = draw(MODELS)
    if draw(st.booleans()):
        request.model_spec.version.value = draw(st.sampled_from([1, 2, 0, -1]))
    request.model_spec.signature_name = draw(st.sampled_from(["", "serving_default", "x"]))
    for _ in range(draw(st.integers(0, 2))):
        proto = tensor_pb2.TensorProto(
            dtype=draw(
                st.sampled_from(
                    [
                        types_pb2.DT_FLOAT,
                        types_pb2.DT_DOUBLE,
                        types_pb2.DT_INT32,
                        types_pb2.DT_INT64,
                        types_pb2.DT_STRING,
                        types_pb2.DT_HALF,
                        types_pb2.DT_BOOL,
                        types_pb2.DT_COMPLEX64,
                        77,
                    ]
                )
            )
        )
        for d in draw(SHAPES):
            proto.tensor_shape.dim.add(size=d)
        proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
        choice = draw(st.sampled_from(["content", "float", "int", "string", "half", "none"]))
        n = draw(st.integers(0, 40))
        if choice == "content":
            proto.tensor_content = draw(st.binary(max_size=256))
        elif choice == "float":
            proto.float_val.extend(draw(st.lists(st.floats(width=32), min_size=n, max_size=n)))
        elif choice == "int":
            proto.int_val.extend(
                draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n))
            )
        elif choice == "string":
            proto.string_val.extend(draw(st.lists(st.binary(max_size=8), min_size=n, max_size=n)))
        elif choice == "half":
            proto.half_val.extend(draw(st.lists(st.integers(-5, 70000), min_size=n, max_size=n)))
        request.inputs[draw(NAMES)].CopyFrom(proto)
    request.output_filter.extend(
        draw(st.lists(st.sampled_from(["output", "dense_1", "x", ""]), max_size=2))
    )
    return request


def check(call):
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() not in BAD, (err.code(), err.details())


@pytest.fixture(scope="module")
def stubs(channel):
    return (
        service_pb2_grpc.GRPCInferenceServiceStub(channel),
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
    )


@SETTINGS
@given(request=infer_requests())
def test_fuzz_model_infer(stubs, request):
    check(lambda: stubs[0].ModelInfer(request, timeout=30))


@SETTINGS
@given(request=predict_requests())
def test_fuzz_predict(stubs, request):
    check(lambda: stubs[1].Predict(request, timeout=30))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    payload=st.binary(max_size=200),
    method=st.sampled_from(
        [
            "/inference.GRPCInferenceService/ModelInfer",
            "/inference.GRPCInferenceService/ModelMetadata",
            "/inference.GRPCInferenceService/ModelReady",
            "/tensorflow.serving.PredictionService/Predict",
            "/tensorflow.serving.PredictionService/GetModelMetadata",
            "/tensorflow.serving.ModelService/GetModelStatus",
        ]
    ),
)
def test_fuzz_bytes_that_are_no_message(channel, payload, method):
    call = channel.unary_unary(method)  # bytes in, bytes out: no client-side encoding
    check(lambda: call(payload, timeout=30))


def test_server_still_serves_after_the_fuzz(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    x = np.zeros((1, 30), np.float32)
    import tritonclient.grpc as tg

    entry = tg.InferInput("input", [1, 30], "FP32")
    entry.set_data_from_numpy(x)
    assert triton.infer("fraud", [entry]).as_numpy("output").shape == (1, 1)
