"""Open Inference Protocol (V2) REST, per /work/shared/specs/open-inference-protocol.

Every layer of the model is an output tensor named after the layer, listed in the model
metadata so an unchanged V2 client can discover it and ask for it in ``outputs``; the
final layer (named ``output``) is the prediction and what an ``infer`` without
``outputs`` returns. Requested layers come out of the same forward pass as the
prediction. Health endpoints live in ``health.py``."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response, jsonify, request

from service import binary_tensors, inputs, security
from service.api import compute, parse_version, repository, resolve, settings
from service.errors import InvalidInput, ModelNotFound
from service.repository import READY
from service.security import require_introspection

bp = Blueprint("v2", __name__, url_prefix="/v2")

SERVER_NAME = "layerscope"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["layer_outputs", "binary_tensor_data"]


def _version(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    version = parse_version(text)
    if version is None:
        raise ModelNotFound(
            f"model {name!r} has no version {text!r}; versions are positive integers"
        )
    return version


@bp.get("")
@bp.get("/")
def server_metadata():
    return jsonify({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


def _shape(shape) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def _outputs(runtime, listed: bool = True) -> list[dict]:
    """The prediction output first, then every other layer in model order. ``listed``:
    for metadata, where the hidden layers are only shown to requests allowed to
    introspect (an infer naming one is refused with 401/403 instead)."""
    names = [runtime.output_layer_name]
    if not listed or security.introspection_allowed():
        names += [n for n in runtime.output_layer_names if n != runtime.output_layer_name]
    return [
        {"name": n, "datatype": "FP32", "shape": _shape(runtime.layer_shapes[n])} for n in names
    ]


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    runtime = resolve(name, _version(name, version))
    versions = repository().versions(name)
    return jsonify(
        {
            "name": runtime.name,
            "versions": [str(v) for v in sorted(versions)],
            "platform": runtime.platform,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *runtime.input_shape]}],
            "outputs": _outputs(runtime),
        }
    )


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    repo = repository()
    number = _version(name, version)
    ready = repo.model_ready(name) if number is None else repo.state(name, number).status == READY
    return jsonify({"name": name, "ready": ready}), (200 if ready else 503)


def _requested_outputs(body: dict, runtime) -> list[str]:
    outputs = body.get("outputs")
    if outputs is None:
        return [runtime.output_layer_name]
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InvalidInput(
            f"'outputs' must be a list of objects like {{'name': 'output'}}; got "
            f"{str(outputs)[:80]}"
        )
    names = [o["name"] for o in outputs]
    available = [o["name"] for o in _outputs(runtime, listed=False)]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InvalidInput(
            f"unknown output {', '.join(repr(u) for u in unknown)}; available outputs: "
            f"{', '.join(available)}"
        )
    return list(dict.fromkeys(names))


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    runtime = resolve(name, _version(name, version))
    cfg = settings()
    body, binary = _read_request(cfg)
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or len(tensors) != 1:
        got = f"{len(tensors)} tensors" if isinstance(tensors, list) else repr(tensors)[:40]
        raise InvalidInput(
            f"'inputs' must be a list with exactly one tensor named 'input'; got {got}"
        )
    tensor = tensors[0]
    if isinstance(tensor, dict) and tensor.get("name") != "input":
        raise InvalidInput(
            f"unknown input tensor {tensor.get('name')!r}; model {runtime.name!r} has one "
            "input named 'input'"
        )
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string; got {request_id!r}")
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"'parameters' must be an object; got {params!r}")
    names = _requested_outputs(body, runtime)
    as_binary = _binary_outputs(body, params or {}, names)
    if any(n != runtime.output_layer_name for n in names):
        require_introspection()  # hidden-layer outputs reveal model internals
    x = _input_batch(tensor, binary, runtime, cfg)
    final = runtime.output_layer_name
    extra = [n for n in names if n != final]
    result = compute(runtime, x, extra, endpoint="v2_infer")
    values = {final: result.raw, **result.layers}
    response = {
        "model_name": runtime.name,
        "model_version": str(runtime.version),
        "outputs": [
            {"name": n, "shape": list(values[n].shape), "datatype": "FP32"}
            | ({} if n in as_binary else {"data": values[n].reshape(-1).tolist()})
            for n in names
        ],
    }
    if request_id is not None:
        response["id"] = request_id
    if not as_binary:
        return jsonify(response)
    data, headers = binary_tensors.encode_response(response, {n: values[n] for n in as_binary})
    return Response(data, headers=headers)


# -- binary tensor data extension (service/binary_tensors.py) ------------------------------------
def _read_request(cfg) -> tuple[dict, dict]:
    """(JSON request, {input name: binary values}). Without the extension's header the
    body is plain JSON, as before; with it, any Content-Type is accepted (clients send
    application/octet-stream or none)."""
    length = request.headers.get(binary_tensors.HEADER)
    if length is None:
        return inputs.read_json(request, cfg.max_body_bytes), {}
    inputs.check_size(request, cfg.max_body_bytes)
    try:
        return binary_tensors.parse_request(request.get_data(cache=True), length)
    except binary_tensors.BinaryTensorError as exc:
        raise InvalidInput(str(exc)) from None


def _binary_outputs(body: dict, params: dict, names: list[str]) -> set[str]:
    """Outputs to return as binary: ``parameters.binary_data`` of each requested output,
    else the request's ``parameters.binary_data_output`` (False by default)."""
    default = params.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInput(f"parameters.binary_data_output is {default!r}; expected true or false")
    flags: dict[str, bool] = {}
    for i, out in enumerate(body.get("outputs") or []):
        out_params = out.get("parameters")
        if out_params is None:
            out_params = {}
        if not isinstance(out_params, dict):
            raise InvalidInput(f"outputs[{i}].parameters must be an object; got {out_params!r}")
        flag = out_params.get("binary_data", default)
        if not isinstance(flag, bool):
            raise InvalidInput(
                f"outputs[{i}].parameters.binary_data is {flag!r}; expected true or false"
            )
        flags.setdefault(out["name"], flag)
    return {n for n in names if flags.get(n, default)}


def _input_batch(tensor, binary: dict, runtime, cfg) -> np.ndarray:
    """The model's float32 batch from the one input tensor, JSON or binary."""
    if "input" in binary:
        return _binary_batch(tensor, binary["input"], runtime, cfg)
    params = tensor.get("parameters") if isinstance(tensor, dict) else None
    if isinstance(params, dict) and "binary_data_size" in params:
        raise InvalidInput(
            f"inputs[0] has parameters.binary_data_size ({params['binary_data_size']!r}) but "
            f"the request has no {binary_tensors.HEADER} header: send it with the byte "
            "length of the JSON part, the binary data after the JSON"
        )
    return inputs.decode_v2_tensor(tensor, runtime, cfg.max_batch_size, cfg.max_image_pixels)


def _binary_batch(tensor: dict, value, runtime, cfg) -> np.ndarray:
    """Binary input values -> the float32 batch, with the JSON path's checks: batch size,
    shape against the model's input, NaN / Inf, the image value range. Integer datatypes
    need no range check: raw bytes of an INT8 cannot hold anything but an INT8."""
    spec = runtime.metadata["input"]
    shape_spec = tuple(int(d) for d in spec["shape"])
    shape, datatype = tensor["shape"], tensor["datatype"]
    if not shape:
        raise InvalidInput(
            f"inputs[0].shape is []; expected [n, {', '.join(map(str, shape_spec))}]"
        )
    inputs.check_batch(shape[0], cfg.max_batch_size)
    if datatype == "BYTES":
        return _binary_images(value, shape, spec, runtime, cfg)
    if datatype not in inputs.V2_DATATYPES:
        raise InvalidInput(
            f"inputs[0].datatype {datatype!r} is not supported for this model; expected one "
            f"of {', '.join(inputs.V2_DATATYPES)} (or BYTES with PNG / JPEG files)"
        )
    inputs.check_v2_shape(shape, spec)
    where = "inputs[0] (binary data)"
    batch = inputs.to_float32(value, where, "numbers").reshape((shape[0], *shape_spec))
    if spec.get("kind") == "image":
        batch = inputs.check_range(batch, where, spec.get("value_range"))
    return batch


def _binary_images(elements: list, shape: list[int], spec: dict, runtime, cfg) -> np.ndarray:
    """BYTES: one encoded PNG / JPEG file per batch row (the binary twin of base64)."""
    if spec.get("kind") != "image":
        raise InvalidInput(
            "inputs[0].datatype BYTES is only accepted for image models (PNG or JPEG files); "
            f"model {runtime.name!r} expects numbers"
        )
    if len(elements) != shape[0]:
        raise InvalidInput(
            f"inputs[0] has {len(elements)} BYTES elements for shape {shape}; expected one "
            "PNG or JPEG file per batch row"
        )
    return np.stack(
        [
            inputs.decode_image_bytes(
                data, spec["shape"], f"inputs[0] BYTES element {i}", cfg.max_image_pixels
            )
            for i, data in enumerate(elements)
        ]
    )
