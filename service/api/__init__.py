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

from service import batching, metrics
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


def parse_version(text: str) -> int | None:
    """Path versions are '3' (or 'v3', as the V2 spec's examples write them)."""
    text = text[1:] if text[:1] in ("v", "V") else text
    return int(text) if text.isdigit() and len(text) < 10 else None


@dataclass
class Result:
    raw: np.ndarray  # the model's final layer, e.g. (n, 1) sigmoid for binary
    probabilities: np.ndarray  # (n, n_classes)
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


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
    runtime, x: np.ndarray, layers: Sequence[str] = (), *, endpoint: str, budget: bool = True
) -> Result:
    """The single forward pass behind every predict / infer endpoint."""
    ctx = g._get_current_object()  # one proxy lookup for the three fields
    ctx.layerscope_endpoint = endpoint
    ctx.layerscope_batch_size = int(x.shape[0])
    start = time.perf_counter()
    if layers:
        runtime.check_layers(layers)
        if budget:  # False: the values are summarised (stats), not returned
            check_activation_budget(runtime, int(x.shape[0]), layers)
        final = runtime.output_layer_name
        wanted = list(dict.fromkeys([*layers, final]))
        acts = runtime.activations(x, wanted)
        raw = acts[final]
        result = Result(raw, runtime.probabilities(raw), {n: acts[n] for n in layers})
    else:  # plain predictions share batched model calls (service/batching.py)
        raw = batching.predict(runtime, x)
        result = Result(raw, runtime.probabilities(raw))
    result.seconds = time.perf_counter() - start
    ctx.layerscope_compute_seconds = result.seconds
    metrics.observe_predict(runtime, x, raw, result.seconds, result.layers)
    return result


def format_predictions(runtime, probs: np.ndarray) -> list[dict]:
    """``[format_prediction(runtime, row) for row in probs]``, identical output, with the
    per-row numpy work done once for the whole batch (a 256-row request spent more time
    formatting than computing)."""
    classes = runtime.class_names
    table = np.asarray(probs, dtype=np.float32)
    rows = table.tolist()
    if runtime.binary:
        threshold = 0.5 if runtime.threshold is None else float(runtime.threshold)
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
            entry.update(
                positive_probability=p[1], decision=classes[index], threshold=threshold
            )
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
    classes = runtime.class_names
    p = [float(v) for v in probs]
    entry: dict = {}
    if runtime.binary:
        threshold = 0.5 if runtime.threshold is None else float(runtime.threshold)
        index = 1 if p[1] >= threshold else 0
        positive = classes[1]
        entry.update(
            label=classes[index],
            class_index=index,
            score=p[index],
            probabilities=dict(zip(classes, p, strict=True)),
        )
        entry[f"{positive}_probability"] = p[1]
        entry.update(positive_probability=p[1], decision=classes[index], threshold=threshold)
        return entry
    index = int(np.argmax(probs))
    return {
        "label": classes[index],
        "class_index": index,
        "score": p[index],
        "probabilities": dict(zip(classes, p, strict=True)),
    }
