"""Error hierarchy: every failure a client can cause is one of these, turned into
``{"error": "<message>"}`` with the right status by ONE Flask handler (see ``install``)."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("layerscope.errors")


class LayerscopeError(Exception):
    """Base class: an HTTP status plus a message that says what was received and expected."""

    status = 500

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class ModelNotFound(LayerscopeError):
    status = 404


class LayerNotFound(LayerscopeError):
    status = 404


class InvalidInput(LayerscopeError):
    status = 400


class PayloadTooLarge(LayerscopeError):
    status = 413


class UnsupportedMediaType(LayerscopeError):
    status = 415


class ModelNotReady(LayerscopeError):
    status = 503


class IntrospectionUnavailable(LayerscopeError):
    """422: the model serves predictions but has no graph to open up (subclassed)."""

    status = 422


class Overloaded(LayerscopeError):
    """503 with ``Retry-After``: a bounded queue is full (service/batching.py)."""

    status = 503

    def __init__(self, message: str, status: int | None = None, retry_after: int = 1):
        super().__init__(message, status)
        self.retry_after = retry_after


def error_response(status: int, message: str):
    return jsonify({"error": message}), status


def install(app: Flask) -> None:
    """Register the one handler chain: our errors, Werkzeug's HTTP errors (404 for an
    unknown route, 405, 413 from MAX_CONTENT_LENGTH...) and, as a last resort, anything
    else as a logged 500 so a worker never dies on a request."""

    @app.errorhandler(LayerscopeError)
    def _layerscope_error(exc: LayerscopeError):
        response = error_response(exc.status, exc.message)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response[0].headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body is larger than the limit of {limit} bytes"
        elif status == 404:
            message = "no such endpoint: see GET /models, /v1/models/{name}, /v2"
        elif status == 405:
            message = f"method not allowed; allowed: {', '.join(sorted(exc.valid_methods or []))}"
        else:
            message = exc.description or exc.name
        response = error_response(status, message)
        if status == 405 and exc.valid_methods:
            response[0].headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}")
