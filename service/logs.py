"""Structured JSON logs: one access line per request with a request id, and model
load / unload / failure events from the repository.

Only metadata is logged (method, URL rule, path, status, duration, sizes, model,
version): never request bodies, query strings, headers other than the request id, or
settings. An incoming ``X-Request-ID`` is kept when it is 1-128 characters of
``[A-Za-z0-9._:-]``, otherwise a new one is generated; either way it is echoed back.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ACCESS_LOGGER = "layerscope.access"
EVENT_LOGGER = "layerscope.events"
SKIP_ACCESS_LOG = {"/metrics"}

# LogRecord attributes that are not user-supplied ``extra`` fields.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, pid, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if has_request_context() and "request_id" not in record.__dict__:
            rid = g.get("request_id")
            if rid:
                entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def json_handler() -> logging.Handler:
    handler = logging.StreamHandler()  # stderr, collected by Gunicorn / Docker
    handler.setFormatter(JsonFormatter())
    handler._layerscope = True  # type: ignore[attr-defined]
    return handler


def gunicorn_logconfig(level: str = "info") -> dict[str, Any]:
    """``logconfig_dict`` for gunicorn_conf.py: Gunicorn's own lines and the app's as JSON
    on stderr (Gunicorn's access log stays off; the app writes a richer one)."""
    level = level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler, "null": {"class": "logging.NullHandler"}},
        "root": {"level": "WARNING", "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json"], "propagate": False},
            # Gunicorn's own access lines are dropped: the app logs richer ones.
            "gunicorn.access": {"level": "CRITICAL", "handlers": ["null"], "propagate": False},
            "layerscope": {"level": level, "handlers": ["json"], "propagate": False},
        },
    }


def configure_logging(level: str = "info") -> None:
    """Every handler of the ``layerscope`` logger writes JSON (one is added if none).
    Propagation is left alone so pytest's caplog still sees the records."""
    logger = logging.getLogger("layerscope")
    logger.setLevel(level.upper())
    if not logger.handlers:
        logger.addHandler(json_handler())
    for handler in logger.handlers:
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())


def request_id_from(value: str | None) -> str:
    """The incoming id when well-formed, else a fresh one (32 hex characters)."""
    if value and REQUEST_ID_RE.match(value):
        return value
    return uuid.uuid4().hex


def _before() -> None:
    g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    g._ls_log_start = time.perf_counter()


def _after(response: Response) -> Response:
    rid = g.get("request_id") or request_id_from(None)
    response.headers[REQUEST_ID_HEADER] = rid
    if request.path in SKIP_ACCESS_LOG:
        return response
    start = g.get("_ls_log_start")
    args = request.view_args or {}
    from service import metrics  # the same bounded labels as the metrics

    served = g.get("layerscope_model")  # (name, version) of the runtime that answered
    model = served[0] if served else args.get("name", args.get("model"))
    fields = {
        "request_id": rid,
        "method": request.method,
        "endpoint": request.url_rule.rule if request.url_rule is not None else None,
        "path": request.path[:256],
        "status": response.status_code,
        "duration_ms": None if start is None else round((time.perf_counter() - start) * 1e3, 3),
        "request_bytes": request.content_length,
        "response_bytes": response.calculate_content_length(),
        "model": None if model is None else metrics.model_label(model),
        "version": None if served is None else served[1],
    }
    logging.getLogger(ACCESS_LOGGER).info("request", extra=fields)
    return response


def init_app(app: Flask) -> None:
    """Request ids and access logs for ``app``, JSON logging for the ``layerscope`` tree,
    and model events from the app's repository."""
    state = app.extensions.get("layerscope")
    configure_logging(str(getattr(getattr(state, "settings", None), "log_level", "info")))
    repository = getattr(state, "repository", None)
    if repository is not None:
        repository.listeners.append(log_repository_event)
    app.before_request(_before)
    app.after_request(_after)


def log_repository_event(event: Any) -> None:
    """Repository listener: model loaded / failed / unloaded as structured events."""
    level = logging.ERROR if event.kind == "failed" else logging.INFO
    fields = {"event": f"model_{event.kind}", "model": event.name, "version": event.version}
    if event.seconds is not None:
        fields["load_seconds"] = round(event.seconds, 3)
    if event.reason:
        fields["reason"] = str(event.reason)[:500]
    logging.getLogger(EVENT_LOGGER).log(level, f"model {event.kind}", extra=fields)
