"""Hold model requests while a worker's first load runs, instead of answering 503.

Gunicorn replaces a crashed worker with a fresh one that accepts connections at once but
needs seconds to load and warm its models; without this, every request the kernel hands
to it meanwhile would fail with 503 although the other workers are healthy. Model
requests wait (at most half the worker timeout) for the initial load; health, metrics
and documentation endpoints never wait, so probes still see the worker's real state."""

from __future__ import annotations

from flask import Flask, current_app, request

NEVER_WAIT = {"health", "metrics", "openapi", "admin"}  # blueprints
PROBES = {"v2.model_ready", "native.list_models"}


def _hold() -> None:
    state = current_app.extensions["layerscope"]
    done = state.repository.initial_load_done
    if done.is_set():  # every request once the worker is warm: nothing else to look up
        return
    endpoint = request.endpoint
    if endpoint is None or endpoint in PROBES:
        return
    if (request.blueprint or "") in NEVER_WAIT:
        return
    done.wait(state.settings.timeout / 2)


def init_app(app: Flask) -> None:
    app.before_request(_hold)
