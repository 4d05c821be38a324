"""The gRPC server of one process: both protocols, the standard health service and
reflection, on ``LAYERSCOPE_HOST:LAYERSCOPE_GRPC_PORT``, over the process's own app (its
repository, batchers, metrics), so models are loaded once per process.

Under Gunicorn every worker runs one (``serve_in_worker``, from the ``post_worker_init``
hook) on the same port with ``SO_REUSEPORT``: the kernel spreads new connections over the
workers' listening sockets as it does for HTTP. A connection (and every call multiplexed
on it) stays with its worker, so ``LAYERSCOPE_GRPC_MAX_CONNECTION_AGE`` makes clients
reconnect now and then, re-spreading long-lived channels. SIGTERM to a worker stops its
gRPC server gracefully beside Gunicorn's HTTP drain: the health service turns NOT_SERVING,
new calls are refused, calls in progress get ``LAYERSCOPE_GRACEFUL_TIMEOUT`` seconds."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.grpc import oip, tfs

log = logging.getLogger("layerscope.grpc")


def options(settings) -> list[tuple[str, int]]:
    """Channel arguments from the settings (docs/grpc.md): limits on message sizes,
    streams, keep-alive pings, idle and old connections, and handshakes."""
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    opts = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),  # answers are bounded by the activation cap
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.keepalive_time_ms", ms(settings.grpc_keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(settings.grpc_keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", ms(settings.grpc_min_ping_interval)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.server_handshake_timeout_ms", ms(settings.grpc_handshake_timeout)),
    ]
    if settings.grpc_max_connection_idle > 0:
        opts.append(("grpc.max_connection_idle_ms", ms(settings.grpc_max_connection_idle)))
    if settings.grpc_max_connection_age > 0:
        opts.append(("grpc.max_connection_age_ms", ms(settings.grpc_max_connection_age)))
        opts.append(
            ("grpc.max_connection_age_grace_ms", ms(settings.grpc_max_connection_age_grace))
        )
    return opts


def address(settings) -> str:
    host = settings.host
    return f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"


class GrpcServer:
    """One process's server: ``start()``, ``stop(grace)`` (idempotent)."""

    def __init__(self, app):
        self.app = app
        state = app.extensions["layerscope"]
        self.settings = state.settings
        self.repository = state.repository
        threads = self.settings.grpc_threads or self.settings.threads
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
            options=options(self.settings),
            maximum_concurrent_rpcs=self.settings.grpc_max_concurrent_rpcs,
        )
        names = [oip.add(self.server, app), *tfs.add(self.server, app)]
        self.health = _Health(self)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.services = [*names, health.SERVICE_NAME]
        reflection.enable_server_reflection([*self.services, reflection.SERVICE_NAME], self.server)
        self.port: int | None = None
        self._stopped: threading.Event | None = None
        self._lock = threading.Lock()
        self._quit = threading.Event()
        self._ready: bool | None = None

    def start(self) -> GrpcServer:
        where = address(self.settings)
        self.port = self.server.add_insecure_port(where)  # RuntimeError when it cannot bind
        self._set_health(False)
        self.server.start()
        threading.Thread(target=self._watch_readiness, name="grpc-health", daemon=True).start()
        log.info("gRPC serving on %s", where, extra={"event": "grpc_started", "port": self.port})
        return self

    def _set_health(self, ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.services[:-1]):
            self.health.set(name, status)

    def refresh_health(self) -> None:
        """The health status follows /readyz: SERVING while every model's latest version
        is warm in this process."""
        try:
            ready, _ = self.repository.readiness()
        except Exception:  # a repository mid-refresh: NOT_SERVING until the next look
            ready = False
        if ready != self._ready and not self._quit.is_set():
            self._ready = ready
            self._set_health(ready)

    def _watch_readiness(self) -> None:
        """For Watch callers: a look twice a second until the server stops (Check looks
        itself, at once)."""
        while not self._quit.is_set():
            self.refresh_health()
            self._quit.wait(0.5)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Refuse new calls, give calls in progress ``grace`` seconds (default
        LAYERSCOPE_GRACEFUL_TIMEOUT); the returned event is set once the server is down."""
        with self._lock:
            if self._stopped is None:
                self._quit.set()
                self.health.enter_graceful_shutdown()
                grace = self.settings.graceful_timeout if grace is None else grace
                self._stopped = self.server.stop(grace)
                log.info("gRPC stopping", extra={"event": "grpc_stopping", "grace": grace})
            return self._stopped


class _Health(health.HealthServicer):
    """The standard health service; ``Check`` looks at the repository first, so a probe
    right after the models turn ready already sees SERVING."""

    def __init__(self, owner: GrpcServer):
        super().__init__(experimental_non_blocking=True)
        self._owner = owner

    def Check(self, request, context):  # noqa: N802 (the generated servicer's name)
        self._owner.refresh_health()
        return super().Check(request, context)


# -- inside a Gunicorn worker -------------------------------------------------------------------
_worker_server: GrpcServer | None = None


def serve_in_worker(worker) -> GrpcServer | None:
    """``post_worker_init``: start this worker's server over the app it just loaded, and
    chain a graceful gRPC stop in front of the worker's own SIGTERM handler."""
    global _worker_server
    app = getattr(worker, "wsgi", None)  # the app this worker loaded and serves
    state = getattr(app, "extensions", {}).get("layerscope")
    if state is None or not state.settings.grpc_port:  # another WSGI app (bench.ceiling)
        return None
    try:
        _worker_server = GrpcServer(app).start()
    except RuntimeError as exc:  # port taken by a process without SO_REUSEPORT
        log.error("gRPC could not start: %s", exc, extra={"event": "grpc_failed"})
        return None
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        _worker_server.stop()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)
    return _worker_server


def stop_in_worker(grace: float | None = None) -> None:
    """``worker_exit``: stop (if SIGTERM did not already) and wait for the server."""
    server = _worker_server
    if server is None:
        return
    limit = server.settings.graceful_timeout if grace is None else grace
    server.stop(grace).wait(limit + 1)
