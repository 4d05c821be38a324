"""``python -m service.grpc``: the gRPC server alone, in one process with its own copy of
the models (no HTTP). The deployed layout runs gRPC inside each Gunicorn worker instead
(docs/grpc.md explains the choice and its measurement); this entry point is the other
layout of that measurement, and a way to serve gRPC without HTTP."""

from __future__ import annotations

import signal
import threading

from service import create_app
from service.grpc.server import GrpcServer


def main() -> None:
    app = create_app()
    server = GrpcServer(app).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop().wait(app.extensions["layerscope"].settings.graceful_timeout + 1)


if __name__ == "__main__":
    main()
