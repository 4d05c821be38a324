"""Liveness and readiness, native (/healthz, /readyz) and Open Inference Protocol
(/v2/health/live, /v2/health/ready). Liveness never touches models, so a worker busy
loading still answers it; readiness is 200 only when every model's latest version is
loaded and warmed (after the initial load, also while a newer version is still loading
and an older one serves: a hot reload takes no replica out of its balancer)."""

from __future__ import annotations

import os

from flask import Blueprint, jsonify

from service.api import repository

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "alive", "pid": os.getpid()})


@bp.get("/readyz")
def readyz():
    ready, detail = repository().readiness()
    # pid: each Gunicorn worker loads its own models, so readiness is per worker
    return jsonify({"ready": ready, "pid": os.getpid(), **detail}), (200 if ready else 503)


@bp.get("/v2/health/live")
def v2_live():
    return jsonify({"live": True})


@bp.get("/v2/health/ready")
def v2_ready():
    ready, _ = repository().readiness()
    return jsonify({"live": True, "ready": ready}), (200 if ready else 503)
