"""Gunicorn's gthread worker with least-connections accepting, and slow clients kept off
its threads.

Every worker polls the one shared listening socket, and whichever wakes first accepts. With
keep-alive clients (a load balancer's connection pool, a load generator) the connections
opened in a burst stay where they landed, and they land unevenly: 16 connections to 2
workers measured 12:4, 13:3, 14:2, never 8:8. The worker holding three quarters of them
is then bound by its own GIL while the other idles, whatever the cores could do.

Here a worker that already holds at least as many connections as it has threads waits a
little before it accepts, and the more it holds the longer: ``ACCEPT_STEP`` per connection
over its threads, at most ``ACCEPT_MAX_DELAY``. A less loaded worker, polling the same
socket, takes the connection first; if none does, the waiting worker accepts it after its
delay, so nothing is refused. A worker with idle capacity, and a lone worker, accept at
once as before. Only new connections wait; requests on open ones never do.

``BufferingThreadWorker``, the one ``service/gunicorn_conf.py`` configures, adds to that
the defence against slow clients: its main loop reads each request head and body itself,
non-blocking and under deadlines, and a thread only ever gets a complete request (see the
comment above the class, and docs/reliability.md).

The master imports this module, so it imports Gunicorn only (no TensorFlow).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import resource
import selectors
import socket
import struct
import time
from collections import deque
from functools import partial

from gunicorn import http, util
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker

ACCEPT_STEP = 0.001  # seconds of delay per connection held beyond the thread count
ACCEPT_MAX_DELAY = 0.010  # a connection waits at most this long for a quieter worker


def accept_delay(connections: int, threads: int, workers: int) -> float:
    """Seconds a worker holding ``connections`` waits before accepting another."""
    excess = connections - threads + 1
    if workers < 2 or excess <= 0:
        return 0.0
    return min(ACCEPT_MAX_DELAY, excess * ACCEPT_STEP)


class BalancedThreadWorker(ThreadWorker):
    """``gthread`` whose accept yields to workers holding fewer connections."""

    def init_process(self):
        self._accept_after = 0.0  # listeners stay unregistered until this monotonic time
        self._resumed = False  # the pause just ended: the next accept goes ahead
        super().init_process()

    def current_accept_delay(self) -> float:
        """How long this worker waits now before accepting (see :func:`accept_delay`)."""
        return accept_delay(self.nr_conns, self.cfg.threads, self.cfg.workers)

    def accept(self, listener):
        if not self._resumed:
            delay = self.current_accept_delay()
            if delay > 0:
                self._accept_after = time.monotonic() + delay
                super().set_accept_enabled(False)
                return
        self._resumed = False
        self.accept_connection(listener)

    def accept_connection(self, listener):
        """Accept one connection now (gthread: straight to the thread pool)."""
        super().accept(listener)

    def set_accept_enabled(self, enabled):
        if enabled and not self._accepting:
            if time.monotonic() < self._accept_after:
                return  # still yielding to the other workers
            if self._accept_after:
                self._accept_after = 0.0
                self._resumed = True
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        if not self._accepting:
            remaining = self._accept_after - time.monotonic()
            if remaining > 0:  # wake when the pause ends, not after a whole poll timeout
                timeout = min(timeout, remaining)
        super().wait_for_and_dispatch_events(timeout)
        # A connection still waiting after the pause was accepted in this dispatch, or
        # another worker took it: either way the next connection is judged afresh.
        self._resumed = False


# -- slow and hostile clients (docs/reliability.md) -------------------------------------------
#
# Gunicorn's gthread worker hands every accepted connection to a thread, which then blocks
# reading the request head and body: a client that sends its head one byte every few
# seconds holds that thread for as long as it likes, and 2 workers x 4 threads fell to 7
# such connections. BufferingThreadWorker reads heads and bodies in the worker's main loop
# instead, non-blocking, under deadlines, and hands a thread only a request that is
# complete in memory; the thread's parser then reads it from that buffer, never from the
# socket. Connections over a limit are closed (408 / 503 where HTTP allows an answer),
# counted in layerscope_connections_closed_total{reason} and logged once per client
# address and minute.

SWEEP_GAP = 0.1  # s between two deadline sweeps at most (deadlines are this precise)
YOUNG = 0.005  # s: a new connection counts as busy this long while its request is on its way
REFRESH_INTERVAL = 0.5  # s between refreshes of the connection gauges
LOG_INTERVAL = 60.0  # s: one log line per client address per interval and worker
LOG_CLIENTS = 4096  # client addresses remembered for the log's rate limit, per worker
STOP_LINGER = 2.0  # s a stopping worker still reads requests (gthread's keep-alive linger)
LINGER = 2.0  # s a closed connection's unread input is drained (RFC 9112 section 9.6)
LINGER_DRAIN = 65536  # ... or until this many bytes: then the socket closes anyway
HEAD_READ = 65536  # bytes per recv while reading a head
BODY_READ = 1 << 20  # at most this per recv while reading a body of known length
READS_PER_EVENT = 16  # recv calls per readiness event before other sockets get a turn
FD_RESERVE = 256  # file descriptors kept for the worker itself (models, logs, pipes)
_UNUSUAL = object()  # a head this module leaves to Gunicorn's parser (it answers 400)


class _Reading:
    """One request being read in the main loop."""

    __slots__ = (
        "buf", "started", "deadline", "head_end", "scanned", "need", "chunked",
        "chunk_pos", "chunk_last", "body_start", "registered", "sent_continue",
    )  # fmt: skip

    def __init__(self, now: float, deadline: float, data: bytes):
        self.buf = bytearray(data)
        self.started = now
        self.deadline = deadline  # monotonic; the head's, then the body's
        self.head_end = -1  # index just after the head's blank line, once seen
        self.scanned = 0  # bytes already searched for the blank line
        self.need = -1  # bytes the whole request takes (head + body), once known
        self.chunked = False
        self.chunk_pos = 0  # start of the next chunk-size line (chunked bodies)
        self.chunk_last = False  # the last chunk was seen: trailer lines follow
        self.body_start = 0.0
        self.registered = False  # on the poller, waiting for more bytes
        self.sent_continue = False  # "100 Continue" already sent for this request


class _Conn(TConn):
    """A gthread connection that knows its worker: its thread's socket operations time
    out (SO_RCVTIMEO / SO_SNDTIMEO), and its graceful close lingers in the main loop
    instead of blocking it."""

    def __init__(self, worker, cfg, sock, client, server):
        super().__init__(cfg, sock, client, server)
        self.worker = worker
        # Only a slow reader of a response (or a request this module left to Gunicorn's
        # parser) can still block a thread: for at most this long per send / recv. Set in
        # the kernel once (Python's own socket timeout would cost a poll() per call and two
        # fcntl() per request); it only acts while the socket is blocking, in a thread.
        timeval = struct.pack("ll", int(worker.io_timeout), int(worker.io_timeout % 1 * 1e6))
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        self.reading: _Reading | None = None
        self.passthrough = False  # TLS / h2c prior knowledge: gthread's own path
        self.served = False  # a request of this connection reached a thread
        self.must_close = False  # the current request's answer closes the connection
        self.sent_continue = False

    def close(self, graceful=False):
        if graceful and not self.passthrough:
            self.worker.linger(self.sock)
        else:
            super().close(graceful)


def head_fields(head: bytes):
    """(Content-Length or None, chunked, expects 100-continue) of a request head without
    its blank line, or ``_UNUSUAL`` for anything this module does not frame itself
    (Gunicorn's parser then answers it, mostly with a 400, from the buffer)."""
    lines = head.split(b"\r\n")
    http10 = lines[0].endswith(b"HTTP/1.0")
    length = None
    coding = None
    expect = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return _UNUSUAL
        name = name.lower()
        if name == b"content-length":
            value = value.strip()
            if length is not None or not value.isdigit():
                return _UNUSUAL
            length = int(value)
        elif name == b"transfer-encoding":
            if coding is not None:
                return _UNUSUAL
            coding = value.strip().lower()
        elif name == b"expect":
            expect = value.strip().lower() == b"100-continue" and not http10
    if coding is not None and (coding != b"chunked" or length is not None or http10):
        return _UNUSUAL
    return length, coding is not None, expect


def chunked_end(r: _Reading) -> int | None:
    """Where a chunked body (and its trailers) ends in ``r.buf``: None while incomplete,
    -1 when its framing is broken."""
    buf, pos = r.buf, r.chunk_pos
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            r.chunk_pos = pos
            return -1 if len(buf) - pos > 8192 else None
        if r.chunk_last:  # trailer lines, up to an empty one
            if eol == pos:
                return eol + 2
            pos = eol + 2
            continue
        size = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            n = int(size, 16)
        except ValueError:
            return -1
        if n < 0 or not size.isalnum():
            return -1
        if n == 0:
            r.chunk_last = True
            pos = eol + 2
            continue
        end = eol + 2 + n + 2
        if len(buf) < end:
            r.chunk_pos = pos
            return None
        if buf[end - 2 : end] != b"\r\n":
            return -1
        pos = end


def http_error(status: int, phrase: str, message: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if retry_after is not None:
        head += f"Retry-After: {retry_after}\r\n"
    return head.encode() + b"\r\n" + body


class BufferingThreadWorker(BalancedThreadWorker):
    """Balanced gthread whose main loop reads every request in full, under deadlines,
    before a thread sees it (module comment above; settings in service/settings.py)."""

    def init_process(self):
        from service.settings import Settings

        settings = Settings()
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.body_min_rate = settings.body_min_rate
        self.max_body_bytes = settings.max_body_bytes
        self.max_buffered = settings.max_buffered_bytes
        self.io_timeout = max(settings.header_timeout, settings.body_timeout)
        self.max_connections = self._connection_cap(settings.max_connections)
        # gthread stops accepting at worker_connections; this worker accepts one more
        # and answers it 503, so nothing waits unseen in the listen backlog.
        self.worker_connections = self.max_connections + 1
        self.max_keepalived = max(0, self.max_connections - self.cfg.threads)
        cfg = self.cfg
        # beyond this a head is Gunicorn's to refuse (its limits on line and fields)
        self.max_head = cfg.limit_request_line + cfg.limit_request_fields * (
            cfg.limit_request_field_size + 2
        ) + 4  # fmt: skip
        self._reading: dict[_Conn, None] = {}  # insertion-ordered set
        self._lingering: deque = deque()  # [socket | None, deadline, drained]
        self._buffered = 0  # bytes held in _Reading buffers
        self._first_reads = 0  # reading connections that never had a request yet
        self._young: deque = deque()  # (accepted at, connection), the last YOUNG seconds
        self._next_deadline = math.inf
        self._last_sweep = 0.0
        self._next_refresh = 0.0
        self._stop_at: float | None = None
        self._reports: dict[str, list] = {}  # client address -> [logged at, {reason: n}]
        self._next_report_sweep = 0.0
        self._counters: dict[str, object] = {}
        self._metrics = None
        self._conn_log = logging.getLogger("layerscope.connections")
        super().init_process()

    def _connection_cap(self, wanted: int) -> int:
        """``wanted``, raising the soft file-descriptor limit for it where the hard
        limit allows; else as many as the limit leaves room for, with a warning."""
        need = wanted + FD_RESERVE + 64  # + lingering closes
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            target = need if hard == resource.RLIM_INFINITY else min(need, hard)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
        if soft != resource.RLIM_INFINITY and soft < need:
            cap = max(1, soft - FD_RESERVE - 64)
            self.log.warning(
                "LAYERSCOPE_MAX_CONNECTIONS=%d needs %d file descriptors per worker, but "
                "the limit (ulimit -n) is %d: %d connections per worker instead",
                wanted, need, soft, cap,
            )  # fmt: skip
            return cap
        return wanted

    # -- accepting -------------------------------------------------------------------------
    def current_accept_delay(self) -> float:
        if self.nr_conns >= self.max_connections:  # full: let another worker take it first
            return ACCEPT_MAX_DELAY if self.cfg.workers > 1 else 0.0
        # A connection still without its first request holds no thread, and may never
        # send one (an idle or slow client): no reason to yield to another worker for it,
        # unless it is just accepted (a load balancer's or wrk's burst of connections
        # sends its requests a millisecond after the accept).
        busy = self.nr_conns - self._first_reads
        young = self._young
        if young:
            now = time.monotonic()
            while young and now - young[0][0] > YOUNG:
                young.popleft()
            busy += sum(1 for _, conn in young if conn.reading is not None and not conn.served)
        return accept_delay(busy, self.cfg.threads, self.cfg.workers)

    def accept_connection(self, listener):
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self, self.cfg, sock, client, listener.getsockname())
        if self.cfg.workers > 1:
            self._young.append((time.monotonic(), conn))
        if self.cfg.is_ssl or negotiation.prior_knowledge_allowed(self.cfg, client):
            conn.passthrough = True
        if self.nr_conns > self.max_connections:
            self._refuse(
                conn,
                "max_connections",
                http_error(
                    503,
                    "Service Unavailable",
                    f"this worker holds its limit of {self.max_connections} open "
                    "connections (LAYERSCOPE_MAX_CONNECTIONS); retry later",
                    retry_after=1,
                ),
            )
            return
        self.enqueue_req(conn)

    # -- reading requests in the main loop ----------------------------------------------------
    def enqueue_req(self, conn):
        """gthread calls this for a new connection, a kept-alive one that became
        readable, and one whose last request left bytes behind: read the request here
        first, and submit it to the thread pool only once it is complete."""
        if not isinstance(conn, _Conn) or conn.passthrough:
            super().enqueue_req(conn)
            return
        data = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        sock = conn.sock
        if sock.gettimeout() != 0.0:  # gthread leaves kept-alive sockets non-blocking
            sock.setblocking(False)
        if not data and conn.served:
            # A kept-alive connection the poller found readable: its next request, whole
            # in one read most of the time, goes straight to a thread.
            try:
                data = sock.recv(HEAD_READ)
            except (BlockingIOError, InterruptedError):
                data = None  # nothing after all: the general path waits for it
            except OSError:
                data = b""  # reset: as good as closed
            if data is None:
                data = b""
            elif not data:  # the client closed it
                self.nr_conns -= 1
                util.close(sock)
                return
            elif self._whole(conn, data):
                return
        now = time.monotonic()
        r = conn.reading = _Reading(now, now + self.header_timeout, data)
        if self._stop_at is not None:
            r.deadline = min(r.deadline, self._stop_at + STOP_LINGER)
        self._reading[conn] = None
        self._buffered += len(data)
        if not conn.served:
            self._first_reads += 1
        self._next_deadline = min(self._next_deadline, r.deadline)
        if data and self._advance(conn):
            return
        self._pump(conn)

    def _whole(self, conn, data: bytes) -> bool:
        """Submit ``data`` at once if it holds a whole plain request (the common case);
        anything else takes the general path (``_advance``)."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        fields = head_fields(data[:end])
        if fields is _UNUSUAL or fields[1]:
            return False
        length = fields[0] or 0
        if length > self.max_body_bytes or len(data) < end + 4 + length:
            return False
        conn.must_close = False
        conn.sent_continue = False
        conn.parser.unreader.unread(data)
        super().enqueue_req(conn)
        return True

    def _on_readable(self, conn, _sock):
        if conn.reading is not None:
            self._pump(conn)

    def _pump(self, conn):
        """Read what the socket holds; the request is then complete (submitted), refused,
        or still waiting (on the poller)."""
        r = conn.reading
        sock = conn.sock
        for _ in range(READS_PER_EVENT):
            size = HEAD_READ
            if r.need > 0:
                size = max(HEAD_READ, min(r.need - len(r.buf), BODY_READ))
            try:
                chunk = sock.recv(size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:  # the client went away (or reset): nothing to answer
                self._leave_reading(conn)
                self.nr_conns -= 1
                util.close(sock)
                return
            r.buf += chunk
            self._buffered += len(chunk)
            if self._advance(conn):
                return
            if len(chunk) < size:
                break  # the socket is drained for now
        if not r.registered:
            self.poller.register(sock, selectors.EVENT_READ, partial(self._on_readable, conn))
            r.registered = True

    def _advance(self, conn) -> bool:
        """Frame what ``conn.reading`` holds; True once the connection left this state
        (request submitted, or connection refused)."""
        r = conn.reading
        buf = r.buf
        if r.head_end < 0:
            end = buf.find(b"\r\n\r\n", max(0, r.scanned - 3))
            if end < 0:
                r.scanned = len(buf)
                if len(buf) > self.max_head:  # Gunicorn refuses it (its header limits)
                    self._submit(conn, close=True)
                    return True
                return self._over_budget(conn)
            r.head_end = end + 4
            fields = head_fields(bytes(buf[:end]))
            if fields is _UNUSUAL:
                self._submit(conn, close=True)
                return True
            length, r.chunked, expect = fields
            now = r.body_start = time.monotonic()
            if r.chunked:
                r.chunk_pos = r.head_end
                r.deadline = now + self.body_timeout
            elif not length:
                r.need = r.head_end
            elif length > self.max_body_bytes:  # the app answers 413 without reading it
                self._submit(conn, close=True)
                return True
            else:
                r.need = r.head_end + length
                r.deadline = now + self.body_timeout + length / self.body_min_rate
            if self._stop_at is not None:
                r.deadline = min(r.deadline, self._stop_at + STOP_LINGER)
            self._next_deadline = min(self._next_deadline, r.deadline)
            if expect and (r.chunked or len(buf) < r.need):
                # the client waits for this before it sends the body; Gunicorn would
                # only send it from the thread, once the body is here
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                r.sent_continue = True
        if r.chunked:
            end = chunked_end(r)
            if end is None:
                received = len(buf) - r.head_end
                if received > self.max_body_bytes:  # the app answers 413 as it reads
                    self._submit(conn, close=True)
                    return True
                r.deadline = max(
                    r.deadline, r.body_start + self.body_timeout + received / self.body_min_rate
                )
                return self._over_budget(conn)
            if end < 0:  # broken framing: Gunicorn's parser says so (400)
                self._submit(conn, close=True)
                return True
            r.need = end
        if len(buf) >= r.need:
            self._submit(conn)
            return True
        return self._over_budget(conn)

    def _over_budget(self, conn) -> bool:
        if self._buffered <= self.max_buffered:
            return False
        self._refuse(
            conn,
            "buffer_full",
            http_error(
                503,
                "Service Unavailable",
                f"this worker already holds {self._buffered} bytes of unfinished requests; "
                f"the limit is {self.max_buffered} (LAYERSCOPE_MAX_BUFFERED_BYTES); "
                "retry later",
                retry_after=1,
            ),
        )
        return True

    def _leave_reading(self, conn) -> _Reading:
        r = conn.reading
        conn.reading = None
        self._reading.pop(conn, None)
        self._buffered -= len(r.buf)
        if not conn.served:
            self._first_reads -= 1
        if r.registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
        return r

    def _submit(self, conn, close: bool = False):
        """Hand the buffered request to a thread: its parser reads it from the buffer."""
        r = self._leave_reading(conn)
        conn.must_close = close
        conn.sent_continue = r.sent_continue
        conn.served = True
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.initialized = True
        if r.buf:
            conn.parser.unreader.unread(bytes(r.buf))
        super().enqueue_req(conn)

    def handle_request(self, req, conn):
        if getattr(conn, "must_close", False):
            req.force_close()  # the rest of its body is not read: nothing may follow it
        if getattr(conn, "sent_continue", False):
            req._expected_100_continue = False  # sent by the main loop already
        return super().handle_request(req, conn)

    # -- closing ---------------------------------------------------------------------------
    def _refuse(self, conn, reason: str, answer: bytes | None):
        """Close ``conn`` at a limit: answer it first where HTTP allows (best effort,
        never blocking), count it, and log it (once per client per minute)."""
        if conn.reading is not None:
            self._leave_reading(conn)
        self.nr_conns -= 1
        if answer is None:
            util.close(conn.sock)
        else:
            with contextlib.suppress(OSError):
                conn.sock.setblocking(False)
                conn.sock.send(answer)
            self.linger(conn.sock)
        self._report(reason, conn.client)

    def linger(self, sock):
        """Half-close ``sock`` and drain its unread input from the main loop, so that the
        answer is not destroyed by a reset (what Gunicorn's close_graceful does with a
        blocking read that stops the whole worker for up to 2 s per connection)."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            util.close(sock)
            return
        entry = [sock, time.monotonic() + LINGER, 0]
        try:
            self.poller.register(sock, selectors.EVENT_READ, partial(self._on_linger, entry))
        except (KeyError, ValueError, OSError):
            util.close(sock)
            return
        self._lingering.append(entry)

    def _on_linger(self, entry, sock):
        try:
            data = sock.recv(LINGER_DRAIN)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        entry[2] += len(data)
        if not data or entry[2] >= LINGER_DRAIN:
            self._end_linger(entry)

    def _end_linger(self, entry):
        sock = entry[0]
        if sock is None:
            return
        entry[0] = None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
        util.close(sock)

    def _expire(self, conn, now: float):
        r = conn.reading
        if r.head_end < 0:
            if not r.buf:  # nothing was ever sent: no answer (a browser's spare connection)
                self._refuse(conn, "header_timeout", None)
                return
            message = (
                f"the request head was not complete within {self.header_timeout:g} s "
                f"(LAYERSCOPE_HEADER_TIMEOUT). Received: {len(r.buf)} bytes without the "
                "blank line that ends a head"
            )
            reason = "header_timeout"
        else:
            body = len(r.buf) - r.head_end
            expected = "" if r.chunked else f" of {r.need - r.head_end}"
            message = (
                f"the request body was not complete within {now - r.body_start:.1f} s "
                f"(LAYERSCOPE_BODY_TIMEOUT {self.body_timeout:g} s plus its length at "
                f"LAYERSCOPE_BODY_MIN_RATE {self.body_min_rate} bytes/s). Received: "
                f"{body}{expected} bytes"
            )
            reason = "body_timeout"
        self._refuse(conn, reason, http_error(408, "Request Timeout", message))

    def murder_keepalived(self, force=False):
        """gthread calls this on every turn of its loop (and with ``force`` on the way
        out): also expire slow requests and lingering closes, and refresh the gauges."""
        kept = len(self.keepalived_conns)
        super().murder_keepalived(force)
        idle = kept - len(self.keepalived_conns)
        if idle and not force:
            self._count("keepalive_timeout", idle)
        now = time.monotonic()
        if force:
            for conn in list(self._reading):
                self._leave_reading(conn)
                self.nr_conns -= 1
                util.close(conn.sock)
            while self._lingering:
                self._end_linger(self._lingering.popleft())
            return
        if not self.alive and self._stop_at is None:
            self._stop_at = now
            self._next_deadline = min(self._next_deadline, now + STOP_LINGER)
        if now >= self._next_deadline and now >= self._last_sweep + SWEEP_GAP:
            self._sweep(now)
        while self._lingering and (self._lingering[0][0] is None or self._lingering[0][1] <= now):
            self._end_linger(self._lingering.popleft())
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_INTERVAL
            self._refresh(now)

    def _sweep(self, now: float):
        self._last_sweep = now
        stop = None if self._stop_at is None else self._stop_at + STOP_LINGER
        earliest = math.inf
        for conn in list(self._reading):
            r = conn.reading
            if stop is not None and r.deadline > stop:
                r.deadline = stop
            if r.deadline <= now:
                self._expire(conn, now)
            else:
                earliest = min(earliest, r.deadline)
        self._next_deadline = earliest

    def _refresh(self, now: float):
        metrics = self._metrics_module()
        if metrics is not None:
            with contextlib.suppress(Exception):
                metrics.CONNECTIONS_OPEN.set(self.nr_conns)
                metrics.CONNECTIONS_READING.set(len(self._reading))
        if now >= self._next_report_sweep:  # the counts of clients that went quiet
            self._next_report_sweep = now + 5.0
            for client, entry in list(self._reports.items()):
                if now - entry[0] >= LOG_INTERVAL:
                    if entry[1]:
                        self._log_client(client, entry[1], now - entry[0])
                        self._reports[client] = [now, {}]
                    else:
                        del self._reports[client]

    def wait_for_and_dispatch_events(self, timeout):
        now = time.monotonic()
        wake = max(self._next_deadline, self._last_sweep + SWEEP_GAP)
        if self._lingering:
            wake = min(wake, self._lingering[0][1])
        super().wait_for_and_dispatch_events(min(timeout, max(0.0, wake - now)))

    # -- counting and logging ------------------------------------------------------------------
    def _metrics_module(self):
        if self._metrics is None:
            try:  # after fork, in the worker: the master never defines the metrics
                from service import metrics
            except Exception:  # a server without the app's dependencies still runs
                self._metrics = False
            else:
                self._metrics = metrics
        return self._metrics or None

    def _count(self, reason: str, n: int = 1):
        counter = self._counters.get(reason)
        if counter is None:
            metrics = self._metrics_module()
            if metrics is None:
                return
            counter = self._counters[reason] = metrics.CONNECTIONS_CLOSED.labels(reason)
        with contextlib.suppress(Exception):
            counter.inc(n)

    def _report(self, reason: str, client):
        self._count(reason)
        address = client[0] if isinstance(client, tuple) and client else str(client or "unix")
        now = time.monotonic()
        entry = self._reports.get(address)
        if entry is not None and now - entry[0] < LOG_INTERVAL:
            entry[1][reason] = entry[1].get(reason, 0) + 1
            return
        counts = entry[1] if entry is not None else {}
        counts[reason] = counts.get(reason, 0) + 1
        if len(self._reports) >= LOG_CLIENTS and address not in self._reports:
            self._forget_quiet_clients(now)
        self._log_client(address, counts, None if entry is None else now - entry[0])
        self._reports[address] = [now, {}]

    def _forget_quiet_clients(self, now: float):
        for client, entry in list(self._reports.items()):
            if now - entry[0] >= LOG_INTERVAL and not entry[1]:
                del self._reports[client]
        while len(self._reports) >= LOG_CLIENTS:  # all recent: drop the oldest
            del self._reports[next(iter(self._reports))]

    def _log_client(self, client: str, counts: dict, seconds: float | None):
        total = sum(counts.values())
        since = "" if seconds is None else f" in the last {seconds:.0f} s"
        self._conn_log.warning(
            "closed %d connection(s) from %s%s at the server's limits: %s (logged at most "
            "once a minute per client and worker)",
            total,
            client,
            since,
            ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())),
            extra={"client": client, "closed": dict(counts)},
        )
