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

import itertools
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


def _json_floats(a: np.ndarray) -> list:
    """``a.tolist()`` with None for NaN / Inf; the sum is finite only if every value is."""
    if math.isfinite(np.add.reduce(a, axis=None)):
        return a.tolist()
    return np.where(np.isfinite(a), a, None).tolist()


FULL_SORT_UNITS = 256  # up to here one stable argsort of every row is the cheapest top-k
CHUNK_VALUES = 1 << 18  # float64 values per working buffer (2 MB, cache-sized): rows per chunk
SLICE_VALUES = 512  # from this mean (instance, layer) slice size on, count_nonzero per slice


def top_k_units(activity: np.ndarray, k: int) -> np.ndarray:
    """(n, k) unit indices by descending activity, ties by ascending unit index: the first k
    of a stable argsort of ``-activity``, without sorting thousands of units per row."""
    neg = -activity
    n, units = neg.shape
    if k >= units or units <= FULL_SORT_UNITS or np.isnan(neg).any():
        return np.argsort(neg, axis=1, kind="stable")[:, :k]
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1 : k]  # k-th largest activity per row
    rows, cols = np.nonzero(neg <= kth)  # >= k candidates per row, row-major (cols ascending)
    order = np.lexsort((neg[rows, cols], rows))  # stable: equal values keep ascending cols
    starts = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=n))[:-1]))
    return cols[order][starts[:, None] + np.arange(k)]


def instance_stats(values: np.ndarray, activation: str | None, top_k: int = 5) -> list[dict]:
    """Statistics of one layer's output for each instance of the batch ``values`` (n, ...)."""
    return layers_instance_stats([values], [activation], top_k)[0]


def layers_instance_stats(
    layers: Sequence[np.ndarray], activations: Sequence[str | None], top_k: int = 5
) -> list[list[dict]]:
    """``[instance_stats(v, a, top_k) for v, a in zip(layers, activations)]`` for layers of
    the same batch, computed together: the layers are laid side by side in one float64
    buffer and each statistic is one segmented reduction over all of them, so a request
    for every layer costs a few numpy calls rather than a dozen per layer and instance.
    A layer equal to an earlier one (inference-time Dropout) gets a copy of its statistics.
    Instances are taken in chunks that keep the buffer near ``CHUNK_VALUES``; one instance
    of small dense layers (the common single-row request) takes ``_single_stats``."""
    arrays = [_floating(v) for v in layers]
    rules = [inactive_rule(a) for a in activations]
    n = len(arrays[0]) if arrays else 0
    first = _first_equal(arrays, rules)
    todo = [j for j, a in enumerate(arrays) if first[j] == j and a.size]
    done: dict[int, list[dict]] = {j: [] for j in todo}
    if n == 1 and todo and _small([arrays[j] for j in todo]):
        layers, acts = [arrays[j] for j in todo], [activations[j] for j in todo]
        got = _single_stats(layers, acts, [rules[j] for j in todo], top_k)
        done.update(zip(todo, got, strict=True))
        todo = []
    step = max(1, CHUNK_VALUES // max(1, sum(arrays[j].size for j in todo) // max(1, n)))
    for start in range(0, n if todo else 0, step):
        chunk = [arrays[j][start : start + step] for j in todo]
        got = _chunk_stats(chunk, [activations[j] for j in todo], [rules[j] for j in todo], top_k)
        for j, rows in zip(todo, got, strict=True):
            done[j].extend(rows)
    out: list[list[dict]] = []
    for j in range(len(arrays)):
        if j in done:
            out.append(done[j])
        elif first[j] != j:
            out.append(_copied(out[first[j]]))
        else:  # a layer without values (zero-size output): nothing to summarise
            out.append([_empty_stats() for _ in range(n)])
    return out


def _floating(values) -> np.ndarray:
    """A float (n, ...) array; a 1-D batch is n instances of one unit."""
    values = np.asarray(values)
    values = values if values.dtype.kind == "f" else values.astype(np.float64)
    return values.reshape(len(values), 1) if values.ndim == 1 else values


def _first_equal(arrays: list[np.ndarray], rules: list[str]) -> list[int]:
    """Per layer, the index of the first layer with the same inactive rule, shape and values
    (itself if none); a few leading values are compared first, so that different layers of
    the same shape cost next to nothing."""
    first: list[int] = []
    for j, a in enumerate(arrays):
        first.append(j)
        for i in range(j):
            b = arrays[i]
            if first[i] == i and rules[i] == rules[j] and b.shape == a.shape and _same(a, b):
                first[j] = i
                break
    return first


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a is b:  # one output tensor under two layer names (inference-time Dropout)
        return True
    if a.size > 1024 and not (a.reshape(-1)[:16] == b.reshape(-1)[:16]).all():
        return False
    return bool((a == b).all())


def _copied(rows: list[dict]) -> list[dict]:
    return [{**row, "top_k": [dict(t) for t in row["top_k"]]} for row in rows]


def _empty_stats() -> dict:
    return {
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
        "inactive_fraction": 0.0,
        "l2_norm": 0.0,
        "top_k": [],
    }


def _chunk_stats(
    arrays: list[np.ndarray], activations: list[str | None], rules: list[str], top_k: int
) -> list[list[dict]]:
    """Per layer and instance statistics of non-empty layers of ``n`` instances (a chunk)."""
    n = len(arrays[0])
    counts = [a.size // n for a in arrays]
    bounds = list(itertools.accumulate(counts, initial=0))
    sizes, offsets = np.array(counts), np.array(bounds[:-1])
    x = np.concatenate([a.reshape(n, -1) for a in arrays], axis=1, dtype=np.float64)
    spans = zip(arrays, bounds, bounds[1:], strict=False)
    layers = [x[:, a:b].reshape(v.shape) for v, a, b in spans]
    tops = _top_units(layers, top_k)  # reads x before it is squared below
    mean, std, lo, hi, inactive, l2 = table = np.empty((6, n, len(arrays)))
    np.minimum.reduceat(x, offsets, axis=1, out=lo)
    np.maximum.reduceat(x, offsets, axis=1, out=hi)
    np.divide(_inactive_counts(x, bounds, activations, rules), sizes, out=inactive)
    np.divide(np.add.reduceat(x, offsets, axis=1), sizes, out=mean)
    squares = np.add.reduceat(np.square(x, out=x), offsets, axis=1)
    np.sqrt(squares, out=l2)
    np.sqrt(_centred_squares(squares, mean, sizes, arrays) / sizes, out=std)
    columns = _json_floats(table.transpose(0, 2, 1))  # [statistic][layer][instance]
    per_layer = zip(*columns, strict=True)  # (mean, std, min, max, inactive, l2) per layer
    return [_stat_dicts(*c, *top) for c, top in zip(per_layer, tops, strict=True)]


WELL_CONDITIONED = 1e4  # sum x^2 / sum (x - mean)^2 up to here: one pass is accurate enough


def _centred_squares(squares, mean, sizes, arrays) -> np.ndarray:
    """(n, layers) sum of (x - mean)^2 as sum x^2 - size * mean^2: one pass fewer than
    numpy's two-pass std and within ~1e-11 of it while the spread is not tiny next to the
    mean; where it is (a (nearly) constant layer) that cell is summed again two-pass."""
    centred = squares - sizes * mean**2
    for i, j in zip(*np.nonzero(centred * WELL_CONDITIONED < squares), strict=True):
        d = arrays[j][i].reshape(-1).astype(np.float64) - mean[i, j]
        centred[i, j] = np.einsum("i,i->", d, d)
    return centred


SMALL_VALUES = 4096  # one instance of dense layers with up to this many values: _single_stats


def _small(arrays: list[np.ndarray]) -> bool:
    """Whether ``_single_stats`` takes these layers of one instance (and is the faster)."""
    return sum(a.size for a in arrays) <= SMALL_VALUES and all(a.ndim <= 2 for a in arrays)


def _sqrt(v: float) -> float:
    """``np.sqrt`` of one Python float: NaN (not ValueError) below zero."""
    return math.sqrt(v) if v >= 0 else math.nan


def _single_stats(
    arrays: list[np.ndarray], activations: list[str | None], rules: list[str], top_k: int
) -> list[list[dict]]:
    """``_chunk_stats`` of ONE instance of non-empty (1, units) layers, equal to it to the
    last bit: the same reductions (``reduceat`` over the same float64 values; sums are
    order-sensitive), then the per-layer scalar arithmetic (IEEE ``+ - * / sqrt``, exact in
    Python too) on Python floats, and top-k as each layer's own stable argsort (what the
    shared padded argsort and ``top_k_units`` return). For a few hundred values numpy's
    per-call overhead, not the arithmetic, is what costs."""
    bounds = list(itertools.accumulate((a.size for a in arrays), initial=0))
    offsets = bounds[:-1]
    x = np.concatenate([a.reshape(-1) for a in arrays], dtype=np.float64)
    neg = np.negative(x)
    lo = np.minimum.reduceat(x, offsets).tolist()
    hi = np.maximum.reduceat(x, offsets).tolist()
    sums = np.add.reduceat(x, offsets).tolist()
    squares = np.add.reduceat(np.square(x), offsets).tolist()
    counts = {
        rule: np.add.reduceat(inactive_mask(x, act), offsets, dtype=np.int64).tolist()
        for rule, act in dict(zip(rules, activations, strict=True)).items()
    }
    out = []
    for j, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        size = b - a
        mean, sq = sums[j] / size, squares[j]
        centred = sq - size * (mean * mean)
        if centred * WELL_CONDITIONED < sq:  # as _centred_squares: two-pass
            d = arrays[j][0].reshape(-1).astype(np.float64) - mean
            centred = float(np.einsum("i,i->", d, d))
        if size <= FULL_SORT_UNITS:
            order = neg[a:b].argsort(kind="stable")[:top_k]
        else:  # the same first k, without sorting every unit
            order = top_k_units(x[None, a:b], min(top_k, size))[0]
        units, tops = order.tolist(), x[a:b][order].tolist()
        if not math.isfinite(sums[j]):  # some value is NaN / Inf
            tops = [_f(v) for v in tops]
        row = {
            "mean": _f(mean),
            "std": _f(_sqrt(centred / size)),
            "min": _f(lo[j]),
            "max": _f(hi[j]),
            "inactive_fraction": counts[rules[j]][j] / size,
            "l2_norm": _f(_sqrt(sq)),
            "top_k": [{"unit": u, "value": v} for u, v in zip(units, tops, strict=True)],
        }
        out.append([row])
    return out


def _inactive_counts(x, bounds: list[int], activations, rules) -> np.ndarray:
    """(n, layers) inactive values per instance and layer, one mask per distinct rule.
    ``count_nonzero`` of each slice is several times faster than a segmented sum (which
    casts every flag to int64) unless the slices are small."""
    distinct = dict(zip(rules, activations, strict=True))
    masks = {rule: inactive_mask(x, act) for rule, act in distinct.items()}
    if x.size >= SLICE_VALUES * len(x) * len(rules):
        spans = list(zip(rules, bounds, bounds[1:], strict=False))
        return np.array(
            [[np.count_nonzero(masks[r][i, a:b]) for r, a, b in spans] for i in range(len(x))]
        )
    offsets = bounds[:-1]
    counts = {r: np.add.reduceat(m, offsets, axis=1, dtype=np.int64) for r, m in masks.items()}
    if len(counts) == 1:
        return counts[rules[0]]
    return np.stack([counts[rule][:, j] for j, rule in enumerate(rules)], axis=1)


def _top_units(layers: list[np.ndarray], top_k: int) -> list[tuple[list, list]]:
    """Per layer ``([[unit, ...] per instance], [[activity, ...] per instance])`` of the
    ``top_k`` most active units. Layers of up to ``FULL_SORT_UNITS`` units share ONE stable
    argsort: their negated activities sit in a table padded with NaN, which a stable sort
    puts after every real unit (real NaNs included: they come first by index), so each
    layer's first k are exactly its own stable argsort's."""
    n = len(layers[0])
    small = [j for j, v in enumerate(layers) if v.shape[-1] <= FULL_SORT_UNITS]
    out: list = [None] * len(layers)
    if small:
        width = max(layers[j].shape[-1] for j in small)
        neg = np.full((len(small), n, width), np.nan)
        for row, j in zip(neg, small, strict=True):
            _negated_activity(layers[j], row[:, : layers[j].shape[-1]])
        k = min(top_k, width)
        units = np.argsort(neg, axis=2, kind="stable")[:, :, :k].tolist()
        values = _json_floats(-np.sort(neg, axis=2, kind="stable")[:, :, :k])
        for g, j in enumerate(small):
            kj = min(k, layers[j].shape[-1])
            out[j] = (units[g], values[g]) if kj == k else _first(units[g], values[g], kj)
    for j in set(range(len(layers))) - set(small):
        activity = -_negated_activity(layers[j], np.empty((n, layers[j].shape[-1])))
        order = top_k_units(activity, min(top_k, activity.shape[1]))
        out[j] = (order.tolist(), _json_floats(activity[np.arange(n)[:, None], order]))
    return out


def _negated_activity(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """-(unit activity) written into ``out`` (n, units); conv units are averaged over space."""
    if values.ndim <= 2:
        return np.negative(values.reshape(len(values), -1), out=out)
    per_unit = values.reshape(len(values), -1, values.shape[-1])
    np.einsum("ijk->ik", per_unit, out=out)
    return np.divide(out, -per_unit.shape[1], out=out)


def _first(units: list, values: list, k: int) -> tuple[list, list]:
    return [u[:k] for u in units], [v[:k] for v in values]


def _stat_dicts(mean, std, lo, hi, inactive, l2, units, tops) -> list[dict]:
    """One layer's per-instance statistics from per-instance columns (Python lists)."""
    return [
        {
            "mean": m,
            "std": s,
            "min": a,
            "max": b,
            "inactive_fraction": f,
            "l2_norm": norm,
            "top_k": [{"unit": j, "value": v} for j, v in zip(us, vs, strict=True)],
        }
        for m, s, a, b, f, norm, us, vs in zip(
            mean, std, lo, hi, inactive, l2, units, tops, strict=True
        )
    ]


class UnitAccumulator:
    """Per-unit reference statistics of one layer, fed batch by batch (N_b, ..., units):
    count, mean and sum of squared deviations merged with Chan et al.'s parallel update
    (each batch two-pass in float64), min, max and on how many samples each unit is active.
    Memory: a few vectors of ``units``, whatever the number of samples."""

    def __init__(self, activation: str | None):
        self.activation = activation
        self.samples = 0
        self.count = 0  # values per unit seen (samples x positions)
        self.mean = self.m2 = self.lo = self.hi = self.active = None

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        n = values.shape[0]
        units = values.shape[-1] if values.ndim > 1 else 1
        flat = values.reshape(n, -1, units)  # no float64 copy: accumulate in float64 instead
        if not n:
            return
        count = n * flat.shape[1]
        mean = flat.mean(axis=(0, 1), dtype=np.float64)
        m2 = np.square(flat - mean, dtype=np.float64).sum(axis=(0, 1))
        active = (~inactive_mask(flat, self.activation)).any(axis=1).sum(axis=0)
        lo, hi = flat.min(axis=(0, 1)), flat.max(axis=(0, 1))
        if self.mean is None:
            self.mean, self.m2, self.lo, self.hi, self.active = mean, m2, lo, hi, active
        else:
            total = self.count + count
            delta = mean - self.mean
            self.mean = self.mean + delta * (count / total)
            self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
            self.active = self.active + active
        self.samples += n
        self.count += count

    def result(self) -> dict:
        if self.mean is None:
            raise ValueError("no reference values were added")
        units = len(self.mean)
        active_fraction = self.active / self.samples
        dead = np.flatnonzero(active_fraction == 0)
        return {
            "samples": int(self.samples),
            "units": int(units),
            "inactive_rule": inactive_rule(self.activation),
            "dead_fraction": _f(len(dead) / units) if units else 0.0,
            "dead_units": [int(j) for j in dead],
            "per_unit": {
                "mean": [_f(v) for v in self.mean],
                "std": [_f(v) for v in np.sqrt(self.m2 / self.count)],
                "min": [_f(v) for v in self.lo],
                "max": [_f(v) for v in self.hi],
                "active_fraction": [_f(v) for v in active_fraction],
            },
        }


def reference_unit_stats(values: np.ndarray, activation: str | None) -> dict:
    """Per-unit statistics of one layer over a reference batch ``values`` (N, ..., units):
    units are the last axis, every other axis (samples, time steps, positions) is reduced."""
    acc = UnitAccumulator(activation)
    acc.add(values)
    return acc.result()


ActivationsFn = Callable[[np.ndarray, Sequence[str]], dict]


def batch_rows(x) -> int:
    """Rows of a batch: an array, or a mapping / list with one array per model input."""
    if isinstance(x, dict):
        return len(next(iter(x.values()))) if x else 0
    if isinstance(x, (list, tuple)):
        return len(x[0]) if x else 0
    return len(x)


def take_rows(x, start: int, stop: int):
    """Rows ``start:stop`` of a batch of any of the ``batch_rows`` forms."""
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [v[start:stop] for v in x]
    return x[start:stop]


def compute_reference_stats(
    activations: ActivationsFn,
    x,
    layers: Sequence[str],
    activation_of: dict[str, str | None],
    batch_size: int = 64,
) -> dict[str, dict]:
    """Reference statistics of ``layers``: one multi-output pass per batch of ``x`` (an
    array, or one array per model input), accumulated per unit (``UnitAccumulator``), so
    the memory held is one batch of activations whatever the sample size."""
    accumulators = {name: UnitAccumulator(activation_of.get(name)) for name in layers}
    n = batch_rows(x)
    for start in range(0, n, batch_size):
        got = activations(take_rows(x, start, start + batch_size), list(layers))
        for name in layers:
            accumulators[name].add(np.asarray(got[name]))
    return {name: acc.result() for name, acc in accumulators.items()}


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
