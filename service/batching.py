"""Dynamic batching of plain predictions, per model version, inside each worker.

Request threads queue their decoded rows on the version's ``Batcher``. The caller that
finds no batch running leads: it takes the oldest waiting request (its own), every request
already queued (and, with ``batch_max_delay_ms`` > 0, those arriving within that delay of
the first) up to ``batch_max_size`` rows, runs ONE compiled model call on the
concatenation, hands each caller its own slice and passes the lead to the oldest caller
still waiting. With the default delay of 0 nothing ever waits for company: a lone request
runs at once in its own thread, and under load the requests that queued while the
previous batch ran form the next one. A request of ``batch_max_size`` rows or more runs
directly, unbatched. When ``batch_queue_size`` requests are already waiting the next
one gets a 503 with ``Retry-After`` (``errors.Overloaded``).

``predict(runtime, x)`` is what ``service.api.compute`` calls; settings come from the app
(``service.serving.options_for``: global ``LAYERSCOPE_BATCH*`` plus ``LAYERSCOPE_SERVING``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from flask import current_app

from service.errors import Overloaded

log = logging.getLogger("layerscope.batching")

RETRY_AFTER_SECONDS = 1


class _Request:
    __slots__ = ("x", "done", "result", "error", "enqueued", "abandoned", "lead")

    def __init__(self, x: np.ndarray):
        self.x = x
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.enqueued = time.perf_counter()
        self.abandoned = False
        self.lead = False  # set with ``done`` when this caller must run the next batch


class Batcher:
    """Gathers concurrent calls of ``fn`` (rows in, rows out) into batched calls.

    No extra thread: the caller that finds no batch running becomes the leader, takes what
    is queued (its own request first), runs the batch in its own thread and then hands the
    lead to the oldest waiting caller. A lone request therefore runs at once, with no
    thread hand-off; under load one model call runs at a time per model and worker while
    the next batch queues up behind it."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        *,
        name: str = "model",
        max_size: int = 64,
        max_delay: float = 0.0,
        queue_size: int = 256,
        timeout: float = 60.0,
        on_batch: Callable[[int, int, float], None] | None = None,
    ):
        self.fn = fn
        self.name = name
        self.max_size = max(1, int(max_size))
        self.max_delay = max(0.0, float(max_delay))
        self.queue_size = max(1, int(queue_size))
        self.timeout = timeout
        self.on_batch = on_batch  # (requests, rows, seconds) after each model call
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._leading = False
        self.batches = 0  # model calls made, for tests and metrics

    def submit(self, x: np.ndarray) -> np.ndarray:
        """The output rows for ``x``, computed in a shared batch; 503 when the queue is full."""
        if len(x) >= self.max_size:
            return self.fn(x)  # already a full batch: queueing it would only delay others
        request = _Request(x)
        with self._cond:
            if len(self._queue) >= self.queue_size:
                raise Overloaded(
                    f"model {self.name!r} has {len(self._queue)} requests waiting, the limit "
                    f"(LAYERSCOPE_BATCH_QUEUE_SIZE); retry in {RETRY_AFTER_SECONDS} s",
                    retry_after=RETRY_AFTER_SECONDS,
                )
            self._queue.append(request)
            lead = not self._leading
            if lead:
                self._leading = True
            else:
                self._cond.notify()  # a leader waiting out max_delay counts rows again
        if not lead:
            if not request.done.wait(self.timeout):
                with self._cond:
                    if not request.lead:
                        request.abandoned = True
                        if request in self._queue:
                            self._queue.remove(request)
                        raise Overloaded(
                            f"model {self.name!r} did not answer within {self.timeout:g} s; "
                            "retry later",
                            retry_after=RETRY_AFTER_SECONDS,
                        )
            lead = request.lead
        if lead:
            self._lead()
        if request.error is not None:
            raise request.error
        return request.result

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _take(self) -> list[_Request]:
        """Under the lock: the oldest request plus what fits, waiting at most max_delay."""
        with self._cond:
            first = self._queue.popleft()
            batch, rows = [first], len(first.x)
            deadline = first.enqueued + self.max_delay
            while rows < self.max_size:
                if self._queue:
                    if rows + len(self._queue[0].x) > self.max_size:
                        break
                    item = self._queue.popleft()
                    batch.append(item)
                    rows += len(item.x)
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _lead(self) -> None:
        """Run one batch (holding the leader's own request), then pass the lead on."""
        batch = self._take()
        start = time.perf_counter()
        try:
            if len(batch) == 1:
                batch[0].result = self.fn(batch[0].x)
            else:
                out = self.fn(np.concatenate([r.x for r in batch]))
                offset = 0
                for r in batch:
                    r.result = out[offset : offset + len(r.x)]
                    offset += len(r.x)
        except BaseException as exc:  # each caller re-raises it in its own thread
            for r in batch:
                r.error = exc
        seconds = time.perf_counter() - start
        with self._cond:
            self.batches += 1
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.done.set()
            else:
                self._leading = False
        for r in batch[1:]:
            r.done.set()
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), sum(len(r.x) for r in batch), seconds)
            except Exception:
                log.exception("batch callback failed")


AUTO_MIN_SINGLE_SECONDS = 100e-6  # a single-row call must cost this much ...
AUTO_MIN_GAIN = 2.0  # ... and a 16-row call this many times less per row


def batching_gain(runtime, rows: int = 16, repeats: int = 15) -> tuple[float, float]:
    """(seconds of a single-row call, per-row speed-up of a ``rows``-row call), medians of
    ``repeats`` calls on zeros shaped like the model input."""
    one, many = runtime.warm_batch(1)[0], runtime.warm_batch(rows)[0]

    def median(x):
        runtime.raw_predict(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            runtime.raw_predict(x)
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    single = median(one)
    return single, single * rows / max(median(many), 1e-9)


def batchable(runtime) -> bool:
    """Rows of separate requests can be stacked: one input of fixed shape, one output."""
    return runtime.single and all(d is not None for d in runtime.inputs[0]["shape"])


class Batchers:
    """One ``Batcher`` per loaded runtime of an app, prepared when the version loads (the
    ``auto`` decision is measured then) or on first use; those of versions no longer
    served are dropped when the next one is created."""

    def __init__(self, settings):
        self.settings = settings
        self._by_runtime: dict[int, tuple[object, Batcher | None]] = {}
        self._lock = threading.Lock()
        self.decisions: dict[tuple[str, int], dict] = {}  # (name, version) -> why on / off

    def get(self, runtime) -> Batcher | None:
        """The runtime's batcher, or None when batching is off for it."""
        entry = self._by_runtime.get(id(runtime))
        if entry is not None and entry[0] is runtime:
            return entry[1]
        return self.prepare(runtime)

    def prepare(self, runtime) -> Batcher | None:
        from service.serving import options_for

        options = options_for(self.settings, runtime.name)
        with self._lock:
            entry = self._by_runtime.get(id(runtime))
            if entry is not None and entry[0] is runtime:
                return entry[1]
        enabled, why = options.batching, {"setting": options.batching}
        if not batchable(runtime):
            enabled = False
            why["reason"] = "batching takes models with one input of fixed shape and one output"
        elif enabled == "auto":
            single, gain = batching_gain(runtime)
            enabled = single >= AUTO_MIN_SINGLE_SECONDS and gain >= AUTO_MIN_GAIN
            why.update(single_row_ms=round(single * 1e3, 4), gain_at_16_rows=round(gain, 2))
        why["batching"] = bool(enabled)
        batcher = None
        if enabled:
            batcher = Batcher(
                runtime.raw_predict,
                name=runtime.name,
                max_size=options.batch_max_size,
                max_delay=options.batch_max_delay_ms / 1000.0,
                queue_size=options.batch_queue_size,
                timeout=float(self.settings.timeout),
                on_batch=_metrics_hook(runtime),
            )
        with self._lock:
            for key, (other, _) in list(self._by_runtime.items()):
                if not getattr(other, "ready", False):  # a version no longer served
                    del self._by_runtime[key]
            entry = self._by_runtime.get(id(runtime))
            if entry is not None and entry[0] is runtime:
                return entry[1]
            self._by_runtime[id(runtime)] = (runtime, batcher)
            self.decisions[(runtime.name, runtime.version)] = why
        log.info(
            "model %s version %s batching %s",
            runtime.name,
            runtime.version,
            "on" if batcher is not None else "off",
            extra={"model": runtime.name, "version": runtime.version, "decision": why},
        )
        return batcher


def _metrics_hook(runtime) -> Callable[[int, int, float], None]:
    """Compute time and real batch size of every batched call (children labelled once)."""
    from service import metrics

    model, version = str(runtime.name), str(runtime.version)
    duration = metrics.COMPUTE_DURATION.labels(model, version, "batched_predict")
    size = metrics.BATCH_SIZE.labels(model, "batched_predict")

    def observe(requests: int, rows: int, seconds: float) -> None:
        duration.observe(seconds)
        size.observe(rows)

    return observe


_APP_LOCK = threading.Lock()


def batchers_for(app) -> Batchers:
    found = app.extensions.get("layerscope_batchers")
    if found is None:
        with _APP_LOCK:
            found = app.extensions.get("layerscope_batchers")
            if found is None:
                found = app.extensions["layerscope_batchers"] = Batchers(
                    app.extensions["layerscope"].settings
                )
    return found


def init_app(app) -> None:
    """Prepare each version's batcher as soon as it is loaded (off the request path)."""
    batchers = batchers_for(app)
    repository = app.extensions["layerscope"].repository

    def on_event(event) -> None:
        if event.kind == "loaded":
            batchers.prepare(repository.get(event.name, event.version))

    repository.listeners.append(on_event)


def predict(runtime, x: np.ndarray) -> np.ndarray:
    """``runtime.raw_predict(x)``, through the model's batcher when batching is on."""
    batcher = batchers_for(current_app).get(runtime)
    if batcher is None:
        return runtime.raw_predict(x)
    return batcher.submit(x)
