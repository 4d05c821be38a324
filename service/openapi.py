"""``GET /openapi.json``: an OpenAPI 3.0 document of every endpoint of the running app.

The paths and methods come from ``app.url_map`` (so a new route cannot go undocumented:
it appears with ``x-undocumented: true``, which a test forbids); the operations'
parameters, request bodies and responses are written here per Flask endpoint. Limits
(batch size, body size) come from the app's settings, and the admin paths appear only
when the admin API is on."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.0.3"
_CONVERTER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
SKIP_METHODS = {"HEAD", "OPTIONS"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "Error")
ERRORS = {
    "400": {**ERROR, "description": "Invalid input: the message says what was received"},
    "401": {**ERROR, "description": "No bearer token (when a token protects the endpoint)"},
    "403": {**ERROR, "description": "Wrong bearer token"},
    "404": {**ERROR, "description": "Unknown model, version, layer or endpoint"},
    "405": {**ERROR, "description": "Method not allowed"},
    "409": {**ERROR, "description": "Conflicting admin decision"},
    "413": {**ERROR, "description": "Body, batch or activation values over the limit"},
    "415": {**ERROR, "description": "Unsupported Content-Type"},
    "422": {**ERROR, "description": "The model has no graph to open up (subclassed)"},
    "503": {**ERROR, "description": "Model not ready (loading) or overloaded"},
}


def _errors(*codes: str) -> dict:
    return {c: ERRORS[c] for c in codes}


def _body(schema: dict, multipart: bool = False) -> dict:
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if multipart:
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        }
    return {"required": True, "content": content}


PNG = {"description": "PNG image", "content": {"image/png": {"schema": {"type": "string"}}}}
MODEL_ERRORS = ("404", "503")
PREDICT_ERRORS = ("400", "404", "413", "415", "503")

# Open Inference Protocol binary tensor data extension (service/binary_tensors.py)
V2_BINARY_HEADER = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "binary tensor data: byte length of the JSON request at the start of the "
    "body; the inputs' binary data follows it",
    "schema": {"type": "integer", "minimum": 0},
}
V2_BINARY_RESPONSE_HEADER = {
    "description": "present when outputs are binary: byte length of the JSON response at the "
    "start of the body",
    "schema": {"type": "integer", "minimum": 0},
}
V2_BINARY_BODY = {
    "type": "string",
    "format": "binary",
    "description": "JSON (Inference-Header-Content-Length bytes), then each binary tensor's "
    "parameters.binary_data_size bytes in listed order: row-major little-endian, BOOL one "
    "byte, BYTES elements each after a 4-byte little-endian length",
}

# Flask endpoint (without the "_versioned" suffix) -> operation
OPERATIONS: dict[str, dict] = {
    "health.healthz": {
        "summary": "Liveness of the answering worker",
        "tags": ["health"],
        "responses": {"200": _json(_ref("Liveness"))},
    },
    "health.readyz": {
        "summary": "Readiness: every model's serving version is loaded and warm",
        "tags": ["health"],
        "responses": {"200": _json(_ref("Readiness")), "503": _json(_ref("Readiness"))},
    },
    "health.v2_live": {
        "summary": "Open Inference Protocol: server live",
        "tags": ["v2"],
        "responses": {"200": _json(_ref("V2Live"))},
    },
    "health.v2_ready": {
        "summary": "Open Inference Protocol: server ready",
        "tags": ["v2"],
        "responses": {"200": _json(_ref("V2Ready")), "503": _json(_ref("V2Ready"))},
    },
    "native.list_models": {
        "summary": "Every model with its versions and their states",
        "tags": ["native"],
        "responses": {"200": _json(_ref("ModelList"))},
    },
    "native.model_metadata": {
        "summary": "A model: versions, default version and its metadata",
        "tags": ["native"],
        "responses": {"200": _json(_ref("ModelSummary")), **_errors("404")},
    },
    "native.version_metadata": {
        "summary": "One version's state and metadata",
        "tags": ["native"],
        "responses": {"200": _json(_ref("VersionState")), **_errors("404")},
    },
    "native.predict": {
        "summary": "Predictions with labels, probabilities and binary decisions",
        "tags": ["native"],
        "requestBody": _body(_ref("PredictRequest"), multipart=True),
        "responses": {"200": _json(_ref("PredictResponse")), **_errors(*PREDICT_ERRORS)},
    },
    "tfserving.model_status": {
        "summary": "TF Serving: model version status",
        "tags": ["tfserving"],
        "responses": {"200": _json(_ref("TFStatus")), **_errors("404")},
    },
    "tfserving.version_status": {
        "summary": "TF Serving: one version's status",
        "tags": ["tfserving"],
        "responses": {"200": _json(_ref("TFStatus")), **_errors("404")},
    },
    "tfserving.metadata": {
        "summary": "TF Serving: signature metadata",
        "tags": ["tfserving"],
        "responses": {"200": _json({"type": "object"}), **_errors(*MODEL_ERRORS)},
    },
    "tfserving.predict": {
        "summary": "TF Serving: predict (row or columnar); output_layers is an extension",
        "tags": ["tfserving"],
        "requestBody": _body(_ref("TFPredictRequest")),
        "responses": {
            "200": _json(_ref("TFPredictResponse")),
            **_errors(*PREDICT_ERRORS, "401", "403"),
        },
    },
    "v2.server_metadata": {
        "summary": "Open Inference Protocol: server metadata",
        "tags": ["v2"],
        "responses": {"200": _json(_ref("V2ServerMetadata"))},
    },
    "v2.model_metadata": {
        "summary": "Open Inference Protocol: model metadata (every layer is an output)",
        "tags": ["v2"],
        "responses": {"200": _json(_ref("V2ModelMetadata")), **_errors(*MODEL_ERRORS)},
    },
    "v2.model_ready": {
        "summary": "Open Inference Protocol: model ready",
        "tags": ["v2"],
        "responses": {
            "200": _json(_ref("V2ModelReady")),
            "503": _json(_ref("V2ModelReady")),
            **_errors("404"),
        },
    },
    "v2.infer": {
        "summary": "Open Inference Protocol: inference (outputs may name hidden layers)",
        "description": "With the binary tensor data extension, the body starts with a JSON "
        "request of Inference-Header-Content-Length bytes followed by the raw little-endian "
        "data of each input carrying parameters.binary_data_size (any Content-Type). "
        "Outputs with parameters.binary_data (or the request's parameters.binary_data_output) "
        "come back the same way: application/octet-stream with that header.",
        "tags": ["v2"],
        "parameters": [V2_BINARY_HEADER],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref("V2InferenceRequest")},
                "application/octet-stream": {"schema": V2_BINARY_BODY},
            },
        },
        "responses": {
            "200": {
                "description": "OK: JSON, or JSON + binary outputs (binary tensor data)",
                "headers": {"Inference-Header-Content-Length": V2_BINARY_RESPONSE_HEADER},
                "content": {
                    "application/json": {"schema": _ref("V2InferenceResponse")},
                    "application/octet-stream": {"schema": V2_BINARY_BODY},
                },
            },
            **_errors(*PREDICT_ERRORS, "401", "403"),
        },
    },
    "introspect.layers": {
        "summary": "The layer table",
        "tags": ["introspection"],
        "responses": {"200": _json(_ref("Layers")), **_errors(*MODEL_ERRORS, "401", "403", "422")},
    },
    "introspect.activations": {
        "summary": "Activations and statistics of any layers, one forward pass",
        "tags": ["introspection"],
        "requestBody": _body(_ref("ActivationsRequest"), multipart=True),
        "responses": {
            "200": _json(_ref("ActivationsResponse")),
            **_errors(*PREDICT_ERRORS, "401", "403", "422"),
        },
    },
    "introspect.layer_stats": {
        "summary": "Per-unit statistics of a layer over the reference sample",
        "tags": ["introspection"],
        "responses": {
            "200": _json({"type": "object", "required": ["layer"]}),
            **_errors("400", *MODEL_ERRORS, "401", "403", "422"),
        },
    },
    "introspect.samples": {
        "summary": "Reference inputs of the version",
        "tags": ["introspection"],
        "parameters": [
            {"name": "n", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        ],
        "responses": {
            "200": _json({"type": "object", "required": ["samples"]}),
            **_errors("400", *MODEL_ERRORS, "401", "403", "422"),
        },
    },
    "introspect.explain": {
        "summary": "Grad-CAM or integrated gradients",
        "tags": ["introspection"],
        "requestBody": _body(_ref("ExplainRequest"), multipart=True),
        "responses": {
            "200": _json({"type": "object", "required": ["method", "instances"]}),
            **_errors(*PREDICT_ERRORS, "401", "403", "422"),
        },
    },
    "introspect.layer_picture": {
        "summary": "Feature-map grid or heat strip of a layer (PNG)",
        "tags": ["introspection"],
        "requestBody": _body(_ref("PredictRequest"), multipart=True),
        "responses": {"200": PNG, **_errors(*PREDICT_ERRORS, "401", "403", "422")},
    },
    "introspect.explain_picture": {
        "summary": "Grad-CAM overlay or attribution bars (PNG)",
        "tags": ["introspection"],
        "requestBody": _body(_ref("ExplainRequest"), multipart=True),
        "responses": {"200": PNG, **_errors(*PREDICT_ERRORS, "401", "403", "422")},
    },
    "understand.probes": {
        "summary": "Linear probe score of every hidden layer and the raw input (202 while "
        "computing)",
        "tags": ["understanding"],
        "responses": {
            "200": _json({"type": "object", "required": ["layers", "baseline"]}),
            "202": _json({"type": "object", "required": ["status"]}, "Computing: retry"),
            **_errors(*MODEL_ERRORS, "401", "403", "422"),
        },
    },
    "understand.probes_png": {
        "summary": "Probe score against depth (PNG)",
        "tags": ["understanding"],
        "responses": {"200": PNG, **_errors(*MODEL_ERRORS, "401", "403", "422")},
    },
    "understand.unit_top": {
        "summary": "The reference samples that activate a unit the most",
        "tags": ["understanding"],
        "parameters": [
            {"name": "n", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            {"name": "reduce", "in": "query", "schema": {"enum": ["mean", "max"]}},
        ],
        "responses": {
            "200": _json({"type": "object", "required": ["top"]}),
            **_errors("400", *MODEL_ERRORS, "401", "403", "422"),
        },
    },
    "understand.unit_top_png": {
        "summary": "Thumbnails of a unit's top samples (image inputs, PNG)",
        "tags": ["understanding"],
        "parameters": [
            {"name": "n", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            {"name": "reduce", "in": "query", "schema": {"enum": ["mean", "max"]}},
        ],
        "responses": {"200": PNG, **_errors("400", *MODEL_ERRORS, "401", "403", "422")},
    },
    "understand.projection": {
        "summary": "PCA of a layer over the reference sample, 2-D, with labels",
        "tags": ["understanding"],
        "responses": {
            "200": _json({"type": "object", "required": ["points"]}),
            **_errors("400", *MODEL_ERRORS, "401", "403", "422"),
        },
    },
    "understand.projection_png": {
        "summary": "PCA scatter of a layer coloured by class (PNG)",
        "tags": ["understanding"],
        "responses": {"200": PNG, **_errors("400", *MODEL_ERRORS, "401", "403", "422")},
    },
    "understand.compare": {
        "summary": "Linear CKA between every hidden layer of versions a and b",
        "tags": ["understanding"],
        "parameters": [
            {"name": "a", "in": "query", "required": True, "schema": {"type": "integer"}},
            {"name": "b", "in": "query", "required": True, "schema": {"type": "integer"}},
        ],
        "responses": {
            "200": _json({"type": "object", "required": ["cka"]}),
            **_errors("400", *MODEL_ERRORS, "401", "403", "422"),
        },
    },
    "understand.compare_png": {
        "summary": "CKA heat map between two versions (PNG)",
        "tags": ["understanding"],
        "parameters": [
            {"name": "a", "in": "query", "required": True, "schema": {"type": "integer"}},
            {"name": "b", "in": "query", "required": True, "schema": {"type": "integer"}},
        ],
        "responses": {"200": PNG, **_errors("400", *MODEL_ERRORS, "401", "403", "422")},
    },
    "introspect.ui": {
        "summary": "The explorer page",
        "tags": ["introspection"],
        "responses": {
            "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
        },
    },
    "introspect.ui_static": {
        "summary": "The explorer's static files",
        "tags": ["introspection"],
        "responses": {"200": {"description": "A static file"}, **_errors("404")},
    },
    "static": {
        "summary": "Flask's static folder (the explorer's files)",
        "tags": ["introspection"],
        "responses": {"200": {"description": "A static file"}, **_errors("404")},
    },
    "metrics.metrics_endpoint": {
        "summary": "Prometheus metrics, summed over every worker",
        "tags": ["observability"],
        "responses": {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    },
    "openapi.document": {
        "summary": "This document",
        "tags": ["meta"],
        "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]})},
    },
    "admin.state": {
        "summary": "Admin: decisions in force and this worker's table",
        "tags": ["admin"],
        "responses": {"200": _json(_ref("AdminReport")), **_errors("401", "403")},
    },
    "admin.reload": {
        "summary": "Admin: rescan the repository in every worker, retry failed versions",
        "tags": ["admin"],
        "responses": {"200": _json(_ref("AdminReport")), **_errors("401", "403", "503")},
    },
    "admin.load": {
        "summary": "Admin: serve a version (outside the newest N too; retries a failed one)",
        "tags": ["admin"],
        "responses": {
            "200": _json(_ref("AdminReport")),
            "409": _json(_ref("AdminReport"), "The version could not be loaded"),
            **_errors("401", "403", "404", "503"),
        },
    },
    "admin.unload": {
        "summary": "Admin: stop serving a version in every worker",
        "tags": ["admin"],
        "responses": {
            "200": _json(_ref("AdminReport")),
            **_errors("401", "403", "404", "409", "503"),
        },
    },
    "admin.set_default": {
        "summary": "Admin: pin the version unversioned requests get",
        "tags": ["admin"],
        "requestBody": _body(
            {
                "type": "object",
                "properties": {"version": {"type": "integer", "minimum": 1}},
                "required": ["version"],
            }
        ),
        "responses": {
            "200": _json(_ref("AdminReport")),
            "409": _json(_ref("AdminReport"), "Pinned but not served"),
            **_errors("400", "401", "403", "404", "503"),
        },
    },
    "admin.clear_default": {
        "summary": "Admin: back to the newest ready version",
        "tags": ["admin"],
        "responses": {"200": _json(_ref("AdminReport")), **_errors("401", "403", "404", "503")},
    },
}

# versioned twins registered under their own endpoint names
ALIASES = {
    "native.predict_version": "native.predict",
    "tfserving.version_metadata": "tfserving.metadata",
    "tfserving.predict_version": "tfserving.predict",
}

PARAMETERS = {
    "name": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,63}$"},
    "version": {"type": "integer", "minimum": 1},
    "layer": {"type": "string", "description": "a layer name or index"},
    "filename": {"type": "string"},
}

NUMBERS = {
    "oneOf": [{"type": "number"}, {"type": "array", "items": {}}],
    "description": "a number or nested arrays of numbers",
}
INSTANCE = {
    "description": "tabular: an array of numbers or an object of named features; "
    "image: nested arrays of 0-255 pixels or {'b64': base64 PNG/JPEG}",
    "oneOf": [
        {"type": "array", "items": NUMBERS},
        {"type": "object", "additionalProperties": {"type": "number"}},
        {"type": "object", "properties": {"b64": {"type": "string"}}, "required": ["b64"]},
    ],
}
V2_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"},
        "parameters": {"type": "object"},
        "data": {},
    },
}


def schemas(max_batch: int) -> dict:
    instances = {"type": "array", "items": INSTANCE, "minItems": 1, "maxItems": max_batch}
    layer_spec = {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}
    classes = {
        "nullable": True,
        "oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "array"}],
    }
    version_state = {
        "type": "object",
        "required": ["version", "status"],
        "properties": {
            "version": {"type": "integer"},
            "status": {"type": "string", "enum": ["loading", "ready", "failed", "skipped"]},
            "reason": {"type": "string", "nullable": True},
            "loaded_at": {"type": "number", "nullable": True},
            "load_seconds": {"type": "number", "nullable": True},
            "metadata": {"type": "object", "nullable": True},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "minLength": 1}},
        },
        "Liveness": {
            "type": "object",
            "required": ["status", "pid"],
            "properties": {"status": {"type": "string"}, "pid": {"type": "integer"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["ready", "pid"],
            "properties": {"ready": {"type": "boolean"}, "pid": {"type": "integer"}},
        },
        "V2Live": {
            "type": "object",
            "required": ["live"],
            "properties": {"live": {"type": "boolean"}},
        },
        "V2Ready": {
            "type": "object",
            "required": ["ready"],
            "properties": {"live": {"type": "boolean"}, "ready": {"type": "boolean"}},
        },
        "VersionState": version_state,
        "ModelSummary": {
            "type": "object",
            "required": ["name", "default_version", "ready", "versions"],
            "properties": {
                "name": {"type": "string"},
                "default_version": {"type": "integer", "nullable": True},
                "ready": {"type": "boolean"},
                "versions": {"type": "array", "items": version_state},
                "metadata": {"type": "object", "nullable": True},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["models"],
            "properties": {"models": {"type": "array", "items": _ref("ModelSummary")}},
        },
        "PredictRequest": {
            "type": "object",
            "required": ["instances"],
            "properties": {"instances": instances},
        },
        "PredictResponse": {
            "type": "object",
            "required": ["model", "version", "predictions"],
            "properties": {
                "model": {"type": "string"},
                "version": {"type": "integer"},
                "predictions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["label", "class_index", "score", "probabilities"],
                        "properties": {
                            "label": {"type": "string"},
                            "class_index": {"type": "integer"},
                            "score": {"type": "number"},
                            "probabilities": {
                                "type": "object",
                                "additionalProperties": {"type": "number"},
                            },
                        },
                    },
                },
            },
        },
        "TFStatus": {
            "type": "object",
            "required": ["model_version_status"],
            "properties": {"model_version_status": {"type": "array", "items": {"type": "object"}}},
        },
        "TFPredictRequest": {
            "type": "object",
            "properties": {
                "signature_name": {"type": "string"},
                "instances": instances,
                "inputs": {"oneOf": [{"type": "array"}, {"type": "object"}]},
                "output_layers": {"type": "array", "items": {"type": "string"}},
            },
        },
        "TFPredictResponse": {
            "type": "object",
            "properties": {"predictions": {"type": "array"}, "outputs": {}},
        },
        "V2ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "V2ModelMetadata": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": {"type": "object"}},
                "outputs": {"type": "array", "items": {"type": "object"}},
            },
        },
        "V2ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        },
        "V2InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "items": V2_TENSOR, "minItems": 1, "maxItems": 1},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "parameters": {"type": "object"},
                        },
                    },
                },
            },
        },
        "V2InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                # a binary output has parameters.binary_data_size instead of data
                "outputs": {
                    "type": "array",
                    "items": {**V2_TENSOR, "required": ["name", "shape", "datatype"]},
                },
            },
        },
        "Layers": {
            "type": "object",
            "required": ["model", "version", "layers", "hidden_layers"],
            "properties": {
                "model": {"type": "string"},
                "version": {"type": "integer"},
                "layers": {"type": "array", "items": {"type": "object"}},
                "hidden_layers": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ActivationsRequest": {
            "type": "object",
            "required": ["instances"],
            "properties": {
                "instances": instances,
                "layers": {"type": "array", "items": layer_spec, "minItems": 1},
                "include": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["values", "stats"]},
                    "minItems": 1,
                },
                "top_k": {"type": "integer", "minimum": 1, "maximum": 100},
            },
        },
        "ActivationsResponse": {
            "type": "object",
            "required": ["model", "version", "layers", "instances"],
            "properties": {
                "model": {"type": "string"},
                "version": {"type": "integer"},
                "layers": {"type": "array", "items": {"type": "string"}},
                "inactive_rules": {"type": "object"},
                "instances": {"type": "array", "items": {"type": "object"}},
            },
        },
        "ExplainRequest": {
            "type": "object",
            "required": ["instances"],
            "properties": {
                "instances": instances,
                "method": {"type": "string", "enum": ["gradcam", "integrated_gradients"]},
                "class": classes,
                "layer": layer_spec,
                "baseline": {},
                "steps": {"type": "integer", "minimum": 1, "maximum": 512},
            },
        },
        "AdminReport": {
            "type": "object",
            "required": ["pid", "models"],
            "properties": {
                "pid": {"type": "integer"},
                "generation": {"type": "integer", "nullable": True},
                "models": {"type": "object"},
                "error": {"type": "string"},
            },
        },
    }


def path_template(rule: str) -> tuple[str, list[dict]]:
    """'/models/<name>/versions/<int:version>' -> '/models/{name}/versions/{version}'."""
    params = []

    def sub(match: re.Match) -> str:
        converter, name = match.group(1), match.group(2)
        schema = dict(PARAMETERS.get(name, {"type": "string"}))
        if converter == "int":
            schema = {"type": "integer", "minimum": 1}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    return _CONVERTER.sub(sub, rule), params


def build(app: Flask) -> dict:
    """The document for ``app`` as it is configured (routes, limits, tokens)."""
    cfg = app.extensions["layerscope"].settings
    protected = cfg.introspection_token is not None and bool(
        cfg.introspection_token.get_secret_value()
    )
    paths: dict[str, dict] = {}
    count = 0
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        template, params = path_template(rule.rule)
        endpoint = ALIASES.get(rule.endpoint, rule.endpoint.removesuffix("_versioned"))
        spec = OPERATIONS.get(endpoint)
        for method in sorted((rule.methods or set()) - SKIP_METHODS):
            op = (
                {**spec}
                if spec is not None
                else {"summary": rule.endpoint, "x-undocumented": True, "responses": {}}
            )
            count += 1
            op = {
                **op,
                "operationId": f"{method.lower()}_{rule.endpoint}_{count}",
                "responses": {**op["responses"], **_errors("405")},
            }
            if params:
                op["parameters"] = params + list(op.get("parameters", []))
            guarded = (
                protected
                and endpoint.startswith(("introspect.", "understand."))
                and "ui" not in endpoint
            )
            if endpoint.startswith("admin.") or guarded:
                op["security"] = [{"bearer": []}]
            paths.setdefault(template, {})[method.lower()] = op
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Layerscope",
            "version": "0.1.0",
            "description": "Keras model server with per-layer introspection: native, TF "
            "Serving (/v1) and Open Inference Protocol (/v2) APIs. Every error is "
            f'{{"error": "..."}}. Limits: {cfg.max_body_bytes} body bytes, '
            f"{cfg.max_batch_size} instances per request, {cfg.max_activation_values} "
            "returned activation values.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(cfg.max_batch_size),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@bp.get("/openapi.json")
def document():
    return jsonify(build(current_app))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
