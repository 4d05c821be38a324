"""Structured JSON logs: one access line per request with a request id, and model
load / unload / failure events from the repository.

Only metadata is logged (method, URL rule, path, status, duration, sizes, model,
version): never request bodies, query strings, headers other than the request id, or
settings. An incoming ``X-Request-ID`` is kept when it is 1-128 characters of
``[A-Za-z0-9._:-]``, otherwise a new one is generated; either way it is echoed back.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Flask, Response, g, has_request_context, request
from gunicorn import glogging
from werkzeug.wsgi import get_content_length

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


_ts_second: tuple[int, str] = (-1, "")  # the last second formatted, replaced atomically


def iso_timestamp(created: float) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``, with the
    date and time of day formatted once per second: the same half-even rounding to
    microseconds as ``datetime``, then truncation to milliseconds."""
    global _ts_second
    if type(created) is not float or not 0.0 <= created < 1e11:
        return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    frac, whole = math.modf(created)
    micros = round(frac * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached = _ts_second
    if cached[0] != second:
        t = time.gmtime(second)
        cached = _ts_second = (
            second,
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}",
        )
    return f"{cached[1]}.{micros // 1000:03d}+00:00"


_ORJSON_TYPES = frozenset({str, int, bool, type(None)})


def json_line(entry: dict[str, Any]) -> str:
    """``json.dumps(entry, default=str, separators=(",", ":"))``, through orjson (about 15
    times faster) when that gives the same text: flat values of plain types, floats that
    repr() writes without an exponent, ASCII output without DEL (json escapes non-ASCII
    and DEL). Anything else takes json.dumps itself."""
    for value in entry.values():
        kind = type(value)
        if kind is float:
            if not (value == 0.0 or 1e-4 <= abs(value) < 1e16):  # NaN fails both
                break
        elif kind not in _ORJSON_TYPES:
            break
    else:
        try:
            line = orjson.dumps(entry)
        except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits
            pass
        else:
            if line.isascii() and b"\x7f" not in line:
                return line.decode()
    return json.dumps(entry, default=str, separators=(",", ":"))


def line_head(ts: Any, level: str, logger: str, message: str, pid: Any) -> dict[str, Any]:
    """The first keys of every JSON line, in their order (JsonFormatter, and the access
    line queued without a LogRecord, whose writer fills in ``ts`` and ``pid``)."""
    return {"ts": ts, "level": level, "logger": logger, "message": message, "pid": pid}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, pid, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = line_head(
            iso_timestamp(record.created),
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            record.process,
        )
        fields = record.__dict__
        if "request_id" not in fields and has_request_context():
            rid = g.get("request_id")
            if rid:
                entry["request_id"] = rid
        for key, value in fields.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json_line(entry)


class BackgroundStreamHandler(logging.StreamHandler):
    """A StreamHandler whose formatting and writing happen on a background thread.

    A request thread only appends the record to a deque: no syscall, and no lock held
    across a write. With 16 threads per worker, a synchronous handler made every request
    queue on the handler's lock while another thread wrote its line (bench/). The writer
    drains the deque every ``interval`` seconds and writes all pending lines at once, in
    order. Records are flushed by ``flush()`` / ``close()`` (``logging.shutdown`` at exit,
    Gunicorn's ``worker_exit``); a SIGKILLed worker loses at most ``interval`` of lines."""

    def __init__(self, stream=None, interval: float = 0.02):
        super().__init__(stream)
        self.interval = interval
        self._pending: collections.deque[logging.LogRecord] = collections.deque()
        self._write_lock = threading.Lock()
        self._owner_pid: int | None = None  # the writer thread belongs to one process
        _after_fork.add(self)

    def _reinit_after_fork(self) -> None:
        """In a forked child (a Gunicorn worker): the parent's writer thread is gone and
        its lock may have been held at the fork; lines pending there are the parent's."""
        self._write_lock = threading.Lock()
        self._pending = collections.deque()
        self._owner_pid = None

    def emit_entry(self, entry: dict[str, Any]) -> None:
        """Queue a line built without a LogRecord (the access log's production path,
        ``direct_access_handler``): ``entry`` has the JsonFormatter's keys in its order,
        with ``ts`` still the ``time.time()`` float and ``pid`` filled in by the writer."""
        self._pending.append(entry)
        if self._owner_pid != os.getpid():
            self._start_writer()

    def emit(self, record: logging.LogRecord) -> None:
        if record.args:  # freeze the message: its arguments may change before it is written
            record.msg, record.args = record.getMessage(), None
        if "request_id" not in record.__dict__ and has_request_context():
            rid = g.get("request_id")  # the writer thread has no request context
            if rid:
                record.request_id = rid
        self._pending.append(record)
        if self._owner_pid != os.getpid():
            self._start_writer()

    def _start_writer(self) -> None:
        with self._write_lock:
            if self._owner_pid == os.getpid():
                return
            self._owner_pid = os.getpid()
            threading.Thread(target=self._run, name="layerscope-log-writer", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        """Write every pending record now (any thread)."""
        with self._write_lock:
            lines = []
            pending = self._pending
            pid = os.getpid()  # the writer runs in the process that queued (see fork)
            while pending:
                record = pending.popleft()
                try:
                    if type(record) is dict:  # emit_entry
                        record["ts"], record["pid"] = iso_timestamp(record["ts"]), pid
                        lines.append(json_line(record) + self.terminator)
                    else:
                        lines.append(self.format(record) + self.terminator)
                except Exception:
                    if type(record) is dict:
                        record = logging.makeLogRecord({"msg": repr(record)})
                    self.handleError(record)
            if lines and self.stream is not None:
                try:
                    self.stream.write("".join(lines))
                    self.stream.flush()
                except Exception:
                    self.handleError(record)

    def close(self) -> None:
        self.flush()
        super().close()


_after_fork: weakref.WeakSet[BackgroundStreamHandler] = weakref.WeakSet()


def _reinit_handlers_after_fork() -> None:
    for handler in list(_after_fork):
        handler._reinit_after_fork()


os.register_at_fork(after_in_child=_reinit_handlers_after_fork)


def json_handler() -> logging.Handler:
    handler = BackgroundStreamHandler()  # stderr, collected by Gunicorn / Docker
    handler.setFormatter(JsonFormatter())
    handler._layerscope = True  # type: ignore[attr-defined]
    return handler


class GunicornLogger(glogging.Logger):
    """Gunicorn's logger without its access log: the app writes a richer access line
    itself (service/logs.py), and Gunicorn would otherwise build its access atoms for
    every request (about 5 % of a small request's time) only to drop them."""

    def _compute_access_log_enabled(self) -> bool:
        return False


def gunicorn_logconfig(level: str = "info") -> dict[str, Any]:
    """``logconfig_dict`` for gunicorn_conf.py: Gunicorn's own lines and the app's as JSON
    on stderr (Gunicorn's access log stays off; the app writes a richer one)."""
    level = level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    background = {**handler, "class": "service.logs.BackgroundStreamHandler"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "json": handler,
            "json_background": background,
            "null": {"class": "logging.NullHandler"},
        },
        "root": {"level": "WARNING", "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json"], "propagate": False},
            # Gunicorn's own access lines are dropped: the app logs richer ones.
            "gunicorn.access": {"level": "CRITICAL", "handlers": ["null"], "propagate": False},
            # request-path lines: written off the request threads (BackgroundStreamHandler)
            "layerscope": {"level": level, "handlers": ["json_background"], "propagate": False},
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


_ids = {"pid": None, "prefix": "", "counter": itertools.count()}
_ids_lock = threading.Lock()


def new_request_id() -> str:
    """32 hex characters, unique across workers and restarts: 16 random per process
    (drawn again after a fork) and a 16-digit counter. ``uuid4`` reads the kernel's
    random source on every call, a syscall per request."""
    pid = os.getpid()
    if _ids["pid"] != pid:
        with _ids_lock:
            if _ids["pid"] != pid:
                _ids.update(prefix=os.urandom(8).hex(), counter=itertools.count())
                _ids["pid"] = pid
    return f"{_ids['prefix']}{next(_ids['counter']):016x}"


def request_id_from(value: str | None) -> str:
    """The incoming id when well-formed, else a fresh one (32 hex characters)."""
    if value and REQUEST_ID_RE.match(value):
        return value
    return new_request_id()


_REQUEST_ID_ENVIRON = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")


def _before() -> None:
    # what request.headers.get(REQUEST_ID_HEADER) reads, without the header-name mangling
    ctx = g._get_current_object()  # one proxy lookup per hook instead of one per field
    ctx.request_id = request_id_from(request.environ.get(_REQUEST_ID_ENVIRON))
    ctx._ls_log_start = time.perf_counter()


_access = logging.getLogger(ACCESS_LOGGER)

_ACCESS_HEAD = line_head(0.0, "info", ACCESS_LOGGER, "request", 0)  # ts, pid: the writer's


def direct_access_handler(logger: logging.Logger = _access) -> BackgroundStreamHandler | None:
    """The handler ``logger``'s INFO records reach when logging is set up as Gunicorn
    runs it (``gunicorn_logconfig``: the parent logger's one JSON BackgroundStreamHandler,
    nothing propagated further, no filters), else None. Then the access line is queued
    as a plain dict (``emit_entry``): the same text, without building a LogRecord, taking
    the logging locks and scanning its ~25 attributes in the formatter (about 11 of 15
    µs a request). Any other set-up (pytest's caplog, added handlers) takes ``logging``."""
    if logger.handlers or logger.filters or logger.disabled or not logger.propagate:
        return None
    parent = logger.parent
    if parent is None or parent.propagate or parent.filters or parent.disabled:
        return None
    handlers = parent.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if (
        type(handler) is not BackgroundStreamHandler
        or type(handler.formatter) is not JsonFormatter
        or handler.filters
        or handler.level > logging.INFO
    ):
        return None
    return handler


# service.metrics (the same bounded model labels), imported on first use: the Gunicorn
# master imports this module through gunicorn_conf.py and must not define the metrics.
_metrics = None


def _after(response: Response) -> Response:
    global _metrics
    ctx = g._get_current_object()
    req = request._get_current_object()  # one proxy lookup instead of one per field
    rid = ctx.get("request_id") or request_id_from(None)
    response.headers[REQUEST_ID_HEADER] = rid
    path = req.path
    if path in SKIP_ACCESS_LOG or not _access.isEnabledFor(logging.INFO):
        return response
    start = ctx.get("_ls_log_start")
    served = ctx.get("layerscope_model")  # (name, version) of the runtime that answered
    if served:
        model = served[0]
    else:
        args = req.view_args or {}
        model = args.get("name", args.get("model"))
    if _metrics is None:
        from service import metrics as _metrics

    rule = req.url_rule
    fields = {
        "request_id": rid,
        "method": req.method,
        "endpoint": rule.rule if rule is not None else None,
        "path": path[:256],
        "status": response.status_code,
        "duration_ms": None if start is None else round((time.perf_counter() - start) * 1e3, 3),
        "request_bytes": get_content_length(req.environ),  # req.content_length, sooner
        "response_bytes": response.calculate_content_length(),
        "model": None if model is None else _metrics.model_label(model),
        "version": None if served is None else served[1],
    }
    handler = direct_access_handler()
    if handler is not None:
        handler.emit_entry({**_ACCESS_HEAD, "ts": time.time(), **fields})
        return response
    # Logger.info without the caller lookup (a stack walk per request; the JSON line
    # carries no file or line number anyway).
    _access.handle(
        _access.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, "request", None, None, extra=fields)
    )
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
