"""The background log handler and request ids of service/logs.py: request threads only
queue records, lines still come out complete, in order, with their request id, and a
forked worker neither inherits its parent's pending lines nor a held lock."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import re
import threading

from flask import Flask, g

from service import logs
from service.logs import BackgroundStreamHandler, JsonFormatter, new_request_id


def _handler(stream, interval: float = 3600.0) -> BackgroundStreamHandler:
    handler = BackgroundStreamHandler(stream, interval=interval)  # writer sleeps: tests flush
    handler.setFormatter(JsonFormatter())
    return handler


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"layerscope.test.{name}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_emit_only_queues_and_flush_writes_every_line_in_order_per_thread():
    stream = io.StringIO()
    handler = _handler(stream)
    logger = _logger("order", handler)

    def work(t: int) -> None:
        for i in range(300):
            logger.info("line %d", i, extra={"thread_no": t, "seq": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert stream.getvalue() == ""  # nothing written on the logging threads
    handler.flush()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(records) == 8 * 300
    for t in range(8):
        seqs = [r["seq"] for r in records if r["thread_no"] == t]
        assert seqs == list(range(300))
    assert {r["message"] for r in records if r["seq"] == 7} == {"line 7"}


def test_message_arguments_are_frozen_when_logged():
    stream = io.StringIO()
    handler = _handler(stream)
    logger = _logger("frozen", handler)
    items = ["before"]
    logger.info("items %s", items)
    items[0] = "after"
    handler.flush()
    assert json.loads(stream.getvalue())["message"] == "items ['before']"


def test_request_id_of_the_logging_request_survives_the_background_write():
    stream = io.StringIO()
    handler = _handler(stream)
    logger = _logger("rid", handler)
    app = Flask(__name__)
    with app.test_request_context("/"):
        g.request_id = "req-42"
        logger.info("inside a request")
    handler.flush()  # outside any request context, as the writer thread is
    assert json.loads(stream.getvalue())["request_id"] == "req-42"


def test_the_writer_thread_flushes_on_its_own():
    stream = io.StringIO()
    handler = _handler(stream, interval=0.01)
    logger = _logger("writer", handler)
    logger.info("eventually written")
    done = threading.Event()
    for _ in range(500):
        if "eventually written" in stream.getvalue():
            done.set()
            break
        threading.Event().wait(0.01)
    assert done.is_set()


def _child_logs(path: str, handler: BackgroundStreamHandler, logger_name: str) -> None:
    with open(path, "w") as fh:
        handler.setStream(fh)
        logging.getLogger(logger_name).info("from the child")
        handler.flush()
    os._exit(0)


def test_a_forked_child_starts_with_no_pending_lines_and_a_free_lock(tmp_path):
    parent_stream = io.StringIO()
    handler = _handler(parent_stream)
    logger = _logger("fork", handler)
    logger.info("pending in the parent")
    handler._write_lock.acquire()  # held at fork time, as a writer mid-write would
    try:
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(
            target=_child_logs, args=(str(tmp_path / "child.log"), handler, logger.name)
        )
        child.start()
        child.join(30)
    finally:
        handler._write_lock.release()
    assert child.exitcode == 0  # a lock inherited held would have hung the child's flush
    lines = (tmp_path / "child.log").read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["from the child"]
    assert json.loads(lines[0])["pid"] == child.pid
    handler.flush()
    assert json.loads(parent_stream.getvalue())["message"] == "pending in the parent"


def _child_ids(queue) -> None:
    queue.put([new_request_id() for _ in range(3)])


def test_request_ids_are_unique_across_threads_and_processes():
    ids: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [new_request_id() for _ in range(2000)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_ids, args=(queue,))
    child.start()
    from_child = queue.get(timeout=30)
    child.join(30)
    all_ids = ids + from_child
    assert len(set(all_ids)) == len(all_ids) == 8 * 2000 + 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in all_ids)
    assert from_child[0][:16] != ids[0][:16]  # a fresh random half after the fork


def _production_tree(name: str, stream) -> tuple[logging.Logger, BackgroundStreamHandler]:
    """A ``<name>`` / ``<name>.access`` pair set up as gunicorn_logconfig sets up
    ``layerscope`` / ``layerscope.access``."""
    handler = _handler(stream)
    parent = _logger(name, handler)
    child = logging.getLogger(f"{parent.name}.access")
    child.handlers[:], child.propagate = [], True
    return child, handler


def test_direct_access_handler_only_under_the_production_set_up():
    child, handler = _production_tree("direct", io.StringIO())
    assert logs.direct_access_handler(child) is handler
    parent = child.parent
    for change, undo in (
        (lambda: setattr(parent, "propagate", True), lambda: setattr(parent, "propagate", False)),
        (lambda: child.addHandler(logging.NullHandler()), lambda: child.handlers.clear()),
        (lambda: parent.addHandler(logging.NullHandler()), lambda: parent.handlers.pop()),
        (lambda: parent.addFilter(lambda r: True), lambda: parent.filters.clear()),
        (
            lambda: handler.setFormatter(logging.Formatter()),
            lambda: handler.setFormatter(JsonFormatter()),
        ),
        (lambda: handler.setLevel(logging.WARNING), lambda: handler.setLevel(logging.NOTSET)),
        (lambda: setattr(child, "propagate", False), lambda: setattr(child, "propagate", True)),
    ):
        change()
        assert logs.direct_access_handler(child) is None  # caplog, extra handlers, ...: logging
        undo()
        assert logs.direct_access_handler(child) is handler


def test_a_queued_entry_is_the_line_the_formatter_writes_for_the_same_record():
    stream = io.StringIO()
    child, handler = _production_tree("entry", stream)
    fields = {
        "request_id": "r-7",
        "method": "POST",
        "status": 200,
        "duration_ms": 0.25,
        "model": "fraud",
        "version": 3,
        "path": "/models/fraud/predict",
    }
    record = child.makeRecord(child.name, logging.INFO, "", 0, "request", None, None, extra=fields)
    child.handle(record)
    head = {
        "ts": record.created,
        "level": "info",
        "logger": child.name,
        "message": "request",
        "pid": 0,
    }
    handler.emit_entry({**head, **fields})
    handler.flush()
    via_logging, direct = stream.getvalue().splitlines()
    assert direct == via_logging
    assert json.loads(direct)["pid"] == os.getpid()
