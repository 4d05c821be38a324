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


def _model_outputs(runtime) -> list[str]:
    return [o["name"] for o in runtime.outputs]


def _outputs(runtime, listed: bool = True) -> list[dict]:
    """The model's outputs first, then every other layer in model order. ``listed``:
    for metadata, where the hidden layers are only shown to requests allowed to
    introspect (an infer naming one is refused with 401/403 instead)."""
    names = _model_outputs(runtime)
    if not listed or security.introspection_allowed():
        names += [n for n in runtime.output_layer_names if n not in names]
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
            "inputs": [
                {
                    "name": s["name"],
                    "datatype": inputs.v2_datatype(s),
                    "shape": _shape([None, *s["shape"]]),
                }
                for s in runtime.inputs
            ],
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
        return _model_outputs(runtime)
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
    tensors = _input_tensors(body, runtime)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string; got {request_id!r}")
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"'parameters' must be an object; got {params!r}")
    names = _requested_outputs(body, runtime)
    as_binary = _binary_outputs(body, params or {}, names)
    model_outputs = _model_outputs(runtime)
    if any(n not in model_outputs for n in names):
        require_introspection()  # hidden-layer outputs reveal model internals
    batch = {
        spec["name"]: _input_batch(tensor, binary, runtime, cfg, spec, where)
        for spec, tensor, where in tensors
    }
    x = inputs.pack_batch(batch)
    extra = [n for n in names if n not in model_outputs]
    result = compute(runtime, x, extra, endpoint="v2_infer")
    values = {**result.outputs, **result.layers}
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


def _input_tensors(body: dict, runtime) -> list[tuple[dict, dict, str]]:
    """``inputs`` -> (model input spec, its tensor, "inputs[i]") per model input, in model
    order: one tensor per input, by name, in any order."""
    tensors = body.get("inputs")
    names = [s["name"] for s in runtime.inputs]
    expected = (
        f"exactly one tensor named {names[0]!r}"
        if len(names) == 1
        else f"one tensor per model input, named {names}"
    )
    if not isinstance(tensors, list) or not tensors:
        got = f"{len(tensors)} tensors" if isinstance(tensors, list) else repr(tensors)[:40]
        raise InvalidInput(f"'inputs' must be a list with {expected}; got {got}")
    found: dict[str, tuple[dict, str]] = {}
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            raise InvalidInput(f"inputs[{i}] is {type(tensor).__name__}; expected a tensor object")
        name = tensor.get("name")
        if name not in names:
            raise InvalidInput(
                f"unknown input tensor {name!r}; model {runtime.name!r} has "
                + (f"one input named {names[0]!r}" if len(names) == 1 else f"the inputs {names}")
            )
        if name in found:
            raise InvalidInput(
                f"input tensor {name!r} appears twice (got {len(tensors)} tensors); "
                f"expected {expected}"
            )
        found[name] = (tensor, f"inputs[{i}]")
    missing = [n for n in names if n not in found]
    if missing:
        raise InvalidInput(f"missing input tensors {missing}; expected {expected}")
    return [(spec, *found[spec["name"]]) for spec in runtime.inputs]


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


def _input_batch(tensor, binary: dict, runtime, cfg, spec: dict, where: str) -> np.ndarray:
    """The batch of one model input from its tensor, JSON or binary."""
    name = spec["name"]
    if name in binary:
        return _binary_batch(tensor, binary[name], runtime, cfg, spec, where)
    params = tensor.get("parameters") if isinstance(tensor, dict) else None
    if isinstance(params, dict) and "binary_data_size" in params:
        raise InvalidInput(
            f"{where} has parameters.binary_data_size ({params['binary_data_size']!r}) but "
            f"the request has no {binary_tensors.HEADER} header: send it with the byte "
            "length of the JSON part, the binary data after the JSON"
        )
    return inputs.decode_v2_tensor(
        tensor, runtime, cfg.max_batch_size, cfg.max_image_pixels, spec=spec, where=where
    )


def _binary_batch(tensor: dict, value, runtime, cfg, spec: dict, where: str) -> np.ndarray:
    """Binary input values -> the batch, with the JSON path's checks: batch size, shape
    against the model's input, NaN / Inf, integer ids for integer inputs, the image value
    range. Raw bytes of an INT8 cannot hold anything but an INT8: no range check there."""
    shape, datatype = tensor["shape"], tensor["datatype"]
    if not shape:
        raise InvalidInput(f"{where}.shape is []; expected {inputs.shape_text(spec)}")
    inputs.check_batch(shape[0], cfg.max_batch_size)
    if datatype == "BYTES":
        return _binary_images(value, shape, spec, runtime, cfg, where)
    if datatype not in inputs.V2_DATATYPES:
        raise InvalidInput(
            f"{where}.datatype {datatype!r} is not supported for this model; expected one "
            f"of {', '.join(inputs.V2_DATATYPES)} (or BYTES with PNG / JPEG files)"
        )
    inputs.check_v2_shape(shape, spec, where)
    label = f"{where} (binary data)"
    if inputs.is_integer(spec):
        if not np.issubdtype(np.asarray(value).dtype, np.integer):
            raise InvalidInput(
                f"{where}.datatype is {datatype}; input {spec['name']!r} takes integer ids: "
                f"send {inputs.v2_datatype(spec)} (or another INT type)"
            )
        batch = inputs.to_integers(value, label, spec)
    else:
        batch = inputs.to_float32(value, label, "numbers")
    batch = batch.reshape(inputs.v2_batch_shape(shape, spec))
    if spec.get("kind") == "image":
        batch = inputs.check_range(batch, label, spec.get("value_range"))
    return batch


def _binary_images(
    elements: list, shape: list[int], spec: dict, runtime, cfg, where: str
) -> np.ndarray:
    """BYTES: one encoded PNG / JPEG file per batch row (the binary twin of base64)."""
    if spec.get("kind") != "image":
        raise InvalidInput(
            f"{where}.datatype BYTES is only accepted for image models (image inputs: PNG or "
            "JPEG files); "
            f"input {spec['name']!r} of model {runtime.name!r} expects numbers"
        )
    if len(elements) != shape[0]:
        raise InvalidInput(
            f"{where} has {len(elements)} BYTES elements for shape {shape}; expected one "
            "PNG or JPEG file per batch row"
        )
    return np.stack(
        [
            inputs.decode_image_bytes(
                data, spec["shape"], f"{where} BYTES element {i}", cfg.max_image_pixels
            )
            for i, data in enumerate(elements)
        ]
    )
