"""Shared request plumbing for every protocol blueprint.

All model work of every protocol goes through ``resolve`` (which runtime serves the
request) and ``compute`` (one forward pass, optionally with hidden layers), so metrics,
logs and limits are added in one place."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from flask import current_app, g

from service import batching, inputs, metrics
from service.errors import PayloadTooLarge


def state():
    """The per-app ``Layerscope`` object (settings + repository)."""
    return current_app.extensions["layerscope"]


def settings():
    return state().settings


def repository():
    return state().repository


def resolve(name: str, version: int | None = None):
    """Runtime for ``name`` (latest ready version unless ``version``); 404 / 503 otherwise."""
    runtime = repository().get(name, version)
    g.layerscope_model = (runtime.name, runtime.version)
    return runtime


def model_routes(bp, rule: str, **kw):
    """A decorator registering a view on ``bp`` under /models/<name>{rule} (the default
    version) and /models/<name>/versions/<v>{rule}."""

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


def parse_version(text: str) -> int | None:
    """Path versions are '3' (or 'v3', as the V2 spec's examples write them)."""
    text = text[1:] if text[:1] in ("v", "V") else text
    return int(text) if text.isdigit() and len(text) < 10 else None


@dataclass
class Result:
    raw: np.ndarray  # the model's first output, e.g. (n, 1) sigmoid for binary
    probabilities: np.ndarray  # (n, n_classes) of the first output (regression: raw)
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # every model output


def check_activation_budget(runtime, n: int, layers: Sequence[str]) -> None:
    """413 before computing if the requested layers would exceed the configured cap."""
    limit = settings().max_activation_values
    total = 0
    for name in layers:
        shape = runtime.layer_shapes.get(name) or []
        total += n * math.prod(d for d in shape[1:] if d is not None)
    if total > limit:
        raise PayloadTooLarge(
            f"the requested layers hold {total} values for {n} instances; the limit is "
            f"{limit} (LAYERSCOPE_MAX_ACTIVATION_VALUES): ask for fewer layers or instances, "
            "or for statistics only"
        )


def compute(
    runtime, x, layers: Sequence[str] = (), *, endpoint: str, budget: bool = True
) -> Result:
    """The single forward pass behind every predict / infer endpoint. ``x``: the batch
    (an array, or ``{input name: array}`` for a multi-input model)."""
    ctx = g._get_current_object()  # one proxy lookup for the three fields
    ctx.layerscope_endpoint = endpoint
    rows = inputs.batch_rows(x)
    ctx.layerscope_batch_size = rows
    start = time.perf_counter()
    names = [o["name"] for o in runtime.outputs]
    if layers:
        runtime.check_layers(layers)
        if budget:  # False: the values are summarised (stats), not returned
            check_activation_budget(runtime, rows, layers)
        wanted = list(dict.fromkeys([*layers, *names]))
        acts = runtime.activations(x, wanted)
        raw = acts[names[0]]
        result = Result(raw, runtime.probabilities(raw), {n: acts[n] for n in layers})
        result.outputs = {n: acts[n] for n in names}
    elif runtime.single:  # plain predictions share batched model calls (service/batching.py)
        raw = batching.predict(runtime, x)
        result = Result(raw, runtime.probabilities(raw), outputs={names[0]: raw})
    else:
        outputs = runtime.predict_outputs(x)
        raw = outputs[names[0]]
        result = Result(raw, runtime.probabilities(raw), outputs=outputs)
    result.seconds = time.perf_counter() - start
    ctx.layerscope_compute_seconds = result.seconds
    metrics.observe_predict(runtime, x, raw, result.seconds, result.layers)
    return result


def format_result(runtime, result: Result) -> list[dict]:
    """The native API's predictions, one entry per instance: a single classification
    output as ``format_predictions``; a regression output as ``{"value": ...}`` (a number
    for one unit, else the array); several outputs as ``{"outputs": {name: entry}}``."""
    specs = runtime.outputs
    if len(specs) == 1:
        return format_output(runtime, specs[0], result.outputs.get(specs[0]["name"], result.raw))
    per_output = [format_output(runtime, spec, result.outputs[spec["name"]]) for spec in specs]
    return [
        {"outputs": {spec["name"]: rows[i] for spec, rows in zip(specs, per_output, strict=True)}}
        for i in range(len(result.raw))
    ]


def format_output(runtime, spec: dict, raw: np.ndarray) -> list[dict]:
    """One output's entries: labels and probabilities for classification, values else."""
    task = spec.get("task")
    if task in ("binary_classification", "multiclass_classification"):
        probs = runtime.probabilities(raw, spec)
        return _format_classes(
            probs, spec["class_names"], task == "binary_classification", spec.get("threshold")
        )
    values = np.asarray(raw, dtype=np.float32)
    if values.ndim == 2 and values.shape[1] == 1:
        return [{"value": v} for v in values[:, 0].tolist()]
    return [{"value": row} for row in values.tolist()]


def format_predictions(runtime, probs: np.ndarray) -> list[dict]:
    """``[format_prediction(runtime, row) for row in probs]``, identical output, with the
    per-row numpy work done once for the whole batch (a 256-row request spent more time
    formatting than computing)."""
    if runtime.task not in ("binary_classification", "multiclass_classification"):
        return format_output(runtime, runtime.outputs[0], probs)
    return _format_classes(probs, runtime.class_names, runtime.binary, runtime.threshold)


def _format_classes(probs, classes, binary: bool, threshold) -> list[dict]:
    """Classification entries of a batch of probabilities (binary: [1 - p, p])."""
    table = np.asarray(probs, dtype=np.float32)
    rows = table.tolist()
    if binary:
        threshold = 0.5 if threshold is None else float(threshold)
        positive_key = f"{classes[1]}_probability"
        out = []
        for p in rows:
            index = 1 if p[1] >= threshold else 0
            entry = {
                "label": classes[index],
                "class_index": index,
                "score": p[index],
                "probabilities": dict(zip(classes, p, strict=True)),
            }
            entry[positive_key] = p[1]
            entry.update(positive_probability=p[1], decision=classes[index], threshold=threshold)
            out.append(entry)
        return out
    indices = np.argmax(table, axis=1).tolist() if len(rows) else []
    return [
        {
            "label": classes[index],
            "class_index": index,
            "score": p[index],
            "probabilities": dict(zip(classes, p, strict=True)),
        }
        for index, p in zip(indices, rows, strict=True)
    ]


def format_prediction(runtime, probs: np.ndarray) -> dict:
    """One instance of the native response. Binary models decide at the stored threshold
    (not at 0.5), and say so."""
    return format_predictions(runtime, np.asarray(probs, dtype=np.float32)[None])[0]
