"""Introspection API: layer tables, activations of any layer, reference statistics,
attributions, PNG pictures, reference samples and the explorer page (``/ui``).

Every endpoint exists unversioned (latest ready version) and under
``/models/<name>/versions/<v>/...``. Layers are addressed by name or by their index in
the layer table. Activations of every requested layer and the prediction come from ONE
call of the runtime's multi-output function (``service.api.compute``)."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
from flask import Blueprint, Response, jsonify, request, send_from_directory

from service import inputs
from service.api import compute, format_prediction, format_predictions, resolve, settings
from service.errors import InvalidInput, LayerNotFound, LayerscopeError, PayloadTooLarge
from service.introspection import attribution, pictures, stats

bp = Blueprint("introspect", __name__)

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
INCLUDE = ("values", "stats")
DEFAULT_TOP_K = 5
MAX_TOP_K = 100
DEFAULT_STEPS = 64
MAX_IG_VALUES = 4_000_000  # instances x (steps + 1) x input size held by one IG call
MAX_SAMPLES = 32

_reference_stats = stats.ReferenceStatsCache()
_cache_lock = threading.Lock()
_layer_rows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_references: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_explainers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_activation_names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _routes(rule: str, **kw):
    """Register a view under /models/<name>{rule} and /models/<name>/versions/<v>{rule}."""

    def wrap(view):
        bp.add_url_rule(f"/models/<name>{rule}", view_func=view, defaults={"version": None}, **kw)
        bp.add_url_rule(
            f"/models/<name>/versions/<int:version>{rule}",
            endpoint=f"{view.__name__}_versioned",
            view_func=view,
            **kw,
        )
        return view

    return wrap


# -- layers ------------------------------------------------------------------------------
def _activation_name(layer) -> str | None:
    return getattr(getattr(layer, "activation", None), "__name__", None)


def activation_names(runtime) -> dict[str, str | None]:
    """Activation function name per layer of a loaded version, looked up once per runtime
    (the model's layer list does not change while it serves; hot reload makes a new one)."""
    with _cache_lock:
        hit = _activation_names.get(runtime)
        if hit is None:
            hit = {layer.name: _activation_name(layer) for layer in runtime.model.layers}
            _activation_names[runtime] = hit
        return hit


def layer_rows(runtime) -> list[dict]:
    """The layer table of a loaded version (from the model itself, roles from metadata)."""
    with _cache_lock:
        rows = _layer_rows.get(runtime)
    if rows is not None:
        return rows
    roles = {e.get("name"): e.get("role") for e in runtime.metadata.get("layers") or []}
    hidden = set(runtime.hidden_layer_names)
    rows = []
    for index, layer in enumerate(runtime.model.layers):
        config = layer.get_config()
        kind = type(layer).__name__
        role = roles.get(layer.name) or (
            "input"
            if kind == "InputLayer"
            else "hidden"
            if layer.name in hidden
            else "output"
            if layer.name == runtime.output_layer_name
            else "preprocessing"
        )
        rows.append(
            {
                "index": index,
                "name": layer.name,
                "type": kind,
                "role": role,
                "hidden": layer.name in hidden,
                "output_shape": runtime.layer_shapes.get(layer.name),
                "activation": _activation_name(layer),
                "units": config.get("units"),
                "filters": config.get("filters"),
                "params": int(layer.count_params()) if layer.built else 0,
            }
        )
    with _cache_lock:
        _layer_rows[runtime] = rows
    return rows


def _available(runtime) -> str:
    return ", ".join(f"{i}: {n}" for i, n in enumerate(runtime.layer_names))


def resolve_layer(runtime, spec, where: str = "layer") -> str:
    """A layer name from a name or an index (ints, or digit strings from a URL)."""
    names = runtime.layer_names
    if isinstance(spec, str) and spec.isdigit() and spec not in names:
        spec = int(spec)
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise InvalidInput(f"{where} is {spec!r}; expected a layer name or an integer index")
    if isinstance(spec, int):
        if 0 <= spec < len(names):
            return names[spec]
        raise LayerNotFound(
            f"model {runtime.name!r} version {runtime.version} has no layer index {spec} "
            f"(indices 0..{len(names) - 1}); available layers: {_available(runtime)}"
        )
    if spec not in names:
        raise LayerNotFound(
            f"model {runtime.name!r} version {runtime.version} has no layer {spec!r}; "
            f"available layers: {_available(runtime)}"
        )
    return spec


@_routes("/layers", methods=["GET"])
def layers(name: str, version: int | None):
    runtime = resolve(name, version)
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "layers": layer_rows(runtime),
            "hidden_layers": runtime.hidden_layer_names,
        }
    )


# -- request decoding ----------------------------------------------------------------------
def _decode(runtime) -> tuple[np.ndarray, dict]:
    """(batch, options): JSON {"instances": [...], ...options}, or for image models a
    multipart upload (field ``image``) with options in the query string."""
    cfg = settings()
    if inputs.is_multipart(request):
        inputs.check_size(request, cfg.max_body_bytes)
        x = inputs.read_multipart_images(request, runtime, cfg.max_batch_size, cfg.max_image_pixels)
        return x, request.args.to_dict()
    body = inputs.read_json(
        request, cfg.max_body_bytes, allow_multipart=runtime.input_kind == "image"
    )
    instances = inputs.get_instances(body, "instances", cfg.max_batch_size)
    return inputs.decode_for_model(instances, runtime, cfg.max_image_pixels), body


def _int_option(options: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = options.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"{key!r} is {value!r}; expected an integer in [{lo}, {hi}]")
    return value


def _layer_list(runtime, options: dict) -> list[str]:
    spec = options.get("layers")
    if spec is None:
        return list(runtime.hidden_layer_names)
    if isinstance(spec, (str, int)) and not isinstance(spec, bool):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise InvalidInput(
            f"'layers' is {spec!r}; expected a non-empty array of layer names "
            f"or indices (omit it for every hidden layer)"
        )
    return list(
        dict.fromkeys(resolve_layer(runtime, s, f"layers[{i}]") for i, s in enumerate(spec))
    )


def _include(options: dict) -> set[str]:
    inc = options.get("include", list(INCLUDE))
    if isinstance(inc, str):
        inc = [inc]
    if not isinstance(inc, list) or not inc or any(i not in INCLUDE for i in inc):
        raise InvalidInput(f"'include' is {inc!r}; expected a non-empty subset of {list(INCLUDE)}")
    return set(inc)


# -- activations -------------------------------------------------------------------------
@_routes("/activations", methods=["POST"])
def activations(name: str, version: int | None):
    runtime = resolve(name, version)
    x, options = _decode(runtime)
    wanted = _layer_list(runtime, options)
    include = _include(options)
    top_k = _int_option(options, "top_k", DEFAULT_TOP_K, 1, MAX_TOP_K)
    try:
        result = compute(runtime, x, wanted, endpoint="activations", budget="values" in include)
    except PayloadTooLarge as exc:
        raise PayloadTooLarge(
            f'{exc.message}; send "include": ["stats"] to get the statistics without the values'
        ) from None
    acts = activation_names(runtime)
    arrays = [np.ascontiguousarray(result.layers[n]) for n in wanted]  # rows serialise as-is
    per_layer = (
        stats.layers_instance_stats(arrays, [acts[n] for n in wanted], top_k)
        if "stats" in include
        else None
    )
    values = arrays if "values" in include else None
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "layers": wanted,
            "inactive_rules": {n: stats.inactive_rule(acts[n]) for n in wanted},
            "instances": [
                {
                    "prediction": prediction,
                    "layers": _instance_layers(wanted, arrays, i, values, per_layer),
                }
                for i, prediction in enumerate(format_predictions(runtime, result.probabilities))
            ],
        }
    )


def _instance_layers(wanted, arrays, i: int, values, per_layer) -> dict:
    """One instance's ``{layer: {"shape", "values"?, "stats"?}}``; values are numpy rows,
    which orjson writes straight from the buffer."""
    out = {}
    for j, name in enumerate(wanted):
        item = {"shape": list(arrays[j].shape[1:])}
        if values is not None:
            item["values"] = values[j][i]
        if per_layer is not None:
            item["stats"] = per_layer[j][i]
        out[name] = item
    return out


# -- reference statistics ---------------------------------------------------------------
def _reference(runtime) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) of the version's reference.npz, loaded once."""
    with _cache_lock:
        hit = _references.get(runtime)
    if hit is not None:
        return hit
    path = Path(getattr(runtime, "path", "")) / "reference.npz"
    try:
        with np.load(path) as data:
            x = np.asarray(data["x"], dtype=np.float32)
            y = np.asarray(data["y"]) if "y" in data.files else None
    except (OSError, KeyError, ValueError) as exc:
        raise LayerscopeError(
            f"model {runtime.name!r} version {runtime.version} has no usable reference sample "
            f"(reference.npz with key 'x'): {exc}",
            404,
        ) from None
    with _cache_lock:
        _references[runtime] = (x, y)
    return x, y


def reference_stats(runtime) -> dict[str, dict]:
    """Per-unit statistics of every computed layer over the reference sample, cached."""

    def compute_all():
        x, _ = _reference(runtime)
        names = [n for n in runtime.layer_names if n in set(runtime.output_layer_names)]
        return stats.compute_reference_stats(
            runtime.activations, x, names, activation_names(runtime)
        )

    return _reference_stats.get(runtime, compute_all)


@_routes("/layers/<layer>/stats", methods=["GET"])
def layer_stats(name: str, version: int | None, layer: str):
    runtime = resolve(name, version)
    layer_name = resolve_layer(runtime, layer)
    table = reference_stats(runtime)
    if layer_name not in table:
        raise InvalidInput(
            f"layer {layer_name!r} is the model input; reference statistics "
            f"exist for the computed layers: {', '.join(table)}"
        )
    row = next(r for r in layer_rows(runtime) if r["name"] == layer_name)
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "layer": layer_name,
            "type": row["type"],
            "activation": row["activation"],
            "output_shape": row["output_shape"],
            **table[layer_name],
        }
    )


# -- samples -----------------------------------------------------------------------------
@_routes("/samples", methods=["GET"])
def samples(name: str, version: int | None):
    runtime = resolve(name, version)
    n = _int_option(request.args.to_dict(), "n", 8, 1, MAX_SAMPLES)
    offset = _int_option(request.args.to_dict(), "offset", 0, 0, 1 << 30)
    x, y = _reference(runtime)
    features = runtime.metadata["input"].get("features")
    out = []
    for i in range(offset, min(offset + n, len(x))):
        item = {"index": i, "instance": x[i]}
        if y is not None and np.ndim(y[i]) == 0 and 0 <= int(y[i]) < len(runtime.class_names):
            item["label"] = runtime.class_names[int(y[i])]
        if features:
            item["features"] = dict(zip(features, (float(v) for v in x[i]), strict=True))
        out.append(item)
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "total": len(x),
            "input": runtime.metadata["input"],
            "samples": out,
        }
    )


# -- attributions ------------------------------------------------------------------------
def explainers(runtime) -> attribution.Explainers:
    """The version's compiled attribution functions (built on first use, freed with it)."""
    with _cache_lock:
        hit = _explainers.get(runtime)
        if hit is None:
            hit = _explainers[runtime] = attribution.Explainers(runtime.model)
        return hit


def _classes(runtime, spec, n: int) -> np.ndarray:
    """Explained class per instance: -1 (predicted) for null/"predicted", else an index or
    a class name; one value for all instances or a list of n."""
    names = runtime.class_names
    items = spec if isinstance(spec, list) else [spec] * n
    if len(items) != n:
        raise InvalidInput(
            f"'class' has {len(items)} entries for {n} instances; expected one "
            "class for all or one per instance"
        )
    out = []
    for item in items:
        if item is None or item == "predicted":
            out.append(-1)
        elif isinstance(item, str) and item in names:
            out.append(names.index(item))
        elif isinstance(item, str) and item.isdigit() and int(item) < len(names):
            out.append(int(item))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
            out.append(item)
        else:
            raise InvalidInput(
                f"'class' is {item!r}; expected null (the predicted class), a "
                f"class index 0..{len(names) - 1} or one of {names}"
            )
    return np.asarray(out, dtype=np.int32)


def _baseline(runtime, spec) -> tuple[np.ndarray, str]:
    """IG baseline: "reference_mean" (default for tabular models when a reference sample
    exists), "zeros" (default for images), or one instance in the request format."""
    if spec is None:
        spec = "reference_mean" if runtime.input_kind == "tabular" else "zeros"
        if spec == "reference_mean":
            try:
                _reference(runtime)
            except LayerscopeError:
                spec = "zeros"
    if spec == "zeros":
        return np.zeros(runtime.input_shape, np.float32), "zeros"
    if spec == "reference_mean":
        return _reference(runtime)[0].mean(axis=0).astype(np.float32), "reference_mean"
    if isinstance(spec, (list, dict)):
        x = inputs.decode_for_model([spec], runtime, settings().max_image_pixels, "baseline")
        return x[0], "custom"
    raise InvalidInput(
        f'\'baseline\' is {spec!r}; expected "reference_mean", "zeros" or one '
        "instance in the same format as 'instances'"
    )


def explain_batch(runtime, x: np.ndarray, options: dict) -> tuple[str, dict, list[dict]]:
    """(method, summary, per-instance results) for a decoded batch."""
    default = "gradcam" if runtime.input_kind == "image" else "integrated_gradients"
    method = options.get("method", default)
    if method not in ("gradcam", "integrated_gradients"):
        raise InvalidInput(
            f"'method' is {method!r}; expected 'gradcam' (image models) or 'integrated_gradients'"
        )
    cls = _classes(runtime, options.get("class"), len(x))
    threshold = 0.5 if runtime.threshold is None else float(runtime.threshold)
    names = runtime.class_names
    results = []
    if method == "gradcam":
        layer = options.get("layer")
        layer = None if layer is None else resolve_layer(runtime, layer)
        try:
            fn = explainers(runtime).gradcam(layer)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        out = fn(x, cls, threshold)
        probs = runtime.probabilities(out["probs"])
        for i in range(len(x)):
            c = int(out["class"][i])
            results.append(
                {
                    "class_index": c,
                    "label": names[c],
                    "probability": float(probs[i, c]),
                    "prediction": format_prediction(runtime, probs[i]),
                    "heatmap": out["cam"][i],
                    "heatmap_input": out["cam_input"][i],
                }
            )
        return method, {"layer": fn.layer}, results
    steps = _int_option(options, "steps", DEFAULT_STEPS, 1, attribution.MAX_STEPS)
    size = int(np.prod(runtime.input_shape))
    if len(x) * (steps + 1) * size > MAX_IG_VALUES:
        raise InvalidInput(
            f"{len(x)} instances x {steps + 1} path points x {size} inputs "
            f"exceeds {MAX_IG_VALUES} values; send fewer instances or steps"
        )
    baseline, kind = _baseline(runtime, options.get("baseline"))
    ig = explainers(runtime).integrated_gradients()
    out = ig(x, baseline, cls, steps=steps, threshold=threshold)
    probs = runtime.probabilities(out["probs"])
    features = runtime.metadata["input"].get("features")
    for i in range(len(x)):
        c = int(out["class"][i])
        attr = out["attributions"][i]
        rel = float(out["relative_error"][i])
        results.append(
            {
                "class_index": c,
                "label": names[c],
                "probability": float(out["f_x"][i]),
                "prediction": format_prediction(runtime, probs[i]),
                "attributions": dict(zip(features, attr.tolist(), strict=True))
                if features and attr.ndim == 1
                else attr,
                "completeness": {
                    "sum_of_attributions": float(out["sum"][i]),
                    "f_x": float(out["f_x"][i]),
                    "f_baseline": float(out["f_baseline"][i]),
                    "f_x_minus_f_baseline": float(out["delta"][i]),
                    "absolute_error": float(out["absolute_error"][i]),
                    "relative_error": rel,
                    "within_5_percent": bool(rel <= 0.05),
                },
            }
        )
    summary = {
        "baseline": kind,
        "baseline_values": baseline,
        "steps": steps,
        "explained_function": "probability of the explained class",
    }
    return method, summary, results


@_routes("/explain", methods=["POST"])
def explain(name: str, version: int | None):
    runtime = resolve(name, version)
    x, options = _decode(runtime)
    method, summary, results = explain_batch(runtime, x, options)
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "method": method,
            **summary,
            "instances": results,
        }
    )


# -- pictures ----------------------------------------------------------------------------
def _png(data: bytes) -> Response:
    return Response(data, mimetype="image/png", headers={"Cache-Control": "no-store"})


def _one(x: np.ndarray, what: str) -> None:
    if len(x) != 1:
        raise InvalidInput(f"{what} draws one instance; received {len(x)}")


@_routes("/layers/<layer>/picture.png", methods=["POST"])
def layer_picture(name: str, version: int | None, layer: str):
    """Feature-map grid (4-D layers, one instance) or heat strip (one row per instance)."""
    runtime = resolve(name, version)
    layer_name = resolve_layer(runtime, layer)
    x, _ = _decode(runtime)
    values = compute(runtime, x, [layer_name], endpoint="picture").layers[layer_name]
    if values.ndim == 4:
        _one(x, f"the feature-map grid of {layer_name!r}")
        return _png(pictures.feature_map_grid(values[0]))
    return _png(pictures.heat_strip(values.reshape(len(x), -1)))


@_routes("/explain.png", methods=["POST"])
def explain_picture(name: str, version: int | None):
    """Grad-CAM over the input image, or integrated-gradient bars per feature."""
    runtime = resolve(name, version)
    x, options = _decode(runtime)
    _one(x, "explain.png")
    method, _, results = explain_batch(runtime, x, options)
    if method == "gradcam":
        return _png(pictures.gradcam_overlay(x[0], results[0]["heatmap"]))
    attr = results[0]["attributions"]
    if isinstance(attr, dict):
        return _png(pictures.attribution_bars(list(attr), np.array(list(attr.values()))))
    heat = np.abs(np.asarray(attr)).reshape(x.shape[1:])
    heat = heat.sum(axis=-1) if heat.ndim == 3 else heat
    return _png(pictures.gradcam_overlay(x[0], heat / (heat.max() or 1.0)))


# -- explorer page -----------------------------------------------------------------------
@bp.get("/ui")
@bp.get("/ui/")
def ui():
    return send_from_directory(STATIC_DIR, "explorer.html", max_age=0)


@bp.get("/ui/static/<path:filename>")
def ui_static(filename: str):
    return send_from_directory(STATIC_DIR, filename, max_age=0)
