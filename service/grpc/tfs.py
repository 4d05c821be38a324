"""TensorFlow Serving over gRPC: ``tensorflow.serving.PredictionService`` (Predict,
GetModelMetadata) and ``tensorflow.serving.ModelService`` (GetModelStatus), with the
messages and stubs of the ``tensorflow-serving-api`` package.

The methods mirror ``service/api/tfserving.py``: the same model status, the same
``serving_default`` signature, the model's own outputs (binary models: the sigmoid, shape
(n, 1)). ``output_filter`` names outputs to return, and accepts any layer name too (the
REST ``output_layers`` extension): those come from the same forward pass. Inputs are the
``inputs`` map by input name; each ``TensorProto`` (``tensor_content`` or the typed
``*_val`` fields; DT_STRING: PNG / JPEG files for image inputs) passes the checks of the
REST binary path (``v2._binary_batch``)."""

from __future__ import annotations

import math

import numpy as np
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
)

from service import inputs
from service.api import compute, repository, resolve, settings, tfserving, v2
from service.errors import InvalidInput, ModelNotFound
from service.grpc.common import Methods, register, require_introspection
from service.repository import FAILED, LOADING, READY, SKIPPED

PREDICTION = "tensorflow.serving.PredictionService"
MODEL = "tensorflow.serving.ModelService"

# TensorProto dtype -> (OIP datatype, the repeated field of its values)
DTYPES = {
    types_pb2.DT_FLOAT: ("FP32", "float_val"),
    types_pb2.DT_DOUBLE: ("FP64", "double_val"),
    types_pb2.DT_HALF: ("FP16", "half_val"),
    types_pb2.DT_INT8: ("INT8", "int_val"),
    types_pb2.DT_INT16: ("INT16", "int_val"),
    types_pb2.DT_INT32: ("INT32", "int_val"),
    types_pb2.DT_INT64: ("INT64", "int64_val"),
    types_pb2.DT_UINT8: ("UINT8", "int_val"),
    types_pb2.DT_UINT16: ("UINT16", "int_val"),
    types_pb2.DT_UINT32: ("UINT32", "uint32_val"),
    types_pb2.DT_UINT64: ("UINT64", "uint64_val"),
    types_pb2.DT_BOOL: ("BOOL", "bool_val"),
    types_pb2.DT_STRING: ("BYTES", "string_val"),
}
_VALUE_FIELDS = sorted({field for _, field in DTYPES.values()})
TF_DTYPE = {name: getattr(types_pb2, code) for name, code in tfserving.TF_DTYPES.items()}
# ModelVersionStatus.State and tensorflow.error.Code values
STATE = {LOADING: 20, READY: 30, FAILED: 50, SKIPPED: 50}
ERROR_CODE = {"OK": 0, "UNKNOWN": 2, "DATA_LOSS": 15}


def _dtype_name(dtype: int) -> str:
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return str(dtype)


def _version(spec) -> int | None:
    """``model_spec.version`` (an Int64Value) when set; labels are not served."""
    if spec.version_label:
        raise ModelNotFound(
            f"model {spec.name!r}: version labels are not served (got "
            f"{spec.version_label!r}); ask for model_spec.version or the default version"
        )
    if spec.HasField("version"):
        number = spec.version.value
        if number <= 0:
            raise ModelNotFound(
                f"model {spec.name!r} has no version {number}; versions are positive integers"
            )
        return number
    return None


def _shape(proto: tensor_shape_pb2.TensorShapeProto, where: str) -> list[int]:
    if proto.unknown_rank:
        raise InvalidInput(f"{where}.tensor_shape has unknown_rank; expected a known shape")
    dims = [d.size for d in proto.dim]
    if not dims or any(d < 0 for d in dims):
        raise InvalidInput(
            f"{where}.tensor_shape is {dims}; expected non-negative sizes, the batch first"
        )
    return dims


def decode_tensor(proto: tensor_pb2.TensorProto, where: str) -> tuple[dict, object]:
    """(``{"shape", "datatype"}`` in OIP terms, the values: an array, or a list of bytes
    for DT_STRING). Values come from ``tensor_content`` or the dtype's ``*_val`` field:
    as many as the shape holds, or one, repeated (what TensorFlow does with one value)."""
    found = DTYPES.get(proto.dtype)
    if found is None:
        raise InvalidInput(
            f"{where}.dtype is {_dtype_name(proto.dtype)}; expected one of "
            f"{', '.join(_dtype_name(d) for d in DTYPES)}"
        )
    datatype, field = found
    shape = _shape(proto.tensor_shape, where)
    entry = {"shape": shape, "datatype": datatype}
    count = math.prod(shape)
    present = {f.name for f, _ in proto.ListFields()}  # one call, not a getattr per field
    other = [f for f in _VALUE_FIELDS if f != field and f in present]
    if other:
        raise InvalidInput(
            f"{where} has {other[0]} for dtype {_dtype_name(proto.dtype)}; expected {field} "
            "or tensor_content"
        )
    values = getattr(proto, field)
    if "tensor_content" in present:
        if datatype == "BYTES":
            raise InvalidInput(f"{where}: DT_STRING values go in string_val, not tensor_content")
        if len(values):
            raise InvalidInput(
                f"{where} has both tensor_content and {field}; send the values one way"
            )
        dtype = np.dtype("<f2") if datatype == "FP16" else _np_dtype(datatype)
        need = count * dtype.itemsize
        if len(proto.tensor_content) != need:
            raise InvalidInput(
                f"{where}.tensor_content has {len(proto.tensor_content)} bytes; shape "
                f"{shape} of {_dtype_name(proto.dtype)} needs {need}"
            )
        return entry, np.frombuffer(proto.tensor_content, dtype).reshape(shape)
    if len(values) not in (count, 1) or (count == 0 and len(values)):
        raise InvalidInput(
            f"{where}.{field} has {len(values)} values; shape {shape} needs {count} (or one, "
            "repeated)"
        )
    if datatype == "BYTES":
        elements = list(values)
        return entry, elements * count if len(elements) == 1 and count > 1 else elements
    if datatype == "FP16":  # half_val holds the IEEE half bit patterns
        arr = np.array(values, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
            raise InvalidInput(f"{where}.half_val holds values that are not 16-bit patterns")
        arr = arr.astype(np.uint16).view(np.float16)
    else:
        dtype = _np_dtype(datatype)
        if dtype.kind in "iu":
            wide = np.array(values, dtype=np.uint64 if dtype.kind == "u" else np.int64)
            info = np.iinfo(dtype)
            if wide.size and (wide.min() < info.min or wide.max() > info.max):
                raise InvalidInput(
                    f"{where}.{field} does not fit {_dtype_name(proto.dtype)} (integers in "
                    f"[{info.min}, {info.max}]); got values in [{wide.min()}, {wide.max()}]"
                )
            arr = wide.astype(dtype)
        else:
            arr = np.array(values, dtype=dtype)
    if arr.size == 1 and count != 1:
        arr = np.repeat(arr, count)
    return entry, arr.reshape(shape)


def _np_dtype(datatype: str) -> np.dtype:
    from service.binary_tensors import DATATYPES

    return DATATYPES[datatype]


def encode_tensor(arr: np.ndarray, into: tensor_pb2.TensorProto | None = None):
    """A float32 array as a TensorProto (``tensor_content``), written ``into`` a message
    of the response when given (no copy)."""
    arr = np.ascontiguousarray(arr, dtype="<f4")
    proto = tensor_pb2.TensorProto() if into is None else into
    proto.dtype = types_pb2.DT_FLOAT
    dims = proto.tensor_shape.dim
    for d in arr.shape:
        dims.add().size = d
    proto.tensor_content = arr.tobytes()
    return proto


def _batch(request, runtime):
    cfg = settings()
    names = [s["name"] for s in runtime.inputs]
    keys = list(request.inputs.keys())
    unknown = [k for k in keys if k not in names]
    missing = [n for n in names if n not in request.inputs]
    if unknown or missing:
        parts = ([f"unknown inputs {unknown}"] if unknown else []) + (
            [f"missing inputs {missing}"] if missing else []
        )
        raise InvalidInput(
            f"inputs: {'; '.join(parts)}; model {runtime.name!r} takes "
            + (f"one input named {names[0]!r}" if len(names) == 1 else f"the inputs {names}")
        )
    batch = {}
    for spec in runtime.inputs:
        where = f"inputs[{spec['name']!r}]"
        entry, value = decode_tensor(request.inputs[spec["name"]], where)
        batch[spec["name"]] = v2._binary_batch(entry, value, runtime, cfg, spec, where)
    return inputs.pack_batch(batch)


def _spec(runtime, spec) -> None:
    spec.name = runtime.name
    spec.version.value = runtime.version
    spec.signature_name = tfserving.SIGNATURE


def _signature(request) -> None:
    signature = request.model_spec.signature_name
    if signature not in (tfserving.SIGNATURE, ""):
        raise InvalidInput(
            f"signature_name {signature!r} not found; the only one is {tfserving.SIGNATURE!r}"
        )


def predict(request, call):
    runtime = resolve(request.model_spec.name, _version(request.model_spec))
    _signature(request)
    outputs = [o["name"] for o in runtime.outputs]
    wanted = list(dict.fromkeys(request.output_filter)) or outputs
    extra = [n for n in wanted if n not in outputs]
    if extra:
        require_introspection(call)  # hidden-layer outputs reveal model internals
        runtime.check_layers(extra)  # NOT_FOUND naming the available layers
    x = _batch(request, runtime)
    result = compute(runtime, x, extra, endpoint="grpc_tfserving_predict")
    values = {**result.outputs, **result.layers}
    response = predict_pb2.PredictResponse()
    _spec(runtime, response.model_spec)
    for n in wanted:
        encode_tensor(values[n], response.outputs[n])
    return response


def _tensor_info(name: str, shape, dtype: str = "float32") -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(
        name=f"{tfserving.SIGNATURE}_{name}:0",
        dtype=TF_DTYPE.get(dtype, types_pb2.DT_FLOAT),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[
                tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else int(d))
                for d in shape
            ]
        ),
    )


def get_model_metadata(request, call):
    runtime = resolve(request.model_spec.name, _version(request.model_spec))
    _signature(request)
    fields = list(request.metadata_field)
    if fields != ["signature_def"]:
        raise InvalidInput(
            f"metadata_field is {fields}; the only metadata served is ['signature_def']"
        )
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for s in runtime.inputs:
        signature.inputs[s["name"]].CopyFrom(
            _tensor_info(s["name"], [None, *s["shape"]], s["dtype"])
        )
    for o in runtime.outputs:
        signature.outputs[o["name"]].CopyFrom(_tensor_info(o["name"], [None, *o["shape"]]))
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def[tfserving.SIGNATURE].CopyFrom(signature)
    packed = any_pb2.Any()
    packed.Pack(signatures)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _spec(runtime, response.model_spec)
    response.metadata["signature_def"].CopyFrom(packed)
    return response


def get_model_status(request, call):
    spec = request.model_spec
    number = _version(spec)
    repo = repository()
    versions = (
        [repo.state(spec.name, number)]
        if number is not None
        else [s for _, s in sorted(repo.versions(spec.name).items(), reverse=True)]
    )
    response = get_model_status_pb2.GetModelStatusResponse()
    for state in versions:
        status = tfserving._status(state)
        entry = response.model_version_status.add()
        entry.version = state.version
        entry.state = STATE[state.status]
        entry.status.error_code = ERROR_CODE.get(status["status"]["error_code"], 2)
        entry.status.error_message = status["status"]["error_message"]
    return response


def _model_name(request) -> str:
    return request.model_spec.name


def add(server, app) -> list[str]:
    """Serve Predict and GetModelMetadata (Classify, Regress, MultiInference answer
    UNIMPLEMENTED) and GetModelStatus (HandleReloadConfigRequest too: the admin API
    reloads)."""
    methods = Methods(app)
    prediction = {
        "Predict": methods.rpc(f"/{PREDICTION}/Predict", predict, _model_name),
        "GetModelMetadata": methods.rpc(
            f"/{PREDICTION}/GetModelMetadata", get_model_metadata, _model_name
        ),
    }
    status = {
        "GetModelStatus": methods.rpc(
            f"/{MODEL}/GetModelStatus", get_model_status, _model_name, model=False
        )
    }
    return [
        register(
            server,
            prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
            prediction,
        ),
        register(server, model_service_pb2.DESCRIPTOR.services_by_name["ModelService"], status),
    ]
