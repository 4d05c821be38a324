"""TensorFlow Serving REST API (``/v1/models/...``), as TF Serving documents it:
model status, signature metadata, and ``:predict`` in row (``instances`` ->
``predictions``) and columnar (``inputs`` -> ``outputs``) formats. Outputs are the
model's own final layer (binary models: the sigmoid P(positive), shape (n, 1)), exactly
what TF Serving would answer for the same model.

Extension: ``"output_layers": ["dense_1", ...]`` in a ``:predict`` body also returns
those layers' activations, computed in the same forward pass. The response then uses
TF Serving's multi-output form: row format ``{"predictions": [{"output": [...],
"dense_1": [...]}, ...]}``, columnar ``{"outputs": {"output": [...], "dense_1": [...]}}``.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from service import inputs
from service.api import compute, repository, resolve, settings
from service.errors import InvalidInput
from service.repository import FAILED, LOADING, READY, SKIPPED
from service.security import require_introspection

bp = Blueprint("tfserving", __name__, url_prefix="/v1")

STATES = {LOADING: "LOADING", READY: "AVAILABLE", FAILED: "END", SKIPPED: "END"}
SIGNATURE = "serving_default"


def _status(state) -> dict:
    if state.status == FAILED:
        code = "DATA_LOSS" if "checksum" in (state.reason or "") else "UNKNOWN"
        status = {"error_code": code, "error_message": state.reason or ""}
    else:
        status = {"error_code": "OK", "error_message": state.reason or ""}
    return {"version": str(state.version), "state": STATES[state.status], "status": status}


@bp.get("/models/<name>")
def model_status(name: str):
    versions = repository().versions(name)
    return jsonify(
        {"model_version_status": [_status(versions[v]) for v in sorted(versions, reverse=True)]}
    )


@bp.get("/models/<name>/versions/<int:version>")
def version_status(name: str, version: int):
    return jsonify({"model_version_status": [_status(repository().state(name, version))]})


TF_DTYPES = {
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
}


def _tensor_info(name: str, shape, dtype: str = "float32") -> dict:
    return {
        "dtype": TF_DTYPES.get(dtype, "DT_FLOAT"),
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in shape],
            "unknown_rank": False,
        },
        "name": f"{SIGNATURE}_{name}:0",
    }


def _metadata(name: str, version: int | None):
    runtime = resolve(name, version)
    signature = {
        "inputs": {
            s["name"]: _tensor_info(s["name"], [None, *s["shape"]], s["dtype"])
            for s in runtime.inputs
        },
        "outputs": {
            o["name"]: _tensor_info(o["name"], [None, *o["shape"]]) for o in runtime.outputs
        },
        "method_name": "tensorflow/serving/predict",
    }
    spec = {"name": runtime.name, "signature_name": "", "version": str(runtime.version)}
    return jsonify(
        {
            "model_spec": spec,
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
        }
    )


@bp.get("/models/<name>/metadata")
def metadata(name: str):
    return _metadata(name, None)


@bp.get("/models/<name>/versions/<int:version>/metadata")
def version_metadata(name: str, version: int):
    return _metadata(name, version)


def _unwrap_named(value, input_name: str = "input"):
    """TF Serving allows naming the single input: {"input": value}."""
    if isinstance(value, dict) and set(value) == {input_name}:
        return value[input_name]
    return value


def _decode(body: dict, runtime, cfg):
    """Row (``instances``) or columnar (``inputs``) format -> the batch. One input may be
    named or not; several inputs are named: rows ``{name: value}``, columns
    ``{name: [values]}``."""
    single = len(runtime.inputs) == 1
    input_name = runtime.inputs[0]["name"]
    if "instances" in body:
        instances = inputs.get_instances(body, "instances", cfg.max_batch_size)
        if single:
            instances = [_unwrap_named(i, input_name) for i in instances]
        return inputs.decode_instances(instances, runtime, cfg.max_image_pixels)
    columns = body["inputs"]
    if single:
        columns = _unwrap_named(columns, input_name)
        if not isinstance(columns, list):
            raise InvalidInput(
                f"columnar 'inputs' must be a batch array or {{{input_name!r}: [...]}}; got "
                f"{type(columns).__name__}"
            )
        inputs.check_batch(len(columns), cfg.max_batch_size)
        return inputs.decode_instances(columns, runtime, cfg.max_image_pixels, where="inputs")
    if not isinstance(columns, dict):
        raise InvalidInput(
            f"columnar 'inputs' of model {runtime.name!r} must be an object "
            f"{{input name: [values]}} for its inputs {[s['name'] for s in runtime.inputs]}; "
            f"got {type(columns).__name__}"
        )
    for values in columns.values():
        if isinstance(values, list):
            inputs.check_batch(len(values), cfg.max_batch_size)
    return inputs.decode_columns(columns, runtime, cfg.max_image_pixels, "inputs")


def _predict(name: str, version: int | None):
    runtime = resolve(name, version)
    cfg = settings()
    raw = inputs.read_body(request, cfg.max_body_bytes)
    x = inputs.fast_instances(raw, runtime, cfg.max_batch_size, accept=_plain_row_member)
    if x is not None:  # a plain {"instances": [numbers]}: no output_layers, no "inputs"
        return _answer(runtime, x, [])
    body = inputs.parse_json(raw)
    signature = body.get("signature_name", SIGNATURE)
    if signature not in (SIGNATURE, ""):
        raise InvalidInput(f"signature_name {signature!r} not found; the only one is {SIGNATURE!r}")
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInput(
            "expected exactly one of 'instances' (row format) or 'inputs' (columnar format); "
            f"got keys {sorted(body)}"
        )
    layers = body.get("output_layers") or []
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise InvalidInput(f"output_layers must be a list of layer names; got {layers!r}")
    outputs = {o["name"] for o in runtime.outputs}
    if any(n not in outputs for n in layers):
        require_introspection()  # hidden-layer outputs reveal model internals
    x = _decode(body, runtime, cfg)
    return _answer(runtime, x, layers, row_format="instances" in body)


def _plain_row_member(name: str, value) -> bool:
    """Whether a member beside "instances" lets the body take the fast path: the checks in
    ``_predict`` would pass it and it asks for nothing but predictions."""
    if name == "signature_name":
        return isinstance(value, str) and value in (SIGNATURE, "")
    return name not in ("inputs", "output_layers")


def _answer(runtime, x, layers: list[str], row_format: bool = True):
    """One output: TF Serving's plain form. Several outputs, or extra layers: its
    multi-output form, rows of objects or an object of columns."""
    outputs = [o["name"] for o in runtime.outputs]
    extra = [n for n in layers if n not in outputs]
    result = compute(runtime, x, extra, endpoint="tfserving_predict")
    if not extra and len(outputs) == 1:
        if row_format:
            return jsonify({"predictions": result.raw.tolist()})
        return jsonify({"outputs": result.raw.tolist()})
    tensors = {**result.outputs, **result.layers}
    if row_format:
        rows = [{k: v[i].tolist() for k, v in tensors.items()} for i in range(result.raw.shape[0])]
        return jsonify({"predictions": rows})
    return jsonify({"outputs": {k: v.tolist() for k, v in tensors.items()}})


@bp.post("/models/<name>:predict")
def predict(name: str):
    return _predict(name, None)


@bp.post("/models/<name>/versions/<int:version>:predict")
def predict_version(name: str, version: int):
    return _predict(name, version)
