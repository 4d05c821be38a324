"""Introspection API: layer tables, activations of any layer, reference statistics,
attributions, PNG pictures, reference samples and the explorer page (``/ui``).

Every endpoint exists unversioned (latest ready version) and under
``/models/<name>/versions/<v>/...``. Layers are addressed by name (``conv2d_1``, nested
``backbone/conv2d_1``, a shared layer's second call ``dense@1``, an RNN's hidden states
``lstm:sequence``) or by their index in the layer table (``runtime.layers``). Activations
of every requested layer and the prediction come from ONE call of the runtime's
multi-output function (``service.api.compute``). A model without a graph (subclassed)
answers 422 on every endpoint here, saying why; it still serves predictions."""

from __future__ import annotations

import math
import threading
import weakref
from pathlib import Path

import numpy as np
from flask import Blueprint, Response, jsonify, request, send_from_directory

from service import api, inputs
from service.api import compute, model_routes, resolve, settings
from service.errors import InvalidInput, LayerNotFound, LayerscopeError, PayloadTooLarge
from service.introspection import attribution, pictures, stats

bp = Blueprint("introspect", __name__)

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
INCLUDE = ("values", "stats")
DEFAULT_TOP_K = 5
MAX_TOP_K = 100
DEFAULT_STEPS = 64
MAX_IG_VALUES = 4_000_000  # instances x (steps + 1) x path values held by one IG call
MAX_SAMPLES = 32
REFERENCE_BATCH_VALUES = 4_000_000  # activation values of one reference-statistics pass
MAX_BARS = 64  # attribution bars drawn by explain.png (largest |attribution| first)

_reference_stats = stats.ReferenceStatsCache()
_cache_lock = threading.Lock()
_references: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_explainers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _routes(rule: str, **kw):
    return model_routes(bp, rule, **kw)


def _inspectable(name: str, version: int | None):
    """The runtime, or 422 (IntrospectionUnavailable) for a model without a graph."""
    runtime = resolve(name, version)
    runtime.require_graph()
    return runtime


# -- layers ------------------------------------------------------------------------------
def activation_names(runtime) -> dict[str, str | None]:
    """Activation function name per layer of the layer table."""
    return {row["name"]: row.get("activation") for row in runtime.layers}


def layer_rows(runtime) -> list[dict]:
    """The layer table of a loaded version (``runtime.layers``, built at load)."""
    return runtime.layers


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
    runtime = _inspectable(name, version)
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "layers": layer_rows(runtime),
            "hidden_layers": runtime.hidden_layer_names,
        }
    )


# -- request decoding ----------------------------------------------------------------------
def _decode(runtime) -> tuple[object, dict]:
    """(batch, options): JSON {"instances": [...], ...options}, or for single-image models
    a multipart upload (field ``image``) with options in the query string. The batch is an
    array, or ``{input name: array}`` for a multi-input model."""
    cfg = settings()
    if inputs.is_multipart(request):
        inputs.check_size(request, cfg.max_body_bytes)
        x = inputs.read_multipart_images(request, runtime, cfg.max_batch_size, cfg.max_image_pixels)
        return x, request.args.to_dict()
    body = inputs.read_json(
        request, cfg.max_body_bytes, allow_multipart=inputs.image_input(runtime) is not None
    )
    instances = inputs.get_instances(body, "instances", cfg.max_batch_size)
    return inputs.decode_instances(instances, runtime, cfg.max_image_pixels), body


def _rows(x) -> int:
    return stats.batch_rows(x)


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


def _predictions(runtime, result) -> list[dict]:
    """The native API's per-instance predictions (every output of the model)."""
    format_result = getattr(api, "format_result", None)
    if format_result is not None:
        return format_result(runtime, result)
    return api.format_predictions(runtime, result.probabilities)


def _output_rows(runtime, spec: dict, raw: np.ndarray) -> list[dict]:
    """One output's per-instance prediction entries."""
    format_output = getattr(api, "format_output", None)
    if format_output is not None:
        return format_output(runtime, spec, raw)
    return api.format_predictions(runtime, runtime.probabilities(raw, spec))


# -- activations -------------------------------------------------------------------------
@_routes("/activations", methods=["POST"])
def activations(name: str, version: int | None):
    runtime = _inspectable(name, version)
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
        stats.layers_instance_stats(arrays, [acts.get(n) for n in wanted], top_k)
        if "stats" in include
        else None
    )
    values = arrays if "values" in include else None
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "layers": wanted,
            "inactive_rules": {n: stats.inactive_rule(acts.get(n)) for n in wanted},
            "instances": [
                {
                    "prediction": prediction,
                    "layers": _instance_layers(wanted, arrays, i, values, per_layer),
                }
                for i, prediction in enumerate(_predictions(runtime, result))
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


# -- reference sample ----------------------------------------------------------------------
def _reference(runtime) -> tuple[object, np.ndarray | None]:
    """(x, y) of the version's reference sample, loaded once: x an array (one input) or
    ``{input name: array}``; 404 saying what is missing when there is none."""
    with _cache_lock:
        hit = _references.get(runtime)
    if hit is not None:
        return hit
    try:
        xs, y = runtime.read_reference()
    except LookupError as exc:
        raise LayerscopeError(
            f"model {runtime.name!r} version {runtime.version} has no usable reference sample: "
            f"{exc}. Put a reference.npz (an array per input name, or x; optional y) in the "
            "version folder, or name one in the model's serving.yaml (reference: file.npz)",
            404,
        ) from None
    x = xs[0] if len(xs) == 1 else {s["name"]: a for s, a in zip(runtime.inputs, xs, strict=True)}
    with _cache_lock:
        _references[runtime] = (x, y)
    return x, y


def _has_reference(runtime) -> bool:
    try:
        _reference(runtime)
    except LayerscopeError:
        return False
    return True


def _values_per_row(runtime, names) -> int:
    """Activation values of one instance over ``names`` (free dimensions counted as 64)."""
    total = 0
    for name in names:
        shape = runtime.layer_shapes.get(name) or [None]
        total += math.prod(64 if d is None else d for d in shape[1:])
    return max(1, total)


def reference_stats(runtime) -> dict[str, dict]:
    """Per-unit statistics of every computed layer over the reference sample, cached."""

    def compute_all():
        x, _ = _reference(runtime)
        computed = set(runtime.output_layer_names)
        names = [n for n in runtime.layer_names if n in computed]
        batch = max(1, min(64, REFERENCE_BATCH_VALUES // _values_per_row(runtime, names)))
        return stats.compute_reference_stats(
            runtime.activations, x, names, activation_names(runtime), batch_size=batch
        )

    return _reference_stats.get(runtime, compute_all)


@_routes("/layers/<path:layer>/stats", methods=["GET"])
def layer_stats(name: str, version: int | None, layer: str):
    runtime = _inspectable(name, version)
    layer_name = resolve_layer(runtime, layer)
    table = reference_stats(runtime)
    if layer_name not in table:
        raise InvalidInput(
            f"layer {layer_name!r} is a model input; reference statistics "
            f"exist for the computed layers: {', '.join(table)}"
        )
    row = next(r for r in runtime.layers if r["name"] == layer_name)
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "layer": layer_name,
            "type": row["type"],
            "activation": row["activation"],
            "output_shape": row["output_shape"],
            "parent": row.get("parent"),
            **table[layer_name],
        }
    )


# -- samples -----------------------------------------------------------------------------
def _label(runtime, y_row) -> dict:
    """``label`` (a classification class) or ``target`` (anything else) of a reference row."""
    spec = runtime.outputs[0] if runtime.outputs else {}
    classes = spec.get("class_names") or []
    value = np.asarray(y_row)
    if classes and value.ndim == 0 and float(value).is_integer() and 0 <= int(value) < len(classes):
        return {"label": classes[int(value)]}
    if value.dtype.kind in "biuf":
        return {"target": value.tolist()}
    return {}


@_routes("/samples", methods=["GET"])
def samples(name: str, version: int | None):
    runtime = _inspectable(name, version)
    n = _int_option(request.args.to_dict(), "n", 8, 1, MAX_SAMPLES)
    offset = _int_option(request.args.to_dict(), "offset", 0, 0, 1 << 30)
    single = len(runtime.inputs) == 1
    try:
        x, y = _reference(runtime)
    except LayerscopeError as exc:  # nothing to list: an empty listing that says why
        return jsonify(
            {
                "model": runtime.name,
                "version": runtime.version,
                "total": 0,
                "input": runtime.metadata.get("input") if single else None,
                "inputs": runtime.inputs,
                "samples": [],
                "reason": exc.message,
            }
        )
    columns = {runtime.inputs[0]["name"]: x} if single else x
    total = _rows(x)
    out = []
    for i in range(offset, min(offset + n, total)):
        rows = {k: v[i] for k, v in columns.items()}
        item: dict = {"index": i, "instance": rows[runtime.inputs[0]["name"]] if single else rows}
        if y is not None and i < len(y):
            item.update(_label(runtime, y[i]))
        features = {
            s["name"]: dict(zip(s["features"], (float(v) for v in rows[s["name"]]), strict=True))
            for s in runtime.inputs
            if s.get("kind") == "tabular" and s.get("features")
        }
        if features:
            item["features"] = features[runtime.inputs[0]["name"]] if single else features
        out.append(item)
    return jsonify(
        {
            "model": runtime.name,
            "version": runtime.version,
            "total": total,
            "input": runtime.metadata.get("input") if single else None,
            "inputs": runtime.inputs,
            "samples": out,
        }
    )


# -- attributions ------------------------------------------------------------------------
def explainers(runtime) -> attribution.Explainers:
    """The version's compiled attribution functions (built on first use, freed with it)."""
    runtime.require_graph()
    with _cache_lock:
        hit = _explainers.get(runtime)
        if hit is None:
            hit = _explainers[runtime] = attribution.Explainers(runtime)
        return hit


def _classes(spec: dict, value, n: int) -> np.ndarray:
    """Explained class per instance: -1 (predicted) for null/"predicted", else an index or
    a class name; one value for all instances or a list of n."""
    names = spec.get("class_names") or []
    items = value if isinstance(value, list) else [value] * n
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


def _target(runtime, options: dict, n: int) -> tuple[int, dict, np.ndarray, int]:
    """(output index, output spec, class per instance, regression unit) asked for."""
    graph = explainers(runtime).graph
    try:
        index, spec = graph.output(options.get("output"))
    except attribution.AttributionError as exc:
        raise InvalidInput(str(exc)) from None
    if attribution.classification(spec):
        if options.get("unit") is not None:
            raise InvalidInput(
                f"'unit' is {options['unit']!r}; output {spec['name']!r} is a classification "
                "output: choose what to explain with 'class'"
            )
        return index, spec, _classes(spec, options.get("class"), n), 0
    if options.get("class") is not None:
        raise InvalidInput(
            f"'class' is {options['class']!r}; output {spec['name']!r} is a {spec['task']} "
            "output without classes: choose the explained value with 'unit' (an index into "
            "the output's values)"
        )
    units = attribution.output_units(spec)
    unit = _int_option(options, "unit", 0, 0, (units or 1 << 30) - 1)
    return index, spec, np.full(n, -1, np.int32), unit


def _threshold(spec: dict) -> float:
    return 0.5 if spec.get("threshold") is None else float(spec["threshold"])


def _column(runtime, x, i: int) -> np.ndarray:
    """The batch of model input ``i``."""
    return x[runtime.inputs[i]["name"]] if isinstance(x, dict) else x


def _baseline(runtime, spec) -> tuple[list, str, bool]:
    """IG baseline as one instance per model input (None: zeros shaped like the instance),
    its kind, and whether integer inputs' baselines are token ids (a custom instance)
    rather than zero embeddings.

    "reference_mean" (default when every float input is tabular and a reference sample
    exists; integer inputs: zero embeddings), "zeros" (default otherwise: zero float
    inputs and zero embeddings), or one instance in the request format."""
    specs = runtime.inputs
    floats = [s for s in specs if attribution.is_float(s)]
    if spec is None:
        tabular = floats and all(s.get("kind") == "tabular" for s in floats)
        spec = "reference_mean" if tabular and _has_reference(runtime) else "zeros"
    if spec == "zeros":
        return [None] * len(specs), "zeros", False
    if spec == "reference_mean":
        x, _ = _reference(runtime)
        means = [
            _column(runtime, x, i).mean(axis=0).astype(np.float32)
            if attribution.is_float(s)
            else None
            for i, s in enumerate(specs)
        ]
        return means, "reference_mean", False
    if isinstance(spec, (list, dict)):
        x = inputs.decode_instances([spec], runtime, settings().max_image_pixels, "baseline")
        return [_column(runtime, x, i)[0] for i in range(len(specs))], "custom", True
    raise InvalidInput(
        f'\'baseline\' is {spec!r}; expected "reference_mean", "zeros" or one '
        "instance in the same format as 'instances'"
    )


def _prediction_entries(runtime, spec: dict, raw: np.ndarray) -> list[dict]:
    return _output_rows(runtime, spec, np.asarray(raw, dtype=np.float32))


def _gradcam(runtime, x, options, index, spec, cls, unit) -> tuple[dict, list[dict]]:
    layer = options.get("layer")
    layer = None if layer is None else resolve_layer(runtime, layer)
    try:
        fn = explainers(runtime).gradcam(layer, index)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    out = fn(x, cls, _threshold(spec), unit)
    raw = out["probs"]
    probs = runtime.probabilities(raw, spec)
    entries = _prediction_entries(runtime, spec, raw)
    results = []
    for i in range(_rows(x)):
        c = int(out["class"][i])
        item: dict = {}
        if attribution.classification(spec):
            item.update(class_index=c, label=spec["class_names"][c], probability=float(probs[i, c]))
        else:
            item.update(unit=c, value=float(raw[i].reshape(-1)[c]))
        item.update(prediction=entries[i], heatmap=out["cam"][i], heatmap_input=out["cam_input"][i])
        results.append(item)
    summary = {
        "layer": fn.layer,
        "output": spec["name"],
        "image_input": runtime.inputs[fn.image_input]["name"],
    }
    return summary, results


def _ig_size(runtime, x, variables) -> int:
    """Path values per instance of the IG variables (embedding: tokens x embedding dim)."""
    size = 0
    for v in variables:
        shape = _column(runtime, x, v.input).shape[1:]
        dim = int(v.tensor.shape[-1] or 1) if v.kind == "embedding" else 1
        size += math.prod(shape) * dim
    return size


def _attribution_json(runtime, out, i: int):
    """One instance's attributions: a single variable as before (tabular: by feature name,
    else the array); several as ``{variable: ...}``. Embedding variables: one per token."""
    specs = runtime.inputs

    def one(v, value):
        features = specs[v.input].get("features") if v.kind == "input" else None
        if features and value.ndim == 1 and len(features) == len(value):
            return dict(zip(features, value.tolist(), strict=True))
        return value

    per = out["per_variable"]
    variables = out["variables"]
    if len(variables) == 1:
        return one(variables[0], per[variables[0].name][i])
    return {v.name: one(v, per[v.name][i]) for v in variables}


def _integrated_gradients(runtime, x, options, index, spec, cls, unit):
    steps = _int_option(options, "steps", DEFAULT_STEPS, 1, attribution.MAX_STEPS)
    try:
        ig = explainers(runtime).integrated_gradients(index)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    n = _rows(x)
    size = _ig_size(runtime, x, ig.variables)
    if n * (steps + 1) * size > MAX_IG_VALUES:
        raise InvalidInput(
            f"{n} instances x {steps + 1} path points x {size} inputs "
            f"exceeds {MAX_IG_VALUES} values; send fewer instances or steps"
        )
    base, kind, embed_baseline = _baseline(runtime, options.get("baseline"))
    xs = runtime.arrays(x)
    bases = [
        np.zeros(a.shape[1:], a.dtype) if b is None else b for b, a in zip(base, xs, strict=True)
    ]
    try:
        out = ig(
            xs,
            bases if len(xs) > 1 else bases[0],
            cls,
            steps=steps,
            threshold=_threshold(spec),
            unit=unit,
            embed_baseline=embed_baseline,
        )
    except attribution.AttributionError as exc:
        raise InvalidInput(f"'baseline': {exc}") from None
    raw = out["probs"]
    entries = _prediction_entries(runtime, spec, raw)
    results = []
    for i in range(n):
        c = int(out["class"][i])
        rel = float(out["relative_error"][i])
        item: dict = {}
        if attribution.classification(spec):
            item.update(class_index=c, label=spec["class_names"][c])
            item["probability"] = float(out["f_x"][i])
        else:
            item.update(unit=c, value=float(out["f_x"][i]))
        item.update(
            prediction=entries[i],
            attributions=_attribution_json(runtime, out, i),
            completeness={
                "sum_of_attributions": float(out["sum"][i]),
                "f_x": float(out["f_x"][i]),
                "f_baseline": float(out["f_baseline"][i]),
                "f_x_minus_f_baseline": float(out["delta"][i]),
                "absolute_error": float(out["absolute_error"][i]),
                "relative_error": rel,
                "within_5_percent": bool(rel <= 0.05),
            },
        )
        results.append(item)
    shown = {
        s["name"]: b
        for s, b in zip(runtime.inputs, bases, strict=True)
        if attribution.is_float(s) or embed_baseline
    }
    baseline_values = shown.get(runtime.inputs[0]["name"]) if len(xs) == 1 else shown
    explained = (
        "probability of the explained class"
        if attribution.classification(spec)
        else f"raw value of unit {unit} of output {spec['name']!r}"
    )
    summary = {
        "output": spec["name"],
        "baseline": kind,
        "baseline_values": baseline_values,
        "embedding_baseline": (
            ("tokens" if embed_baseline else "zeros")
            if any(v.kind == "embedding" for v in ig.variables)
            else None
        ),
        "variables": [
            {"name": v.name, "input": runtime.inputs[v.input]["name"], "kind": v.kind}
            for v in ig.variables
        ],
        "steps": steps,
        "explained_function": explained,
    }
    return summary, results


def explain_batch(runtime, x, options: dict) -> tuple[str, dict, list[dict]]:
    """(method, summary, per-instance results) for a decoded batch."""
    runtime.require_graph()
    image = any(s.get("kind") == "image" for s in runtime.inputs)
    default = "gradcam" if image else "integrated_gradients"
    method = options.get("method", default)
    if method not in ("gradcam", "integrated_gradients"):
        raise InvalidInput(
            f"'method' is {method!r}; expected 'gradcam' (image inputs) or 'integrated_gradients'"
        )
    index, spec, cls, unit = _target(runtime, options, _rows(x))
    if method == "gradcam":
        summary, results = _gradcam(runtime, x, options, index, spec, cls, unit)
    else:
        summary, results = _integrated_gradients(runtime, x, options, index, spec, cls, unit)
    return method, summary, results


@_routes("/explain", methods=["POST"])
def explain(name: str, version: int | None):
    runtime = _inspectable(name, version)
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


def _one(x, what: str) -> None:
    if _rows(x) != 1:
        raise InvalidInput(f"{what} draws one instance; received {_rows(x)}")


@_routes("/layers/<path:layer>/picture.png", methods=["POST"])
def layer_picture(name: str, version: int | None, layer: str):
    """Feature-map grid (4-D layers), time x unit heat map (3-D layers and higher ranks),
    both for one instance, or heat strip (vectors: one row per instance)."""
    runtime = _inspectable(name, version)
    layer_name = resolve_layer(runtime, layer)
    x, _ = _decode(runtime)
    values = compute(runtime, x, [layer_name], endpoint="picture").layers[layer_name]
    kind = pictures.picture_kind(values.ndim)
    if kind == "grid":
        _one(x, f"the feature-map grid of {layer_name!r}")
        return _png(pictures.feature_map_grid(values[0]))
    if kind == "sequence":
        _one(x, f"the heat map of {layer_name!r}")
        return _png(pictures.sequence_heatmap(values[0]))
    return _png(pictures.heat_strip(values.reshape(len(values), -1)))


def _bars(runtime, attr) -> bytes:
    """Bars of every scalar attribution (the ``MAX_BARS`` largest by magnitude)."""
    items = attr.items() if isinstance(attr, dict) else [("", attr)]
    names: list[str] = []
    values: list[float] = []
    for key, value in items:
        if isinstance(value, dict):
            names.extend(f"{key}.{f}" if len(items) > 1 else str(f) for f in value)
            values.extend(float(v) for v in value.values())
        else:
            arr = np.asarray(value, dtype=np.float64)
            flat = arr.reshape(-1)
            prefix = f"{key}" if key else ""
            names.extend(f"{prefix}[{j}]" for j in range(flat.size))
            values.extend(flat.tolist())
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) > MAX_BARS:
        keep = np.sort(np.argsort(-np.abs(arr), kind="stable")[:MAX_BARS])
        names, arr = [names[j] for j in keep], arr[keep]
    return pictures.attribution_bars(names, arr)


@_routes("/explain.png", methods=["POST"])
def explain_picture(name: str, version: int | None):
    """Grad-CAM over the input image, integrated gradients over an image input as a heat
    overlay, or integrated-gradient bars (features, tokens, other values)."""
    runtime = _inspectable(name, version)
    x, options = _decode(runtime)
    _one(x, "explain.png")
    method, summary, results = explain_batch(runtime, x, options)
    names = [s["name"] for s in runtime.inputs]
    if method == "gradcam":
        image = _column(runtime, x, names.index(summary["image_input"]))[0]
        return _png(pictures.gradcam_overlay(image, results[0]["heatmap"]))
    attr = results[0]["attributions"]
    variables = summary["variables"]
    if len(variables) == 1 and variables[0]["kind"] == "input" and not isinstance(attr, dict):
        i = names.index(variables[0]["input"])
        if runtime.inputs[i].get("kind") == "image":
            image = _column(runtime, x, i)[0]
            heat = np.abs(np.asarray(attr)).reshape(image.shape)
            heat = heat.sum(axis=-1) if heat.ndim == 3 else heat
            return _png(pictures.gradcam_overlay(image, heat / (heat.max() or 1.0)))
    return _png(_bars(runtime, attr))


# -- explorer page -----------------------------------------------------------------------
@bp.get("/ui")
@bp.get("/ui/")
def ui():
    return send_from_directory(STATIC_DIR, "explorer.html", max_age=0)


@bp.get("/ui/static/<path:filename>")
def ui_static(filename: str):
    return send_from_directory(STATIC_DIR, filename, max_age=0)
