"""What each hidden layer learned, over a version's reference sample.

* **Linear probes** (Alain & Bengio, 2016): per hidden layer, and for the raw input as a
  baseline, a linear model fitted on the layer's activations with stratified k-fold
  cross-validation (``StratifiedKFold(folds, shuffle=True, random_state=0)``):
  ``make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))`` scored by
  accuracy for classification (C=0.1: on 1,000 reference rows the default C=1 overfits a 128-unit
  layer; fashion's last hidden layer 0.913 -> 0.926 against the model's own 0.945), and
  ``make_pipeline(StandardScaler(), Ridge(alpha=1.0))`` scored by R²
  (``KFold``) for regression. A layer's features are its activations flattened per sample.
* **Unit atlas**: the reference samples that activate unit k the most; a unit is the last
  axis (a channel of a feature map, a hidden unit of a recurrent state), its activation on a
  sample the mean (default) or max over every other axis.
* **Projections**: PCA of a layer's features to 2-D (centred, SVD), coloured by label.
* **Linear CKA** (Kornblith et al., 2019) between layers:
  ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred X (n x p), Y (n x q).

Limits: at most ``max_rows`` reference rows; a layer with more than ``max_units`` features
is projected to ``max_units`` by a seeded sparse random sign projection (a count sketch:
every feature is added, with a random sign, to one of ``max_units`` buckets; inner products
are preserved in expectation), and every answer says which layers were."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

CHUNK_VALUES = 4_000_000  # activation values held per forward pass while reducing


@dataclass
class Features:
    """Per layer: (n, <= max_units) float64 features, and which layers were sketched."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    sketched: dict[str, int] = field(default_factory=dict)  # layer -> original width


class Sketch:
    """A seeded count sketch from ``width`` features to ``units`` (one per layer)."""

    def __init__(self, width: int, units: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.units = units
        self.bucket = rng.integers(0, units, size=width)
        self.sign = rng.choice(np.array([-1.0, 1.0]), size=width)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1) * self.sign
        out = np.zeros((len(rows), self.units))
        for i, row in enumerate(rows):
            out[i] = np.bincount(self.bucket, weights=row, minlength=self.units)
        return out


def chunk_rows(row_values: int) -> int:
    """Rows per forward pass so that at most ``CHUNK_VALUES`` activation values are held."""
    return max(1, min(256, CHUNK_VALUES // max(1, row_values)))


def layer_features(
    activations: Callable[[object, Sequence[str]], dict],
    xs: list[np.ndarray],
    pack: Callable[[list[np.ndarray]], object],
    layers: Sequence[str],
    widths: dict[str, int],
    max_units: int,
) -> Features:
    """Flattened features of ``layers`` over the rows of ``xs`` (one array per input),
    computed in chunks (one forward pass each, every layer at once)."""
    n = len(xs[0])
    sketches = {
        name: Sketch(widths[name], max_units, seed=i)
        for i, name in enumerate(layers)
        if widths[name] > max_units
    }
    out = Features(sketched={name: widths[name] for name in sketches})
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    step = chunk_rows(sum(widths[name] for name in layers))
    for start in range(0, n, step):
        acts = activations(pack([x[start : start + step] for x in xs]), list(layers))
        for name in layers:
            values = np.asarray(acts[name], dtype=np.float64).reshape(len(acts[name]), -1)
            parts[name].append(sketches[name](values) if name in sketches else values)
    out.values = {name: np.concatenate(parts[name]) for name in layers}
    return out


def unit_activity(
    activations: Callable[[object, Sequence[str]], dict],
    xs: list[np.ndarray],
    pack: Callable[[list[np.ndarray]], object],
    layer: str,
    row_values: int,
    reduce: str = "mean",
) -> np.ndarray:
    """(n, units): each unit's activation per sample, the mean or max over every axis but
    the last (positions of a feature map, time steps of a sequence)."""
    parts = []
    step = chunk_rows(row_values)
    for start in range(0, len(xs[0]), step):
        values = np.asarray(
            activations(pack([x[start : start + step] for x in xs]), [layer])[layer]
        )
        parts.append(reduce_units(values, reduce))
    return np.concatenate(parts)


def reduce_units(values: np.ndarray, reduce: str = "mean") -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim <= 2:
        return values.reshape(len(values), -1)
    axes = tuple(range(1, values.ndim - 1))
    return values.max(axis=axes) if reduce == "max" else values.mean(axis=axes)


def top_samples(activity: np.ndarray, unit: int, n: int) -> tuple[list[int], list[float]]:
    """Indices of the ``n`` samples with the highest activity of ``unit`` (ties: lower
    index first) and those activities."""
    column = activity[:, unit]
    order = np.argsort(-column, kind="stable")[:n]
    return [int(i) for i in order], [float(column[i]) for i in order]


# -- probes ----------------------------------------------------------------------------------
def probe_estimator(task: str):
    """The probe scikit-learn fits (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "regression":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))


def probe_folds(task: str, y: np.ndarray, folds: int):
    from sklearn.model_selection import KFold, StratifiedKFold

    if task == "regression":
        return KFold(folds, shuffle=True, random_state=0)
    smallest = int(np.bincount(np.asarray(y, dtype=np.int64)).min(initial=folds))
    return StratifiedKFold(max(2, min(folds, smallest)), shuffle=True, random_state=0)


def probe(features: np.ndarray, y: np.ndarray, task: str, folds: int = 5) -> dict:
    """Cross-validated score of a linear probe on ``features``: mean, spread, per fold."""
    from sklearn.model_selection import cross_val_score

    scoring = "r2" if task == "regression" else "accuracy"
    cv = probe_folds(task, y, folds)
    scores = cross_val_score(probe_estimator(task), features, y, cv=cv, scoring=scoring)
    return {
        "metric": scoring,
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores)),
        "folds": [float(s) for s in scores],
    }


def probe_targets(y: np.ndarray | None, task: str) -> np.ndarray | None:
    """The labels a probe predicts: class indices (one-hot rows become indices), or a
    regression target's first column; None when there are no usable labels."""
    if y is None:
        return None
    y = np.asarray(y)
    if task == "regression":
        return y.reshape(len(y), -1)[:, 0].astype(np.float64) if y.size else None
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.number) or len(np.unique(y)) < 2:
        return None
    return y.astype(np.int64)


# -- projections -----------------------------------------------------------------------------
def pca_2d(features: np.ndarray) -> dict:
    """The features' first two principal components (coordinates per sample) and the share
    of variance each explains."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[1] == 0 or not np.any(x):
        zeros = np.zeros((len(x), 2))
        return {"points": zeros, "explained_variance_ratio": [0.0, 0.0]}
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(2, len(s))
    points = np.zeros((len(x), 2))
    points[:, :k] = u[:, :k] * s[:k]
    total = float((s**2).sum())
    ratio = [float(v) / total if total else 0.0 for v in (s[:2] ** 2)]
    return {"points": points, "explained_variance_ratio": ratio + [0.0] * (2 - len(ratio))}


# -- CKA -------------------------------------------------------------------------------------
def centred_gram(x: np.ndarray) -> np.ndarray:
    """Column-centred X times its transpose: (n, n), what linear CKA compares."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    x = x - x.mean(axis=0, keepdims=True)
    return x @ x.T


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n samples, in [0, 1]."""
    return cka_from_grams(centred_gram(x), centred_gram(y))


def cka_from_grams(kx: np.ndarray, ky: np.ndarray) -> float:
    """<Kx, Ky>_F / (||Kx||_F ||Ky||_F) with centred Grams: the same as the feature-space
    form ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    denominator = math.sqrt(float((kx * kx).sum()) * float((ky * ky).sum()))
    if denominator == 0.0:
        return 0.0
    return float(min(1.0, max(0.0, float((kx * ky).sum()) / denominator)))
