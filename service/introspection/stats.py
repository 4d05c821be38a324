"""Activation statistics: per instance and layer, and per unit over a version's reference sample.

Units and the "inactive" rule
-----------------------------
A layer's *units* are its last axis: the neurons of a dense layer, the filters (channels) of a
convolutional or pooling layer. For per-instance top-k, a conv unit's activity is its mean over
the spatial positions.

A value is *inactive* when it carries (almost) no signal for the layer's activation:

=====================================================  ====================
activation                                             inactive when
=====================================================  ====================
relu, relu6, leaky_relu, elu, selu, gelu, silu/swish,  ``v <= 0``
linear / none (also pooling, flatten, dropout, norms)
sigmoid, hard_sigmoid, softmax                         ``v <= 0.01``
tanh, softsign                                         ``|v| <= 0.01``
softplus                                               ``v <= 0.01``
=====================================================  ====================

``inactive_fraction`` counts values (every position of every unit). In the reference
statistics a unit is *active on a sample* when any of its values is active there, and *dead*
when it is active on none of the reference samples.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Sequence

import numpy as np

NEAR_ZERO = 0.01
_SATURATING = {"sigmoid", "hard_sigmoid", "softmax", "softplus"}
_SYMMETRIC = {"tanh", "softsign"}


def inactive_rule(activation: str | None) -> str:
    """Human-readable rule used for ``activation`` (see the module docstring)."""
    act = (activation or "linear").lower()
    if act in _SATURATING:
        return f"v <= {NEAR_ZERO}"
    if act in _SYMMETRIC:
        return f"|v| <= {NEAR_ZERO}"
    return "v <= 0"


def inactive_mask(values: np.ndarray, activation: str | None) -> np.ndarray:
    """Boolean mask of the inactive values of a layer with this activation."""
    act = (activation or "linear").lower()
    if act in _SATURATING:
        return values <= NEAR_ZERO
    if act in _SYMMETRIC:
        return np.abs(values) <= NEAR_ZERO
    return values <= 0


def _f(x: float) -> float | None:
    """Python float, or None for NaN / Inf (JSON has neither)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _unit_activity(values: np.ndarray) -> np.ndarray:
    """(n, units): a unit's activity per instance; conv units averaged over space."""
    n = values.shape[0]
    if values.ndim <= 2:
        return values.reshape(n, -1)
    return values.reshape(n, -1, values.shape[-1]).mean(axis=1)


def instance_stats(values: np.ndarray, activation: str | None, top_k: int = 5) -> list[dict]:
    """Statistics of one layer's output for each instance of the batch ``values`` (n, ...)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    flat = values.reshape(n, -1)
    inactive = inactive_mask(flat, activation).mean(axis=1) if flat.shape[1] else np.zeros(n)
    activity = _unit_activity(values)
    k = min(top_k, activity.shape[1])
    out = []
    for i in range(n):
        row = flat[i]
        order = np.argsort(-activity[i], kind="stable")[:k]
        out.append(
            {
                "mean": _f(row.mean()),
                "std": _f(row.std()),
                "min": _f(row.min()),
                "max": _f(row.max()),
                "inactive_fraction": _f(inactive[i]),
                "l2_norm": _f(np.linalg.norm(row)),
                "top_k": [{"unit": int(j), "value": _f(activity[i, j])} for j in order],
            }
        )
    return out


def reference_unit_stats(values: np.ndarray, activation: str | None) -> dict:
    """Per-unit statistics of one layer over a reference batch ``values`` (N, ..., units)."""
    values = np.asarray(values)
    n = values.shape[0]
    units = values.shape[-1] if values.ndim > 1 else 1
    flat = values.reshape(n, -1, units)  # no float64 copy: accumulate in float64 instead
    active_on_sample = (~inactive_mask(flat, activation)).any(axis=1)  # (N, units)
    active_fraction = active_on_sample.mean(axis=0)
    dead = np.flatnonzero(active_fraction == 0)
    return {
        "samples": int(n),
        "units": int(units),
        "inactive_rule": inactive_rule(activation),
        "dead_fraction": _f(len(dead) / units),
        "dead_units": [int(j) for j in dead],
        "per_unit": {
            "mean": [_f(v) for v in flat.mean(axis=(0, 1), dtype=np.float64)],
            "std": [_f(v) for v in flat.std(axis=(0, 1), dtype=np.float64)],
            "min": [_f(v) for v in flat.min(axis=(0, 1))],
            "max": [_f(v) for v in flat.max(axis=(0, 1))],
            "active_fraction": [_f(v) for v in active_fraction],
        },
    }


ActivationsFn = Callable[[np.ndarray, Sequence[str]], dict]


def compute_reference_stats(
    activations: ActivationsFn,
    x: np.ndarray,
    layers: Sequence[str],
    activation_of: dict[str, str | None],
    batch_size: int = 64,
) -> dict[str, dict]:
    """Reference statistics of ``layers``: one multi-output pass per batch of ``x``."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    for start in range(0, len(x), batch_size):
        got = activations(x[start : start + batch_size], list(layers))
        for name in layers:
            chunks[name].append(np.asarray(got[name]))
    out = {}
    for name in layers:  # one layer's float copy at a time
        out[name] = reference_unit_stats(np.concatenate(chunks.pop(name)), activation_of.get(name))
    return out


class ReferenceStatsCache:
    """Reference statistics computed lazily once per loaded version (keyed by runtime object)."""

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, runtime, compute: Callable[[], dict[str, dict]]) -> dict[str, dict]:
        """Cached stats for ``runtime``, computing them with ``compute()`` the first time."""
        with self._lock:
            hit = self._cache.get(runtime)
            if hit is None:
                hit = compute()
                self._cache[runtime] = hit
            return hit
