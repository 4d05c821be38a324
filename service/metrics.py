"""Every Prometheus metric of Layerscope, correct under Gunicorn's multiple workers.

prometheus-client's multiprocess mode: the entrypoint sets ``PROMETHEUS_MULTIPROC_DIR``
and empties it before Gunicorn starts, ``gunicorn_conf.child_exit`` calls
:func:`mark_process_dead`, and ``GET /metrics`` aggregates every worker's files with a
fresh registry per scrape. Without the variable (tests, ``flask run``) the process-local
default registry is served. Every gauge names its ``multiprocess_mode``.

Labels stay bounded: ``endpoint`` is the Flask URL rule, ``model`` is a model the
repository knows (else ``"unknown"``), ``version`` a loaded version (else ``""``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable

import numpy as np
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as prometheus_values

log = logging.getLogger("layerscope.metrics")

# prometheus-client's multiprocess values call os.getpid() on every write, to notice a
# fork (a system call: 14 per prediction, ~5 % of a worker's GIL time at c16 in py-spy).
# The pid only changes at a fork, so it is kept here, refreshed in each forked child,
# and handed to the library through its own ``process_identifier`` parameter. This must
# run before the first metric below is defined.
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def current_pid() -> int:
    return _PID[0]


if getattr(prometheus_values.ValueClass, "_multiprocess", False):
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue(
        process_identifier=current_pid
    )

UNKNOWN_MODEL = "unknown"
UNMATCHED_ENDPOINT = "unmatched"
METRICS_PATH = "/metrics"

# 0.1 ms .. 5 s, about three buckets per decade.
# fmt: off
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
# fmt: on
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SCORE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# -- requests ----------------------------------------------------------------------------
REQUESTS = Counter(
    "layerscope_requests",
    "HTTP requests answered, by model, version served, URL rule, method and status code.",
    ["model", "version", "endpoint", "method", "code"],
)
REQUEST_DURATION = Histogram(
    "layerscope_request_duration_seconds",
    "Time from request start to response, by model, URL rule and method.",
    ["model", "endpoint", "method"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "layerscope_requests_in_flight",
    "Requests being handled right now, summed over live workers.",
    multiprocess_mode="livesum",
)

# -- model compute ---------------------------------------------------------------------
COMPUTE_DURATION = Histogram(
    "layerscope_model_compute_duration_seconds",
    "Time spent in the compiled model functions, by model, version and operation.",
    ["model", "version", "operation"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "layerscope_batch_size",
    "Rows per model call, by model and operation.",
    ["model", "operation"],
    buckets=BATCH_BUCKETS,
)
PREDICTIONS = Counter(
    "layerscope_predictions",
    "Predicted instances by class (binary models: the decision at the stored threshold).",
    ["model", "version", "class"],
)
FRAUD_DECISIONS = Counter(
    "layerscope_fraud_decisions",
    "Binary-model decisions at the stored threshold (decision = positive or negative).",
    ["model", "decision"],
)
FRAUD_SCORE = Histogram(
    "layerscope_fraud_score",
    "Positive-class probability of binary models (the fraud score).",
    ["model"],
    buckets=SCORE_BUCKETS,
)

# -- model lifecycle -------------------------------------------------------------------
MODEL_READY = Gauge(
    "layerscope_model_ready",
    "1 when the version is loaded and warm in every live worker, else 0.",
    ["model", "version"],
    multiprocess_mode="livemin",
)
MODEL_INFO = Gauge(
    "layerscope_model_info",
    "1 for each loaded model version (info metric).",
    ["model", "version", "task"],
    multiprocess_mode="livemax",
)
MODEL_LOAD_TIMESTAMP = Gauge(
    "layerscope_model_load_timestamp_seconds",
    "Unix time at which the version finished loading (latest over live workers).",
    ["model", "version"],
    multiprocess_mode="livemax",
)
MODEL_LOAD_DURATION = Histogram(
    "layerscope_model_load_duration_seconds",
    "Checksum, load, compile and warm-up time of one version in one worker.",
    ["model"],
    buckets=LOAD_BUCKETS,
)
MODEL_LOAD_FAILURES = Counter(
    "layerscope_model_load_failures",
    "Versions that failed their checksum or load (counted per worker attempt).",
    ["model", "reason"],
)
MODEL_RELOADS = Counter(
    "layerscope_model_reloads",
    "Hot reloads: a new version loaded or a deleted version unloaded while serving.",
    ["model"],
)

# -- activation drift (sampled) ----------------------------------------------------------
LAYER_ACTIVATION_MEAN = Summary(
    "layerscope_layer_activation_mean",
    "Per sampled instance, the mean activation of a hidden layer (rate(_sum)/rate(_count)).",
    ["model", "version", "layer"],
)
LAYER_INACTIVE_FRACTION = Summary(
    "layerscope_layer_inactive_fraction",
    "Per sampled instance, the fraction of a hidden layer's units at or below 0.",
    ["model", "version", "layer"],
)
LAYER_REFERENCE_MEAN = Gauge(
    "layerscope_layer_reference_activation_mean",
    "Mean activation of a hidden layer on the version's reference sample.",
    ["model", "version", "layer"],
    multiprocess_mode="livemax",
)
LAYER_REFERENCE_INACTIVE = Gauge(
    "layerscope_layer_reference_inactive_fraction",
    "Fraction of inactive units of a hidden layer on the version's reference sample.",
    ["model", "version", "layer"],
    multiprocess_mode="livemax",
)

# -- connections (service/workers.py, docs/reliability.md) -----------------------------------
CONNECTIONS_CLOSED = Counter(
    "layerscope_connections_closed",
    "Connections the server closed at one of its limits, by reason: header_timeout, "
    "body_timeout, max_connections, buffer_full (keepalive_timeout: an idle keep-alive "
    "connection, the normal end of one).",
    ["reason"],
)
CONNECTIONS_OPEN = Gauge(
    "layerscope_connections_open",
    "Open client connections, summed over live workers (refreshed every 0.5 s).",
    multiprocess_mode="livesum",
)
CONNECTIONS_READING = Gauge(
    "layerscope_connections_reading",
    "Connections whose request is still being read (no thread holds them), summed over "
    "live workers (refreshed every 0.5 s).",
    multiprocess_mode="livesum",
)

# -- gRPC (service/grpc, docs/grpc.md) --------------------------------------------------------
# Each call also counts in layerscope_requests / _request_duration_seconds (endpoint: the
# gRPC method path, method "GRPC", code: the HTTP status of the same error over REST).
GRPC_REQUESTS = Counter(
    "layerscope_grpc_requests",
    "gRPC calls answered, by model, version served, gRPC method path and status code name.",
    ["model", "version", "method", "code"],
)

# -- object-storage repository (service/storage.py, docs/scaling.md) -----------------------
REPOSITORY_REACHABLE = Gauge(
    "layerscope_repository_reachable",
    "1 while the last sync with the s3:// model repository succeeded, else 0 (the cached "
    "versions keep serving); minimum over live workers.",
    multiprocess_mode="livemin",
)
REPOSITORY_LAST_SYNC = Gauge(
    "layerscope_repository_last_sync_timestamp_seconds",
    "Unix time of the last successful sync with the s3:// model repository.",
    multiprocess_mode="livemax",
)
REPOSITORY_SYNC_ERRORS = Counter(
    "layerscope_repository_sync_errors",
    "Syncs with the s3:// model repository that failed, by exception type.",
    ["reason"],
)


def repository_synced(reachable: bool, last_sync: float | None, error: str | None) -> None:
    REPOSITORY_REACHABLE.set(1 if reachable else 0)
    if last_sync:
        REPOSITORY_LAST_SYNC.set(last_sync)
    if error:
        REPOSITORY_SYNC_ERRORS.labels(error.split(":", 1)[0][:64]).inc()


# -- per-worker bookkeeping ---------------------------------------------------------------
_known_models: set[str] = set()
_loaded_versions: dict[str, dict[str, str]] = {}  # model -> version -> task
_lock = threading.Lock()
_state = threading.local()
_calls = itertools.count(1)
_config = {"sample_every": 20, "sample_rows": 16, "sample_interval": 1.0}


def configure(
    sample_every: int | None = None,
    sample_rows: int | None = None,
    sample_interval: float | None = None,
) -> None:
    """Activation sampling: 1 model call in ``sample_every`` (0 = off), first rows only,
    at most once per ``sample_interval`` seconds per model version in this worker (0: no
    limit). The limit keeps the cost flat under load: at 1,000 calls/s a worker would
    otherwise run 50 extra forward passes a second for gauges scraped every 15 s."""
    if sample_every is not None:
        _config["sample_every"] = max(0, int(sample_every))
    if sample_rows is not None:
        _config["sample_rows"] = max(1, int(sample_rows))
    if sample_interval is not None:
        _config["sample_interval"] = max(0.0, float(sample_interval))


def _sample_due(m: _RuntimeMetrics) -> bool:
    """Whether this runtime may be sampled now (and, if so, mark it sampled)."""
    interval = _config["sample_interval"]
    if not interval:
        return True
    now = time.monotonic()
    if now - m.last_sample < interval:
        return False
    m.last_sample = now  # a race lets two threads sample at once: harmless
    return True


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def mark_process_dead(pid: int) -> None:
    """Gunicorn ``child_exit``: drop the dead worker's live-gauge files."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


def exposition() -> tuple[bytes, str]:
    """The text exposition: all workers aggregated (fresh registry) or this process."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


# -- label helpers ---------------------------------------------------------------------------
def model_label(name: object) -> str:
    """The name itself for a model the repository knows, else ``"unknown"``."""
    return name if isinstance(name, str) and name in _known_models else UNKNOWN_MODEL


def version_label(model: str, version: object) -> str:
    version = str(version) if version is not None else ""
    return version if version in _loaded_versions.get(model, ()) else ""


def register_models(names: Iterable[str]) -> None:
    """Models present in the repository (discovered, whether or not loaded yet)."""
    with _lock:
        _known_models.update(str(n) for n in names)


# -- request instrumentation -----------------------------------------------------------------
bp = Blueprint("metrics", __name__)


@bp.get(METRICS_PATH)
def metrics_endpoint() -> Response:
    body, content_type = exposition()
    return Response(body, status=200, content_type=content_type)


def _request_model(args: dict) -> str | None:
    """The model a request's URL names (``view_args``), when no runtime resolved it."""
    for key in ("name", "model", "model_name"):
        if key in args:
            return args[key]
    return None


# The hooks resolve ``g`` and ``request`` once each: every attribute read through the
# proxies costs a context lookup, and these run on every request.
def _before() -> None:
    if request.path == METRICS_PATH:
        return
    ctx = g._get_current_object()
    ctx._ls_metrics_start = time.perf_counter()
    ctx._ls_metrics_inflight = True
    IN_FLIGHT.inc()


def _after(response: Response) -> Response:
    ctx = g._get_current_object()
    start = ctx.pop("_ls_metrics_start", None)
    if start is None:
        return response
    try:
        req = request._get_current_object()
        served = ctx.get("layerscope_model")  # (name, version) set when a runtime resolved
        if served is not None:
            model, version = model_label(str(served[0])), str(served[1])
        else:
            args = req.view_args or {}
            model = model_label(_request_model(args))
            version = args.get("version")
        rule = req.url_rule
        endpoint = rule.rule if rule is not None else UNMATCHED_ENDPOINT
        method = req.method
        if method not in _METHODS:
            method = "other"
        requests, duration = _request_children(
            model, version_label(model, version), endpoint, method, response.status_code
        )
        requests.inc()
        duration.observe(time.perf_counter() - start)
    except Exception:  # metrics never break a response
        log.exception("request metrics failed")
    return response


_request_children_memo: dict[tuple, tuple] = {}


def _request_children(model: str, version: str, endpoint: str, method: str, code: int):
    """(requests counter child, duration histogram child) of one label set, memoised like
    ``child`` (one lookup per request instead of two, no status-code string)."""
    key = (model, version, endpoint, method, code)
    found = _request_children_memo.get(key)
    if found is None:
        found = _request_children_memo[key] = (
            child(REQUESTS, model, version, endpoint, method, str(code)),
            child(REQUEST_DURATION, model, endpoint, method),
        )
    return found


def _teardown(_exc: BaseException | None) -> None:
    if g.pop("_ls_metrics_inflight", False):
        IN_FLIGHT.dec()


_METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}


def init_app(app: Flask) -> None:
    """Register ``/metrics`` and the request hooks; subscribe to the app's repository."""
    state = app.extensions.get("layerscope")
    settings = getattr(state, "settings", None)
    if settings is not None:
        configure(
            sample_every=settings.activation_sample_every,
            sample_interval=settings.activation_sample_interval,
        )
    repository = getattr(state, "repository", None)
    if repository is not None:
        register_models(repository.scan().keys())
        watch_repository(repository)
    app.register_blueprint(bp)
    app.before_request(_before)
    app.after_request(_after)
    app.teardown_request(_teardown)


# -- model compute hooks (called by service.api.compute) ----------------------------------
class _RuntimeMetrics:
    """The label children one runtime's requests update, resolved once per runtime
    (a request then does no label lookups, string building or metadata reads)."""

    def __init__(self, runtime):
        model, version = str(runtime.name), str(runtime.version)
        self.model, self.version = model, version
        task = runtime.task
        self.names = [str(c) for c in runtime.class_names or []]
        self.binary = task == "binary_classification"
        self.classes = task in ("binary_classification", "multiclass_classification")
        threshold = runtime.threshold
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.duration = {
            op: child(COMPUTE_DURATION, model, version, op) for op in ("predict", "activations")
        }
        self.batch = {op: child(BATCH_SIZE, model, op) for op in ("predict", "activations")}
        self.last_sample = float("-inf")  # time.monotonic() of its last activation sample
        if self.binary:
            names = self.names if len(self.names) >= 2 else ["negative", "positive"]
            neg_name, pos_name = names[:2]
            self.positive = (
                child(FRAUD_DECISIONS, model, "positive"),
                child(PREDICTIONS, model, version, pos_name),
            )
            self.negative = (
                child(FRAUD_DECISIONS, model, "negative"),
                child(PREDICTIONS, model, version, neg_name),
            )
            self.score = child(FRAUD_SCORE, model)

    def predicted(self, index: int):
        label = self.names[index] if index < len(self.names) else str(index)
        return child(PREDICTIONS, self.model, self.version, label)


_by_runtime: dict[int, tuple[weakref.ref, _RuntimeMetrics]] = {}


def _runtime_metrics(runtime) -> _RuntimeMetrics:
    """Keyed by id with a weak reference to check it (a WeakKeyDictionary builds a new
    weak reference on every lookup); an entry of a dead runtime is replaced when its id
    is reused."""
    entry = _by_runtime.get(id(runtime))
    if entry is not None and entry[0]() is runtime:
        return entry[1]
    found = _RuntimeMetrics(runtime)
    with _lock:
        for key, (ref, _) in list(_by_runtime.items()):
            if ref() is None:
                del _by_runtime[key]
        _by_runtime[id(runtime)] = (weakref.ref(runtime), found)
    return found


def observe_compute(runtime, operation: str, rows: int, seconds: float) -> None:
    """Duration and batch size of one compiled-function call (``predict`` or
    ``activations``; batched calls are observed by service/batching.py)."""
    if getattr(_state, "sampling", False):
        return
    try:
        m = _runtime_metrics(runtime)
        m.duration[operation].observe(seconds)
        m.batch[operation].observe(rows)
    except Exception:
        log.exception("compute metrics failed")


def observe_predict(
    runtime,
    x: np.ndarray,
    raw: np.ndarray,
    seconds: float,
    layers: dict[str, np.ndarray] | None = None,
) -> None:
    """After one forward pass: compute time, batch size, classes, fraud score, and (1 call
    in N) the activation summary of every hidden layer for drift alerts. Hidden layers
    the request computed anyway are reused; otherwise the sample costs one extra pass
    over at most ``sample_rows`` rows."""
    observe_compute(runtime, "activations" if layers else "predict", len(raw), seconds)
    try:
        _observe_outputs(runtime, np.asarray(raw, dtype=np.float32))
        every = _config["sample_every"]
        if every and next(_calls) % every == 0 and _sample_due(_runtime_metrics(runtime)):
            sample_activations(runtime, _head(x, _config["sample_rows"]), layers)
    except Exception:
        log.exception("prediction metrics failed")


def _head(x, rows: int):
    """The first ``rows`` of a batch (an array or ``{input name: array}``)."""
    if isinstance(x, dict):
        return {k: v[:rows] for k, v in x.items()}
    return x[:rows]


def _rows(x) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _observe_outputs(runtime, raw: np.ndarray) -> None:
    """Predictions by class (classification outputs only: a regression has no classes)."""
    m = _runtime_metrics(runtime)
    if not m.classes:
        return
    if m.binary:
        p = raw[:, -1] if raw.ndim == 2 else raw.reshape(-1)
        if len(p) == 1:  # the common single-row request, without numpy reductions
            value = float(p[0])
            decision, predicted = m.positive if value >= m.threshold else m.negative
            decision.inc()
            predicted.inc()
            m.score.observe(value)
            return
        n_pos = int((p >= m.threshold).sum())
        for (decision, predicted), count in ((m.positive, n_pos), (m.negative, len(p) - n_pos)):
            if count:
                decision.inc(count)
                predicted.inc(count)
        observe_many(m.score, p)
    elif len(raw) == 1:
        m.predicted(int(np.argmax(raw[0]))).inc()
    else:
        counts = np.bincount(np.argmax(raw, axis=-1), minlength=raw.shape[-1])
        for index in np.flatnonzero(counts):
            m.predicted(int(index)).inc(int(counts[index]))


_children: dict[tuple, object] = {}


def child(metric, *labels: str):
    """``metric.labels(*labels)``, memoised: request-path label sets are bounded (see the
    module docstring) and never removed, and ``labels()`` costs several microseconds."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def observe_many(histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every v, in one pass: a 256-row request otherwise
    spends more time in 256 observe calls than in the model (bench/)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) <= 4:  # a single-row request: numpy's per-call overhead would dominate
        for value in values.tolist():
            histogram.observe(value)
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(buckets) != len(bounds):
        for value in values.tolist():  # another prometheus-client layout: the public way
            histogram.observe(value)
        return
    # bucket i counts bounds[i-1] < v <= bounds[i], as Histogram.observe does
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for index in np.flatnonzero(counts[: len(bounds)]):
        buckets[index].inc(int(counts[index]))
    total.inc(float(values.sum()))


def layer_summary(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per instance: mean activation and fraction of units at or below 0.

    The steps of ``ndarray.mean(axis=1)`` themselves (a float32 sum, or a float64 one for
    booleans, divided in place by the count as ``intp``), bit for bit, without its Python
    wrapper: on the usual one-row sample the wrapper cost more than the arithmetic."""
    flat = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    count = np.intp(flat.shape[1])
    means = np.add.reduce(flat, axis=1)
    np.true_divide(means, count, out=means, casting="unsafe")
    inactive = np.add.reduce(flat <= 0, axis=1, dtype=np.float64)
    np.true_divide(inactive, count, out=inactive, casting="unsafe")
    return means, inactive


def sample_activations(
    runtime, x: np.ndarray, computed: dict[str, np.ndarray] | None = None
) -> None:
    """Feed the drift summaries from the hidden layers (one multi-output pass if the
    request did not compute them all already)."""
    hidden = list(getattr(runtime, "hidden_layer_names", []) or [])
    if not hidden or _rows(x) == 0 or getattr(runtime, "inspector", True) is None:
        return
    rows = _rows(x)
    if computed and all(name in computed for name in hidden):
        acts = {name: computed[name][:rows] for name in hidden}
    else:
        acts = _unmetered_activations(runtime, x, hidden)
    model, version = str(runtime.name), str(runtime.version)
    for layer, values in acts.items():
        means, inactive = layer_summary(values)
        mean_metric = child(LAYER_ACTIVATION_MEAN, model, version, layer)
        inactive_metric = child(LAYER_INACTIVE_FRACTION, model, version, layer)
        for m, f in zip(means.tolist(), inactive.tolist(), strict=True):
            mean_metric.observe(m)
            inactive_metric.observe(f)


def _unmetered_activations(runtime, x, layers):
    """Activations computed for the drift metrics themselves: flagged so this call is not
    counted as a prediction."""
    _state.sampling = True
    try:
        return runtime.activations(x, layers)
    finally:
        _state.sampling = False


# -- model lifecycle hooks (called by service.repository) -----------------------------------
def model_loaded(runtime) -> None:
    """A version is loaded and warm in this worker; reference activation summary too."""
    model, version = str(runtime.name), str(runtime.version)
    task = str(runtime.metadata.get("task") or runtime.task)
    with _lock:
        _known_models.add(model)
        _loaded_versions.setdefault(model, {})[version] = task
    MODEL_READY.labels(model, version).set(1)
    MODEL_INFO.labels(model, version, task).set(1)
    MODEL_LOAD_TIMESTAMP.labels(model, version).set(time.time())
    seconds = getattr(runtime, "load_seconds", None)
    if seconds is not None:
        MODEL_LOAD_DURATION.labels(model).observe(seconds)
    # Off the loading thread: the next version's load and readiness must not wait for it.
    threading.Thread(
        target=_reference_summary_logged,
        args=(runtime,),
        name="layerscope-reference",
        daemon=True,
    ).start()


def _reference_summary_logged(runtime) -> None:
    try:
        _reference_summary(runtime)
    except Exception as exc:  # a missing reference sample only costs the drift baseline
        log.warning(
            "no reference activation summary for %s v%s: %s", runtime.name, runtime.version, exc
        )


def _reference_summary(runtime) -> None:
    layers = list(getattr(runtime, "hidden_layer_names", []) or [])
    if not layers or runtime.inspector is None or runtime.reference_path() is None:
        return
    xs, _ = runtime.read_reference()
    x = _head({s["name"]: a for s, a in zip(runtime.inputs, xs, strict=True)}, 256)
    acts = _unmetered_activations(runtime, x if len(x) > 1 else next(iter(x.values())), layers)
    model, version = str(runtime.name), str(runtime.version)
    for layer, values in acts.items():
        means, inactive = layer_summary(values)
        LAYER_REFERENCE_MEAN.labels(model, version, layer).set(float(means.mean()))
        LAYER_REFERENCE_INACTIVE.labels(model, version, layer).set(float(inactive.mean()))


def model_load_failed(name: str, version: object, reason: str) -> None:
    """``reason`` is a small fixed vocabulary, e.g. ``checksum``, ``metadata``, ``load``."""
    model = str(name)
    with _lock:
        _known_models.add(model)
    MODEL_LOAD_FAILURES.labels(model, reason).inc()
    MODEL_READY.labels(model, str(version)).set(0)


def model_unloaded(name: str, version: object) -> None:
    model, version = str(name), str(version)
    with _lock:
        task = _loaded_versions.get(model, {}).pop(version, None)
    MODEL_READY.labels(model, version).set(0)
    if task is not None:
        MODEL_INFO.labels(model, version, task).set(0)


def model_reloaded(name: str) -> None:
    MODEL_RELOADS.labels(str(name)).inc()


def failure_reason(message: str | None) -> str:
    """Map a load error message onto a bounded label value."""
    text = (message or "").lower()
    if "checksum" in text or "sha256" in text:
        return "checksum"
    if "metadata" in text:
        return "metadata"
    return "load"


def watch_repository(repository) -> None:
    """Subscribe the lifecycle metrics to a ``ModelRepository``'s events. A version
    loaded after the initial load counts as a hot reload."""

    def listener(event) -> None:
        register_models(repository.models().keys())
        if event.kind == "loaded":
            model_loaded(repository.state(event.name, event.version).runtime)
            if repository.initial_load_done.is_set():
                model_reloaded(event.name)
        elif event.kind == "failed":
            model_load_failed(event.name, event.version, failure_reason(event.reason))
        elif event.kind == "unloaded":
            model_unloaded(event.name, event.version)

    repository.listeners.append(listener)
