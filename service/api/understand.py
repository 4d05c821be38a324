"""What each hidden layer learned, per served version: linear probes, unit atlases, PCA
projections and linear CKA between versions (the methods: service/introspection/
understanding.py). Every endpoint exists unversioned (latest ready version) and under
``/models/<name>/versions/<v>/...``, in JSON and as a PNG (``.png``).

Probes are computed once per version in the background after it loads (never delaying
readiness; ``/probes`` answers 202 "computing" until then) and cached on disk under
``LAYERSCOPE_CACHE_DIR`` keyed by the version's model checksum, so every worker (and the
next start) reads the one result: a file lock lets one worker compute while the others
wait for its file. Unit atlases, projections and comparisons are computed on request,
bounded by ``LAYERSCOPE_UNDERSTANDING_MAX_ROWS`` rows and ``..._MAX_UNITS`` features per
layer, and kept in memory per loaded version."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request

from service.api import model_routes, repository, resolve, settings
from service.errors import InvalidInput, LayerNotFound, LayerscopeError
from service.introspection import charts
from service.introspection import understanding as u

log = logging.getLogger("layerscope.understanding")

bp = Blueprint("understand", __name__)

PROBE_FILE = "probes.json"
MAX_TOP = 64


def _routes(rule: str, **kw):
    return model_routes(bp, rule, **kw)


class Unavailable(LayerscopeError):
    """What cannot be computed for this version (no reference sample, no labels): 404."""

    status = 404


# -- the reference sample and its activations ---------------------------------------------------
class Sample:
    """A version's reference inputs (at most ``max_rows``), labels and probe task."""

    def __init__(self, runtime, max_rows: int):
        runtime.require_graph()
        try:
            xs, y = runtime.read_reference()
        except LookupError as exc:
            raise Unavailable(
                f"model {runtime.name!r} version {runtime.version} has no reference sample: "
                f"{exc}. Publish it with one (python -m training import --reference) or name "
                "one in serving.yaml"
            ) from None
        self.rows = min(len(xs[0]), max_rows)
        self.total = len(xs[0])
        self.xs = [x[: self.rows] for x in xs]
        self.task = "regression" if runtime.task == "regression" else "classification"
        self.y = u.probe_targets(None if y is None else y[: self.rows], runtime.task)
        self.runtime = runtime

    def on(self, runtime) -> Sample:
        """The same reference rows, fed to another version taking the same inputs."""
        twin = object.__new__(Sample)
        twin.__dict__.update(self.__dict__)
        twin.runtime = runtime
        return twin

    def pack(self, xs: list[np.ndarray]):
        if len(xs) == 1:
            return xs[0]
        return {s["name"]: x for s, x in zip(self.runtime.inputs, xs, strict=True)}

    def width(self, layer: str) -> int:
        shape = self.runtime.layer_shapes[layer][1:]
        return int(np.prod([d if d is not None else 1 for d in shape])) if shape else 1

    def features(self, layers, max_units: int) -> u.Features:
        widths = {name: self._width(name) for name in layers}
        return u.layer_features(
            self.runtime.activations, self.xs, self.pack, layers, widths, max_units
        )

    def _width(self, layer: str) -> int:
        """Flattened width per sample; free dimensions (a sequence's length) from one row."""
        shape = self.runtime.layer_shapes[layer][1:]
        if any(d is None for d in shape):
            one = self.runtime.activations(self.pack([x[:1] for x in self.xs]), [layer])[layer]
            return int(np.prod(one.shape[1:]))
        return self.width(layer)


def _limits():
    cfg = settings()
    return cfg.understanding_max_rows, cfg.understanding_max_units


# -- probes ---------------------------------------------------------------------------------------
def compute_probes(runtime, max_rows: int, max_units: int, folds: int) -> dict:
    """Probe score per hidden layer and for the raw input(s), over the reference sample."""
    start = time.perf_counter()
    sample = Sample(runtime, max_rows)
    if sample.y is None:
        raise Unavailable(
            f"model {runtime.name!r} version {runtime.version}: its reference sample has no "
            "usable labels (key 'y'), which probes predict"
        )
    inputs = [s["name"] for s in runtime.inputs]
    layers = [*inputs, *runtime.hidden_layer_names]
    features = sample.features(layers, max_units)
    raw = np.concatenate([features.values[n] for n in inputs], axis=1)
    baseline = u.probe(raw, sample.y, sample.task, folds)
    rows = []
    for depth, name in enumerate(runtime.hidden_layer_names):
        score = u.probe(features.values[name], sample.y, sample.task, folds)
        rows.append(
            {
                "layer": name,
                "depth": depth,
                "features": int(features.values[name].shape[1]),
                "projected_from": features.sketched.get(name),
                **score,
            }
        )
    return {
        "model": runtime.name,
        "version": runtime.version,
        "status": "ready",
        "task": sample.task,
        "rows": sample.rows,
        "folds": folds,
        "probe": "StandardScaler + LogisticRegression(C=0.1) (accuracy)"
        if sample.task == "classification"
        else "StandardScaler + Ridge(alpha=1) (R2)",
        "baseline": {"layer": "input", "features": int(raw.shape[1]), **baseline},
        "layers": rows,
        "projection": (
            f"layers wider than {max_units} features are probed on a sparse random sign "
            "projection to that many (projected_from: their width)"
        ),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _cache_key(runtime) -> str:
    digest = runtime.expected_sha256()
    if not digest:
        st = (runtime.path / "model.keras").stat()
        digest = hashlib.sha256(f"{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()
    return digest[:16]


class Probes:
    """Background probe computation with a per-version file cache shared by workers."""

    def __init__(self, app):
        self.settings = app.extensions["layerscope"].settings
        self.root = Path(
            self.settings.cache_dir or Path(tempfile.gettempdir()) / "layerscope-cache"
        )
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="layerscope-probes")
        self._state: dict[tuple, dict] = {}
        self._lock = threading.Lock()

    def folder(self, runtime) -> Path:
        return self.root / runtime.name / f"{runtime.version}-{_cache_key(runtime)}"

    def key(self, runtime) -> tuple:
        return (runtime.name, runtime.version, _cache_key(runtime))

    def schedule(self, runtime) -> None:
        key = self.key(runtime)
        with self._lock:
            if key in self._state:
                return
            self._state[key] = {"status": "computing", "since": time.time()}
        self._pool.submit(self._run, runtime, key)

    def get(self, runtime) -> dict:
        key = self.key(runtime)
        with self._lock:
            found = self._state.get(key)
        if found is None:
            cached = self._read(self.folder(runtime) / PROBE_FILE)
            if cached is not None:
                with self._lock:
                    self._state[key] = cached
                return cached
            self.schedule(runtime)
            return {"status": "computing"}
        return found

    def _read(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _run(self, runtime, key: tuple) -> None:
        folder = self.folder(runtime)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "probes.lock", "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another worker computing: wait for it
                result = self._read(folder / PROBE_FILE)
                if result is None:
                    result = self._compute(runtime)
                    tmp = folder / f".{PROBE_FILE}.{os.getpid()}"
                    tmp.write_text(json.dumps(result))
                    os.replace(tmp, folder / PROBE_FILE)
        except OSError as exc:  # no writable cache: compute in memory only
            log.warning("probe cache %s unusable (%s); computing in memory", folder, exc)
            result = self._compute(runtime)
        with self._lock:
            self._state[key] = result

    def _compute(self, runtime) -> dict:
        cfg = self.settings
        try:
            result = compute_probes(
                runtime, cfg.understanding_max_rows, cfg.understanding_max_units, cfg.probe_folds
            )
            log.info(
                "model %s version %s: probes of %d layers in %.1fs",
                runtime.name, runtime.version, len(result["layers"]), result["seconds"],
            )  # fmt: skip
            return result
        except LayerscopeError as exc:
            return {"status": "unavailable", "status_code": exc.status, "error": exc.message}
        except Exception as exc:  # a model the probes cannot handle: say so, keep serving
            log.exception("probes of %s v%s failed", runtime.name, runtime.version)
            return {"status": "failed", "status_code": 500, "error": f"{type(exc).__name__}: {exc}"}


def probes_for(app) -> Probes:
    return app.extensions["layerscope_probes"]


def _probes(name: str, version: int | None) -> dict:
    runtime = resolve(name, version)
    result = probes_for(current_app).get(runtime)
    if result.get("status") == "unavailable":
        raise Unavailable(result["error"])
    if result.get("status") == "failed":
        raise LayerscopeError(f"probes could not be computed: {result['error']}", 500)
    return result


@_routes("/probes", methods=["GET"])
def probes(name: str, version: int | None):
    result = _probes(name, version)
    if result.get("status") != "ready":
        response = jsonify(
            {"model": name, "status": "computing", "message": "probes are being computed; retry"}
        )
        response.status_code = 202
        response.headers["Retry-After"] = "2"
        return response
    return jsonify(result)


@_routes("/probes.png", methods=["GET"])
def probes_png(name: str, version: int | None):
    result = _probes(name, version)
    if result.get("status") != "ready":
        return probes(name, version)
    rows = result["layers"]
    png = charts.probe_chart(
        [r["layer"] for r in rows],
        [r["mean"] for r in rows],
        [r["std"] for r in rows],
        result["baseline"]["mean"],
        result["baseline"]["metric"],
    )
    return _png(png)


# -- unit atlas --------------------------------------------------------------------------------
_memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_memo_lock = threading.Lock()


def _memoised(runtime, key: tuple, compute):
    with _memo_lock:
        table = _memo.setdefault(runtime, {})
        if key in table:
            return table[key]
    value = compute()
    with _memo_lock:
        _memo.setdefault(runtime, {})[key] = value
    return value


def _layer(runtime, layer: str) -> str:
    if layer not in runtime.layer_shapes or layer in {s["name"] for s in runtime.inputs}:
        runtime.check_layers([layer])
        raise InvalidInput(f"{layer!r} is a model input; ask for a computed layer")
    return layer


def _int_arg(key: str, default: int, lo: int, hi: int) -> int:
    text = request.args.get(key)
    if text is None:
        return default
    if not text.lstrip("-").isdigit() or not lo <= int(text) <= hi:
        raise InvalidInput(f"{key!r} is {text!r}; expected an integer in [{lo}, {hi}]")
    return int(text)


def _atlas(name: str, version: int | None, layer: str, unit: int) -> tuple:
    runtime = resolve(name, version)
    runtime.require_graph()
    layer = _layer(runtime, layer)
    n = _int_arg("n", 9, 1, MAX_TOP)
    reduce = request.args.get("reduce", "mean")
    if reduce not in ("mean", "max"):
        raise InvalidInput(f"'reduce' is {reduce!r}; expected 'mean' or 'max'")
    units = runtime.layer_shapes[layer][-1] if len(runtime.layer_shapes[layer]) > 1 else 1
    if units is not None and not 0 <= unit < units:
        raise LayerNotFound(
            f"layer {layer!r} has {units} units (0..{units - 1}); received unit={unit}"
        )
    max_rows, _ = _limits()
    sample = Sample(runtime, max_rows)

    def compute():
        return u.unit_activity(
            runtime.activations, sample.xs, sample.pack, layer, sample._width(layer), reduce
        )

    activity = _memoised(runtime, ("activity", layer, reduce, sample.rows), compute)
    indices, values = u.top_samples(activity, unit, n)
    return runtime, sample, layer, reduce, indices, values


def _sample_row(runtime, sample: Sample, i: int) -> dict:
    item: dict = {}
    for spec, x in zip(runtime.inputs, sample.xs, strict=True):
        row = x[i]
        if spec.get("features") and row.ndim == 1:
            item[spec["name"]] = dict(zip(spec["features"], row.tolist(), strict=True))
        elif spec.get("kind") != "image":
            item[spec["name"]] = row
    return item


@_routes("/layers/<path:layer>/units/<int:unit>/top", methods=["GET"])
def unit_top(name: str, version: int | None, layer: str, unit: int):
    runtime, sample, layer, reduce, indices, values = _atlas(name, version, layer, unit)
    images = [s["name"] for s in runtime.inputs if s.get("kind") == "image"]
    y = sample.y
    names = runtime.class_names
    top = []
    for i, v in zip(indices, values, strict=True):
        entry = {"index": i, "activation": v, "inputs": _sample_row(runtime, sample, i)}
        if y is not None and sample.task == "classification":
            label = int(y[i])
            entry["label"] = names[label] if names and 0 <= label < len(names) else label
        top.append(entry)
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "layer": layer,
            "unit": unit,
            "reduce": reduce,
            "unit_activation": (
                f"the {reduce} of the unit over every axis but the last"
                if len(runtime.layer_shapes[layer]) > 2
                else "the unit's value"
            ),
            "rows": sample.rows,
            "top": top,
            "thumbnails": (
                f"/models/{runtime.name}/versions/{runtime.version}/layers/{layer}/units/"
                f"{unit}/top.png?n={len(indices)}&reduce={reduce}"
                if images
                else None
            ),
        }
    )


@_routes("/layers/<path:layer>/units/<int:unit>/top.png", methods=["GET"])
def unit_top_png(name: str, version: int | None, layer: str, unit: int):
    runtime, sample, layer, _, indices, values = _atlas(name, version, layer, unit)
    position = next((k for k, s in enumerate(runtime.inputs) if s.get("kind") == "image"), None)
    if position is None:
        raise InvalidInput(
            f"model {runtime.name!r} has no image input to draw; GET the same path without "
            ".png for the samples' feature rows"
        )
    images = [sample.xs[position][i] for i in indices]
    return _png(
        charts.thumbnails(images, [f"#{i} {v:.2f}" for i, v in zip(indices, values, strict=True)])
    )


# -- projections -------------------------------------------------------------------------------
def _projection(name: str, version: int | None, layer: str):
    runtime = resolve(name, version)
    runtime.require_graph()
    layer = _layer(runtime, layer)
    max_rows, max_units = _limits()
    sample = Sample(runtime, max_rows)

    def compute():
        features = sample.features([layer], max_units)
        return u.pca_2d(features.values[layer]), features.sketched.get(layer)

    (pca, sketched) = _memoised(runtime, ("pca", layer, sample.rows, max_units), compute)
    return runtime, sample, layer, pca, sketched


@_routes("/layers/<path:layer>/projection", methods=["GET"])
def projection(name: str, version: int | None, layer: str):
    runtime, sample, layer, pca, sketched = _projection(name, version, layer)
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "layer": layer,
            "method": "pca",
            "rows": sample.rows,
            "explained_variance_ratio": pca["explained_variance_ratio"],
            "projected_from": sketched,
            "points": pca["points"].astype(np.float32),
            "labels": None if sample.y is None else sample.y.tolist(),
            "class_names": runtime.class_names if sample.task == "classification" else None,
        }
    )


@_routes("/layers/<path:layer>/projection.png", methods=["GET"])
def projection_png(name: str, version: int | None, layer: str):
    runtime, sample, _, pca, _ = _projection(name, version, layer)
    names = runtime.class_names if sample.task == "classification" else None
    return _png(charts.scatter(pca["points"], sample.y, names))


# -- compare versions ----------------------------------------------------------------------------
def _compare(name: str) -> dict:
    repo = repository()
    a, b = (_version_arg(key) for key in ("a", "b"))
    ra, rb = repo.get(name, a), repo.get(name, b)
    ra.require_graph()
    rb.require_graph()
    shapes = [[(s["name"], s["shape"], s["dtype"]) for s in r.inputs] for r in (ra, rb)]
    if shapes[0] != shapes[1]:
        raise InvalidInput(
            f"versions {a} and {b} of {name!r} take different inputs ({shapes[0]} vs "
            f"{shapes[1]}); CKA compares two versions on the same samples"
        )
    max_rows, max_units = _limits()
    rows = min(max_rows, settings().compare_max_rows)
    sample = Sample(ra, rows)

    def grams(runtime):
        def compute():
            feats = sample.on(runtime).features(runtime.hidden_layer_names, max_units)
            return {n: u.centred_gram(v) for n, v in feats.values.items()}, feats.sketched

        return _memoised(runtime, ("grams", a, sample.rows, max_units), compute)

    start = time.perf_counter()
    (ga, sa), (gb, sb) = grams(ra), grams(rb)
    la, lb = ra.hidden_layer_names, rb.hidden_layer_names
    matrix = np.array([[u.cka_from_grams(ga[x], gb[y]) for y in lb] for x in la])
    return {
        "model": name,
        "a": a,
        "b": b,
        "method": "linear CKA",
        "samples": f"version {a}'s reference sample",
        "rows": sample.rows,
        "layers_a": la,
        "layers_b": lb,
        "cka": matrix,
        "projected_from": {"a": sa, "b": sb},
        "seconds": round(time.perf_counter() - start, 3),
    }


def _version_arg(key: str) -> int:
    text = request.args.get(key)
    if text is None or not text.isdigit() or int(text) < 1:
        raise InvalidInput(
            f"query parameter {key!r} is {text!r}; expected a version number, e.g. ?a=1&b=2"
        )
    return int(text)


@bp.get("/models/<name>/compare")
def compare(name: str):
    return jsonify(_compare(name))


@bp.get("/models/<name>/compare.png")
def compare_png(name: str):
    result = _compare(name)
    return _png(charts.heat_map(result["cka"], result["layers_a"], result["layers_b"]))


def _png(data: bytes) -> Response:
    return Response(data, mimetype="image/png", headers={"Cache-Control": "no-store"})


def init_app(app) -> None:
    """Register the blueprint; schedule each version's probes when it loads."""
    app.register_blueprint(bp)
    probes_state = app.extensions["layerscope_probes"] = Probes(app)
    repo = app.extensions["layerscope"].repository

    def on_event(event) -> None:
        if event.kind != "loaded" or not probes_state.settings.probes_on_load:
            return
        with contextlib.suppress(LayerscopeError):  # unloaded again meanwhile
            probes_state.schedule(repo.get(event.name, event.version))

    repo.listeners.append(on_event)
