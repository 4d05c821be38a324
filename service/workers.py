"""Gunicorn's gthread worker with least-connections accepting.

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

Configured in ``service/gunicorn_conf.py`` (``worker_class``). The master imports this
module, so it imports Gunicorn only (no TensorFlow).
"""

from __future__ import annotations

import time

from gunicorn.workers.gthread import ThreadWorker

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

    def accept(self, listener):
        if not self._resumed:
            delay = accept_delay(self.nr_conns, self.cfg.threads, self.cfg.workers)
            if delay > 0:
                self._accept_after = time.monotonic() + delay
                super().set_accept_enabled(False)
                return
        self._resumed = False
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
