"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

Messages and stubs are Triton's ``grpc_service.proto`` as ``tritonclient`` ships them
(``tritonclient.grpc.service_pb2``): package ``inference``, a superset of the OIP's
``grpc_predict_v2.proto`` with the same field numbers, so KServe's and Triton's clients
both talk to it. The methods mirror ``service/api/v2.py``: every layer is an output tensor
(listed in ``ModelMetadata`` to callers allowed to introspect), named in ``outputs`` it
comes back from the same forward pass; inputs are one tensor per model input, by name, as
typed ``contents`` or ``raw_input_contents``, checked by the same code as the REST binary
extension (``v2._binary_batch``). Outputs always come back as ``raw_output_contents``
(row-major little-endian), which every client of the protocol reads."""

from __future__ import annotations

import math

import numpy as np
from tritonclient.grpc import service_pb2

from service import binary_tensors, inputs
from service.api import compute, parse_version, repository, resolve, settings, v2
from service.errors import InvalidInput, ModelNotFound
from service.grpc.common import (
    Call,
    Methods,
    RawAnswer,
    introspection_allowed,
    register,
    require_introspection,
)
from service.repository import READY

SERVICE = "inference.GRPCInferenceService"
DESCRIPTOR = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]

# OIP datatype -> the InferTensorContents field holding its values (FP16 / BF16: raw only)
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELDS = sorted(set(CONTENTS.values()))


def _version(name: str, text: str) -> int | None:
    if not text:
        return None
    version = parse_version(text)
    if version is None:
        raise ModelNotFound(
            f"model {name!r} has no version {text!r}; versions are positive integers"
        )
    return version


def _names(runtime, call: Call | None) -> list[str]:
    """The model's outputs, then every other layer (for metadata: only to callers allowed
    to introspect; ``call`` None: all, to check a request's ``outputs``)."""
    names = [o["name"] for o in runtime.outputs]
    if call is None or introspection_allowed(call):
        names += [n for n in runtime.output_layer_names if n not in names]
    return names


def server_live(request, call):
    return service_pb2.ServerLiveResponse(live=True)


def server_ready(request, call):
    ready, _ = repository().readiness()
    return service_pb2.ServerReadyResponse(ready=ready)


def model_ready(request, call):
    repo = repository()
    number = _version(request.name, request.version)
    if number is None:
        ready = repo.model_ready(request.name)
    else:
        ready = repo.state(request.name, number).status == READY
    return service_pb2.ModelReadyResponse(ready=ready)


def server_metadata(request, call):
    return service_pb2.ServerMetadataResponse(
        name=v2.SERVER_NAME, version=v2.SERVER_VERSION, extensions=["layer_outputs"]
    )


def model_metadata(request, call):
    runtime = resolve(request.name, _version(request.name, request.version))
    versions = repository().versions(request.name)
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    return service_pb2.ModelMetadataResponse(
        name=runtime.name,
        versions=[str(v) for v in sorted(versions)],
        platform=runtime.platform,
        inputs=[
            tensor(
                name=s["name"],
                datatype=inputs.v2_datatype(s),
                shape=v2._shape([None, *s["shape"]]),
            )
            for s in runtime.inputs
        ],
        outputs=[
            tensor(name=n, datatype="FP32", shape=v2._shape(runtime.layer_shapes[n]))
            for n in _names(runtime, call)
        ],
    )


def _requested(request, runtime, call: Call) -> list[str]:
    model_outputs = [o["name"] for o in runtime.outputs]
    if not request.outputs:
        return model_outputs
    available = _names(runtime, None)
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InvalidInput(
            f"unknown output {', '.join(repr(u) for u in unknown)}; available outputs: "
            f"{', '.join(available)}"
        )
    for i, out in enumerate(request.outputs):
        if "classification" in out.parameters:
            raise InvalidInput(
                f"outputs[{i}].parameters.classification is not supported; ask for the "
                "output itself (probabilities) and rank its classes"
            )
    names = list(dict.fromkeys(names))
    if any(n not in model_outputs for n in names):
        require_introspection(call)  # hidden-layer outputs reveal model internals
    return names


def _tensor_value(tensor, raw: bytes | None, entry: dict, where: str):
    """The values of one input tensor: its raw contents (the REST binary extension's
    reader and checks) or its typed ``contents``, as an array (BYTES: a list of bytes)."""
    if raw is not None:
        binary_tensors._check_entry(entry, where, len(raw))
        return binary_tensors._read_tensor(raw, 0, len(raw), entry, where)
    datatype, shape = entry["datatype"], entry["shape"]
    field = CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(
            f"{where}.datatype {datatype!r} is not supported in 'contents'; expected one of "
            f"{', '.join(CONTENTS)}" + (" (FP16: send raw_input_contents)" * (datatype == "FP16"))
        )
    if not shape or any(d < 0 for d in shape):
        raise InvalidInput(
            f"{where}.shape is {shape}; expected a list of non-negative integers, the batch first"
        )
    contents = tensor.contents
    other = [f for f in _FIELDS if f != field and len(getattr(contents, f))]
    if other:
        raise InvalidInput(
            f"{where}.contents has {other[0]} for datatype {datatype}; expected {field}"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{where}.contents.{field} has {len(values)} elements; shape {shape} needs {count}"
        )
    if datatype == "BYTES":
        return list(values)
    dtype = binary_tensors.DATATYPES[datatype]
    if dtype.kind in "iu":
        wide = np.array(values, dtype=np.uint64 if dtype.kind == "u" else np.int64)
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(
                f"{where}.contents.{field} does not fit datatype {datatype} (integers in "
                f"[{info.min}, {info.max}]); got values in [{wide.min()}, {wide.max()}]"
            )
        return wide.astype(dtype).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def _batch(request, runtime):
    cfg = settings()
    raw = request.raw_input_contents
    entries = [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in request.inputs
    ]
    if raw and len(raw) != len(entries):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(entries)} input tensors; "
            "expected one per input tensor, in order (or none, with each tensor's contents)"
        )
    if raw:
        typed = [i for i, t in enumerate(request.inputs) if t.HasField("contents")]
        if typed:
            raise InvalidInput(
                f"inputs[{typed[0]}] has contents and the request has raw_input_contents; "
                "send every input's values one way: all raw or all in contents"
            )
    index = {id(e): i for i, e in enumerate(entries)}
    batch = {}
    for spec, entry, where in v2._input_tensors({"inputs": entries}, runtime):
        i = index[id(entry)]
        value = _tensor_value(request.inputs[i], raw[i] if raw else None, entry, where)
        batch[spec["name"]] = v2._binary_batch(entry, value, runtime, cfg, spec, where)
    return inputs.pack_batch(batch)


def model_infer(request, call):
    runtime = resolve(request.model_name, _version(request.model_name, request.model_version))
    names = _requested(request, runtime, call)
    x = _batch(request, runtime)
    model_outputs = {o["name"] for o in runtime.outputs}
    extra = [n for n in names if n not in model_outputs]
    result = compute(runtime, x, extra, endpoint="grpc_model_infer")
    values = {**result.outputs, **result.layers}
    response = service_pb2.ModelInferResponse(
        model_name=runtime.name, model_version=str(runtime.version), id=request.id
    )
    raw = []
    for n in names:
        arr = np.ascontiguousarray(values[n], dtype="<f4")
        out = response.outputs.add()
        out.name, out.datatype = n, "FP32"
        out.shape.extend(arr.shape)
        raw.append(arr.tobytes())
    return RawAnswer(response, "raw_output_contents", raw)


def _model_name(request) -> str:
    return getattr(request, "model_name", None) or getattr(request, "name", "")


def add(server, app) -> str:
    """Serve the OIP methods on ``server`` (Triton's other methods: UNIMPLEMENTED)."""
    methods = Methods(app)
    functions = {
        "ServerLive": (server_live, False),
        "ServerReady": (server_ready, False),
        "ModelReady": (model_ready, False),
        "ServerMetadata": (server_metadata, False),
        "ModelMetadata": (model_metadata, True),
        "ModelInfer": (model_infer, True),
    }
    return register(
        server,
        DESCRIPTOR,
        {
            name: methods.rpc(f"/{SERVICE}/{name}", fn, _model_name, model)
            for name, (fn, model) in functions.items()
        },
    )
