"""How the gRPC port lives with Gunicorn: a server in each worker over the worker's own
models (each loaded once per worker, nowhere else), connections spread over the workers
by SO_REUSEPORT, and SIGTERM draining gRPC calls with the HTTP requests."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from conftest import GrpcServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


def log_lines(server) -> list[dict]:
    out = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def fraud_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="fraud")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 30])
    request.raw_input_contents.append(np.zeros((1, 30), np.float32).tobytes())
    return request


def test_models_load_once_per_worker_and_grpc_runs_in_each(server):
    workers = server.worker_pids()
    lines = log_lines(server)
    loads = collections.Counter(
        (e["pid"], e["model"], e["version"]) for e in lines if e.get("event") == "model_loaded"
    )
    assert {pid for pid, _, _ in loads} == workers  # no other process loaded a model
    assert set(loads.values()) == {1}, loads  # each version once per worker
    assert len(loads) == len(workers) * 4  # fraud, fashion, pair, tokens in each worker
    started = [e["pid"] for e in lines if e.get("event") == "grpc_started"]
    assert sorted(started) == sorted(workers)


def test_connections_spread_over_the_workers(server):
    before = len(server.log_text())
    # grpc shares one connection between a process's channels to one target unless each
    # has its own subchannel pool: then 16 channels are 16 TCP connections
    local = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(server.target, options=local) for _ in range(16)]
    try:
        for ch in channels:
            service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(fraud_request(), timeout=30)
    finally:
        for ch in channels:
            ch.close()
    time.sleep(0.5)  # the access lines are written off the request threads
    served = collections.Counter()
    for line in server.log_text()[before:].splitlines():
        if '"endpoint":"/inference.GRPCInferenceService/ModelInfer"' in line:
            served[json.loads(line)["pid"]] += 1
    assert sum(served.values()) == 16
    assert set(served) == server.worker_pids(), served  # 16 connections: both workers


def test_sigterm_drains_grpc_calls(repo, tmp_path):
    """SIGTERM to Gunicorn while 4 clients call in a loop: calls in flight complete, later
    ones are refused (UNAVAILABLE; CANCELLED for the rare call caught between the worker's
    socket and a handler thread); no INTERNAL / UNKNOWN; the master exits 0 within the
    graceful timeout."""
    x = np.zeros((8, 28, 28, 1), np.float32)
    request = service_pb2.ModelInferRequest(model_name="fashion")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    for name in ("conv2d_1", "conv2d_2", "dense_1", "output"):
        request.outputs.add(name=name)
    outcomes: list[tuple[float, float, str]] = []
    stop = threading.Event()
    with GrpcServer(repo, tmp_path, workers=2, LAYERSCOPE_GRACEFUL_TIMEOUT="20") as srv:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(srv.target))

        def client():
            with grpc.insecure_channel(srv.target) as ch:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
                while not stop.is_set():
                    start = time.monotonic()
                    try:
                        stub.ModelInfer(request, timeout=30)
                        code = "OK"
                    except grpc.RpcError as err:
                        code = err.code().name
                    outcomes.append((start, time.monotonic(), code))
                    if code == "UNAVAILABLE":
                        time.sleep(0.05)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        term = time.monotonic()
        os.killpg(srv.proc.pid, signal.SIGTERM)
        status = srv.proc.wait(40)
        stop.set()
        for t in threads:
            t.join(40)
        with pytest.raises(grpc.RpcError):
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    codes = collections.Counter(code for _, _, code in outcomes)
    assert status == 0, srv.log_text(3000)
    # a call completes, or is refused as UNAVAILABLE once the port is closed; a call that
    # had reached the worker but not yet a handler thread when the server stopped is
    # CANCELLED by grpc (its handler never ran: docs/grpc.md), a rare race
    assert set(codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, codes
    assert codes["CANCELLED"] <= max(5, codes["OK"] // 100), codes
    in_flight = [o for o in outcomes if o[0] < term < o[1] and o[2] == "OK"]
    assert codes["OK"] > 10 and in_flight, (codes, len(in_flight))
