"""Gunicorn configuration: ``gunicorn -c service/gunicorn_conf.py service.wsgi:app``.

Runs in the master, which never imports TensorFlow: no ``preload_app``, so every worker
imports the app (and TF, and the models) after fork — TF's thread pools and locks do not
survive ``fork``. Workers are ``gthread`` (accepting balanced over workers,
service/workers.py): TF releases the GIL during inference, so a few threads per worker
overlap requests and keep a thread free for health probes and the heartbeat while a long
request runs."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Before anything imports numpy: OpenBLAS's thread pool only contends with the request
# threads on per-request vectors (an activation map's L2 norm took ms instead of us).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from service.logs import GunicornLogger, gunicorn_logconfig  # noqa: E402  (no TensorFlow)
from service.settings import Settings  # noqa: E402  (no TensorFlow import)

_settings = Settings()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# gthread plus least-connections accepting: keep-alive connections opened in a burst split
# evenly over the workers instead of 12:4; its main loop reads each request in full, under
# deadlines, before a thread sees it, so slow clients hold no thread (service/workers.py,
# docs/reliability.md: LAYERSCOPE_HEADER_TIMEOUT, _BODY_TIMEOUT, _BODY_MIN_RATE,
# _KEEPALIVE_TIMEOUT, _MAX_CONNECTIONS, _MAX_BUFFERED_BYTES).
worker_class = "service.workers.BufferingThreadWorker"
threads = _settings.threads
preload_app = False
timeout = _settings.timeout  # a worker silent for this long is killed and replaced
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive_timeout  # s an idle keep-alive connection stays open
worker_connections = _settings.max_connections  # per worker; 503 beyond (workers.py)
loglevel = _settings.log_level
accesslog = None  # service/logs.py writes one JSON access line per request, with its id
errorlog = "-"
logconfig_dict = gunicorn_logconfig(_settings.log_level)  # Gunicorn's own lines as JSON too
logger_class = GunicornLogger  # no Gunicorn access atoms built per request only to be dropped
limit_request_line = 8190
# Gunicorn 27's control socket defaults to one fixed path per user: several servers on one
# machine (tests, bench) would fight over it, and nothing here needs runtime management.
control_socket_disable = True
# TensorFlow reads these when it is first imported, in the worker.
raw_env = [
    f"TF_NUM_INTRAOP_THREADS={_settings.intra_op_threads}",
    f"TF_NUM_INTEROP_THREADS={_settings.inter_op_threads}",
    "TF_CPP_MIN_LOG_LEVEL=2",
]
for _entry in raw_env:
    _key, _value = _entry.split("=", 1)
    os.environ.setdefault(_key, _value)


def post_worker_init(worker):
    """In each worker, its app loaded: its gRPC server on the shared LAYERSCOPE_GRPC_PORT
    (SO_REUSEPORT), over the same app and models (service/grpc/server.py, docs/grpc.md)."""
    if _settings.grpc_port:
        from service.grpc.server import serve_in_worker

        serve_in_worker(worker)


def worker_exit(server, worker):
    """In the exiting worker: stop its gRPC server (calls in progress finish within the
    graceful timeout), then write the access lines still queued for the log writer."""
    import logging

    if _settings.grpc_port:
        from service.grpc.server import stop_in_worker

        stop_in_worker()
    for handler in logging.getLogger("layerscope").handlers:
        handler.flush()


def child_exit(server, worker):
    """Prometheus multiprocess mode: drop a dead worker's live gauges (its counters stay)."""
    from service.metrics import mark_process_dead

    mark_process_dead(worker.pid)
