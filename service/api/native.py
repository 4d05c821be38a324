"""Layerscope's own JSON API: model listing, metadata and predictions with labels,
class probabilities and, for binary models, the decision at the stored threshold."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from service import inputs, security
from service.api import compute, format_result, repository, resolve, settings
from service.repository import READY

bp = Blueprint("native", __name__)


def _model_summary(name: str) -> dict:
    repo = repository()
    versions = repo.versions(name)
    return {
        "name": name,
        "default_version": repo.default_version(name),
        "ready": repo.model_ready(name),
        "versions": [versions[v].describe() for v in sorted(versions)],
    }


@bp.get("/models")
def list_models():
    repo = repository()
    return jsonify({"models": [_model_summary(name) for name in sorted(repo.models())]})


@bp.get("/models/<name>")
def model_metadata(name: str):
    summary = _model_summary(name)
    version = summary["default_version"]
    if version is not None:
        summary["metadata"] = public_metadata(repository().get(name, version).describe())
    else:
        summary["metadata"] = None
    return jsonify(summary)


def public_metadata(described: dict) -> dict:
    """``runtime.describe()`` without the layer table and hidden-layer names when an
    introspection token is set and the request does not carry it."""
    if security.introspection_allowed():
        return described
    public = {k: v for k, v in described.items() if k not in ("layers", "hidden_layers")}
    runtime = public.get("runtime")
    if isinstance(runtime, dict) and runtime.get("litert_activations_error"):
        # the parity gate's reason names the hidden layer that failed it
        public["runtime"] = {**runtime, "litert_activations_error": REDACTED}
    return public


REDACTED = "not shown: send the introspection token"


@bp.get("/models/<name>/versions/<int:version>")
def version_metadata(name: str, version: int):
    state = repository().state(name, version)
    body = {"name": name, **state.describe()}
    body["metadata"] = public_metadata(state.runtime.describe()) if state.status == READY else None
    return jsonify(body)


def decode_request(runtime):
    """JSON {"instances": [...]} or, for models with one image input, multipart files
    named 'image'. A multi-input model's instances are objects keyed by input name."""
    cfg = settings()
    req = request._get_current_object()  # the helpers read several fields: no proxy each
    if inputs.is_multipart(req):
        inputs.check_size(req, cfg.max_body_bytes)
        return inputs.read_multipart_images(req, runtime, cfg.max_batch_size, cfg.max_image_pixels)
    image = inputs.image_input(runtime) is not None
    raw = inputs.read_body(req, cfg.max_body_bytes, allow_multipart=image)
    x = inputs.fast_instances(raw, runtime, cfg.max_batch_size)
    if x is not None:
        return x
    body = inputs.parse_json(raw)
    instances = inputs.get_instances(body, "instances", cfg.max_batch_size)
    return inputs.decode_instances(instances, runtime, cfg.max_image_pixels)


def _predict(name: str, version: int | None):
    runtime = resolve(name, version)
    x = decode_request(runtime)
    result = compute(runtime, x, endpoint="predict")
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "predictions": format_result(runtime, result),
        }
    )


@bp.post("/models/<name>/predict")
def predict(name: str):
    return _predict(name, None)


@bp.post("/models/<name>/versions/<int:version>/predict")
def predict_version(name: str, version: int):
    return _predict(name, version)
