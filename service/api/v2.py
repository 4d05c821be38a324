"""Open Inference Protocol (V2) REST, per /work/shared/specs/open-inference-protocol.

Every layer of the model is an output tensor named after the layer, listed in the model
metadata so an unchanged V2 client can discover it and ask for it in ``outputs``; the
final layer (named ``output``) is the prediction and what an ``infer`` without
``outputs`` returns. Requested layers come out of the same forward pass as the
prediction. Health endpoints live in ``health.py``."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from service import inputs
from service.api import compute, parse_version, repository, resolve, settings
from service.errors import InvalidInput, ModelNotFound
from service.repository import READY
from service.security import require_introspection

bp = Blueprint("v2", __name__, url_prefix="/v2")

SERVER_NAME = "layerscope"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["layer_outputs"]


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


def _outputs(runtime) -> list[dict]:
    """The prediction output first, then every other layer in model order."""
    names = [runtime.output_layer_name] + [
        n for n in runtime.output_layer_names if n != runtime.output_layer_name
    ]
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
    available = [o["name"] for o in _outputs(runtime)]
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
    body = inputs.read_json(request, cfg.max_body_bytes)
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
    if any(n != runtime.output_layer_name for n in names):
        require_introspection()  # hidden-layer outputs reveal model internals
    x = inputs.decode_v2_tensor(tensor, runtime, cfg.max_batch_size, cfg.max_image_pixels)
    final = runtime.output_layer_name
    extra = [n for n in names if n != final]
    result = compute(runtime, x, extra, endpoint="v2_infer")
    values = {final: result.raw, **result.layers}
    response = {
        "model_name": runtime.name,
        "model_version": str(runtime.version),
        "outputs": [
            {
                "name": n,
                "shape": list(values[n].shape),
                "datatype": "FP32",
                "data": values[n].reshape(-1).tolist(),
            }
            for n in names
        ],
    }
    if request_id is not None:
        response["id"] = request_id
    return jsonify(response)
