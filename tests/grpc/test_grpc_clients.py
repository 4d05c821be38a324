"""The gRPC port through real clients: tritonclient.grpc (Open Inference Protocol),
tensorflow-serving-api's stubs (PredictionService, ModelService), grpcio-health-checking
and reflection. Values are compared with Keras' own, run in the test process."""

from __future__ import annotations

import grpc
import keras
import numpy as np
import pytest
import requests
import tensorflow as tf
import tritonclient.grpc as tg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

MODELS = ["fraud", "fashion", "pair", "tokens"]
OIP = "inference.GRPCInferenceService"


def keras_outputs(model, x, names):
    """Keras' values of the named layers (their last call) for ``x``."""
    sub = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    out = sub(x, training=False)
    out = out if isinstance(out, list | tuple) else [out]
    return {n: np.asarray(v) for n, v in zip(names, out, strict=True)}


def oip_inputs(model, x):
    """tritonclient InferInputs with raw contents, one per model input."""
    arrays = (
        x if isinstance(x, dict) else {"input" if model in ("fraud", "fashion") else "tokens": x}
    )
    found = []
    for name, arr in arrays.items():
        datatype = "INT32" if arr.dtype == np.int32 else "FP32"
        entry = tg.InferInput(name, list(arr.shape), datatype)
        entry.set_data_from_numpy(arr)
        found.append(entry)
    return found


def model_output(model) -> str:
    return {"fraud": "output", "fashion": "output", "pair": "score", "tokens": "probs"}[model]


# -- Open Inference Protocol through tritonclient.grpc ---------------------------------------
def test_server_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata(as_json=True)
    assert meta["name"] == "layerscope" and "layer_outputs" in meta["extensions"]
    for model in MODELS:
        assert triton.is_model_ready(model)
        assert triton.is_model_ready(model, "1")


@pytest.mark.parametrize("model", MODELS)
def test_infer_each_model_matches_keras(triton, keras_models, samples, model):
    x = samples[model]
    result = triton.infer(model, oip_inputs(model, x), request_id="r-7")
    name = model_output(model)
    ref = keras_outputs(keras_models[model], x, [name])[name]
    got = result.as_numpy(name)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= 1e-5
    response = result.get_response()
    assert response.model_name == model and response.model_version == "1"
    assert response.id == "r-7"


@pytest.mark.parametrize("model", MODELS)
def test_metadata_lists_inputs_and_every_layer(triton, keras_models, model):
    meta = triton.get_model_metadata(model, as_json=True)
    assert meta["versions"] == ["1"] and meta["platform"] == "tensorflow_keras"
    names = [o["name"] for o in meta["outputs"]]
    assert names[0] == model_output(model)
    layers = [
        layer.name
        for layer in keras_models[model].layers
        if layer.name not in [i.name for i in keras_models[model].inputs]
    ]
    assert set(layers) <= set(names), (layers, names)
    dtypes = {i["name"]: i["datatype"] for i in meta["inputs"]}
    if model == "tokens":
        assert dtypes == {"tokens": "INT32"}
    if model == "pair":
        assert dtypes == {"numeric": "FP32", "extra": "FP32"}


def test_hidden_layers_from_one_call(triton, keras_models, samples):
    x = samples["fashion"]
    names = ["conv2d_1", "dense_1", "output"]
    result = triton.infer(
        "fashion", oip_inputs("fashion", x), outputs=[tg.InferRequestedOutput(n) for n in names]
    )
    ref = keras_outputs(keras_models["fashion"], x, names)
    assert [o.name for o in result.get_response().outputs] == names
    for n in names:
        assert result.as_numpy(n).shape == ref[n].shape
        assert np.max(np.abs(result.as_numpy(n) - ref[n])) <= 1e-5, n


def test_every_hidden_layer_of_the_multi_input_model(triton, keras_models, samples):
    meta = triton.get_model_metadata("pair", as_json=True)
    names = [o["name"] for o in meta["outputs"]]
    result = triton.infer(
        "pair",
        oip_inputs("pair", samples["pair"]),
        outputs=[tg.InferRequestedOutput(n) for n in names],
    )
    ref = keras_outputs(keras_models["pair"], samples["pair"], names)
    for n in names:
        assert np.max(np.abs(result.as_numpy(n) - ref[n])) <= 1e-5, n


def test_embedding_layer_of_the_int32_model(triton, keras_models, samples):
    x = samples["tokens"]
    result = triton.infer(
        "tokens",
        oip_inputs("tokens", x),
        outputs=[tg.InferRequestedOutput("embedding"), tg.InferRequestedOutput("probs")],
    )
    ref = keras_outputs(keras_models["tokens"], x, ["embedding", "probs"])
    assert result.as_numpy("embedding").shape == (3, 6, 4)
    assert np.max(np.abs(result.as_numpy("embedding") - ref["embedding"])) <= 1e-6


def test_typed_contents_equal_raw_contents(channel, samples):
    """A request with InferTensorContents (not raw) gets the same answer."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    x = samples["fraud"]
    typed = service_pb2.ModelInferRequest(model_name="fraud")
    t = typed.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.reshape(-1).tolist())
    raw = service_pb2.ModelInferRequest(model_name="fraud")
    raw.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    raw.raw_input_contents.append(x.tobytes())
    a, b = stub.ModelInfer(typed, timeout=30), stub.ModelInfer(raw, timeout=30)
    assert a.raw_output_contents == b.raw_output_contents
    ids = service_pb2.ModelInferRequest(model_name="tokens")
    t = ids.inputs.add(name="tokens", datatype="INT64", shape=[3, 6])
    t.contents.int64_contents.extend(samples["tokens"].reshape(-1).tolist())
    out = stub.ModelInfer(ids, timeout=30)
    assert np.frombuffer(out.raw_output_contents[0], "<f4").reshape(3, 3).sum(1) == pytest.approx(
        1, abs=1e-5
    )


def test_request_id_comes_back_in_trailing_metadata(channel):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    _, call = stub.ServerLive.with_call(
        service_pb2.ServerLiveRequest(), metadata=(("x-request-id", "abc-123"),), timeout=10
    )
    assert ("x-request-id", "abc-123") in call.trailing_metadata()
    _, call = stub.ServerLive.with_call(service_pb2.ServerLiveRequest(), timeout=10)
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 32


# -- TensorFlow Serving through its own stubs ------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_tfs_predict_each_model(channel, keras_models, samples, model):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = samples[model]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    arrays = (
        x if isinstance(x, dict) else {"input" if model in ("fraud", "fashion") else "tokens": x}
    )
    for name, arr in arrays.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(arr))
    response = stub.Predict(request, timeout=30)
    name = model_output(model)
    ref = keras_outputs(keras_models[model], x, [name])[name]
    assert list(response.outputs) == [name]
    assert np.max(np.abs(tf.make_ndarray(response.outputs[name]) - ref)) <= 1e-5
    assert response.model_spec.name == model and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_tfs_output_filter_takes_layer_names(channel, keras_models, samples):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = samples["fraud"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fraud"
    request.model_spec.version.value = 1
    request.inputs["input"].CopyFrom(tf.make_tensor_proto(x))
    request.output_filter.extend(["dense_1", "output"])
    response = stub.Predict(request, timeout=30)
    ref = keras_outputs(keras_models["fraud"], x, ["dense_1", "output"])
    assert set(response.outputs) == {"dense_1", "output"}
    for n in ("dense_1", "output"):
        assert np.max(np.abs(tf.make_ndarray(response.outputs[n]) - ref[n])) <= 1e-5


def test_tfs_float_val_and_string_images(channel, samples):
    """TensorProtos built by hand: float_val instead of tensor_content, and PNG files in
    string_val for an image model (TF Serving's b64 twin)."""
    import io

    from PIL import Image

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = samples["fraud"]
    a = predict_pb2.PredictRequest()
    a.model_spec.name = "fraud"
    proto = a.inputs["input"]
    proto.dtype = tf.float32.as_datatype_enum
    proto.tensor_shape.dim.add(size=3)
    proto.tensor_shape.dim.add(size=30)
    proto.float_val.extend(x.reshape(-1).tolist())
    b = predict_pb2.PredictRequest()
    b.model_spec.name = "fraud"
    b.inputs["input"].CopyFrom(tf.make_tensor_proto(x))
    assert stub.Predict(a, timeout=30) == stub.Predict(b, timeout=30)
    pixels = samples["fashion"][0, :, :, 0].astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    c = predict_pb2.PredictRequest()
    c.model_spec.name = "fashion"
    c.inputs["input"].CopyFrom(tf.make_tensor_proto([buf.getvalue()], shape=[1]))
    d = predict_pb2.PredictRequest()
    d.model_spec.name = "fashion"
    d.inputs["input"].CopyFrom(tf.make_tensor_proto(pixels[None, :, :, None].astype(np.float32)))
    assert (
        stub.Predict(c, timeout=30).outputs["output"]
        == stub.Predict(d, timeout=30).outputs["output"]
    )


@pytest.mark.parametrize("model", MODELS)
def test_tfs_model_metadata(channel, model):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    response = stub.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert list(signature.outputs) == [model_output(model)]
    if model == "tokens":
        assert signature.inputs["tokens"].dtype == tf.int32.as_datatype_enum
        assert [d.size for d in signature.inputs["tokens"].tensor_shape.dim] == [-1, 6]
    if model == "pair":
        assert set(signature.inputs) == {"numeric", "extra"}


def test_tfs_model_status(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "fraud"
    status = stub.GetModelStatus(request, timeout=10).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in status] == [(1, 30, 0)]
    request.model_spec.version.value = 1
    assert len(stub.GetModelStatus(request, timeout=10).model_version_status) == 1


# -- health, reflection, metrics --------------------------------------------------------------
@pytest.mark.parametrize(
    "service", ["", OIP, "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"]
)
def test_health_check(channel, service):
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_every_service(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    names = {s.name for s in response.list_services_response.service}
    assert {
        OIP,
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_metrics_count_grpc_calls_by_protocol(server, triton, samples):
    triton.infer("fraud", oip_inputs("fraud", samples["fraud"]))
    with pytest.raises(tg.InferenceServerException):
        triton.infer("nope", oip_inputs("fraud", samples["fraud"]))
    text = requests.get(server.url + "/metrics", timeout=10).text
    assert (
        'layerscope_grpc_requests_total{code="OK",method="/inference.GRPCInferenceService/'
        'ModelInfer",model="fraud",version="1"}' in text
    )
    assert (
        'code="NOT_FOUND",method="/inference.GRPCInferenceService/ModelInfer",model="unknown"'
        in text
    )
    assert (
        'layerscope_requests_total{code="200",endpoint="/inference.GRPCInferenceService/'
        'ModelInfer",method="GRPC",model="fraud",version="1"}' in text
    )
