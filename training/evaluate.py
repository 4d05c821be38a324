"""Evaluation metrics, decision-threshold choice and the gradient-boosting baseline.

Every function returns plain JSON-serialisable Python (float, int, str, None, lists,
dicts) so results go straight into ``metadata.json``.  A metric that is undefined for
the data (e.g. ROC-AUC with a single class present) is ``None``.

Decision rule everywhere: an example is predicted positive when ``p_pos >= threshold``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

OBJECTIVES = ("best_f1", "recall_at_precision", "precision_at_recall")


class ThresholdUnreachable(ValueError):
    """The objective's constraint cannot be met on the given (validation) data."""


# --------------------------------------------------------------------------- input checks


def _as_labels(y_true: Any, n_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError("labels must be integers")
    y = y.astype(np.int64)
    if n_classes is not None and y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be in 0..{n_classes - 1}, got values "
                         f"{sorted(set(np.unique(y).tolist()) - set(range(n_classes)))}")
    return y


def _as_binary(y_true: Any, p_pos: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true, 2)
    p = np.asarray(p_pos, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:    # keras (n, 1) sigmoid output
        p = p[:, 0]
    if p.ndim != 1:
        raise ValueError(f"p_pos must be 1-D (or (n, 1)), got shape {p.shape}")
    if len(p) != len(y):
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    if len(y) == 0:
        raise ValueError("no examples")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("p_pos must be finite probabilities in [0, 1]")
    return y, p


def _objective_text(objective: Any) -> str:
    try:
        return json.dumps(objective, sort_keys=True)
    except (TypeError, ValueError):
        return repr(objective)


# --------------------------------------------------------------------------- threshold


def _operating_points(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """One point per distinct score s (descending): predict positive when p >= s.

    ``cut`` is the threshold returned for that point: the midpoint between s and the
    next lower distinct score (0 below the lowest), so that it sits in the gap the
    validation data leaves rather than on a validation score."""
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1]
    score = ps[last]
    next_lower = np.r_[score[1:], 0.0]
    tp, fp = tp[last].astype(np.float64), fp[last].astype(np.float64)
    positives = float(ys.sum())
    precision = tp / (tp + fp)
    recall = tp / positives if positives else np.zeros_like(tp)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return {"score": score, "cut": (score + next_lower) / 2.0, "precision": precision,
            "recall": recall, "f1": f1}


def choose_threshold(y_true: Any, p_pos: Any, objective: dict) -> float:
    """The decision threshold on ``p_pos`` meeting ``objective``; call it on VALIDATION data.

    Objectives (dicts, as in ``model.yaml``):

    - ``{"objective": "best_f1"}``: the highest F1.
    - ``{"objective": "recall_at_precision", "min_precision": 0.9}``: the highest recall
      whose precision is >= min_precision (ties: the higher precision).
    - ``{"objective": "precision_at_recall", "min_recall": 0.8}``: the highest precision
      whose recall is >= min_recall (ties: the higher recall).

    Remaining ties go to the higher threshold.  The threshold returned lies midway
    between the lowest score predicted positive and the next lower score (0 below the
    lowest), so ``p >= threshold`` reproduces the chosen operating point exactly.

    Raises ``ValueError`` quoting the objective when it is unknown, malformed, or there
    are no positive examples; :class:`ThresholdUnreachable` (a ``ValueError``) when no
    threshold meets the constraint (recall_at_precision: even the single top-scored
    example misses min_precision).  Fallback: an objective may name one,
    ``{"objective": "recall_at_precision", "min_precision": 0.9, "fallback": "best_f1"}``
    (a name or a full objective dict), used only when the constraint is unreachable;
    without it the caller decides (typically: retry with ``{"objective": "best_f1"}``
    and record that it did).
    """
    return _choose(y_true, p_pos, objective)[0]


def _choose(y_true: Any, p_pos: Any, objective: dict) -> tuple[float, dict]:
    """(threshold, objective actually used)."""
    text = _objective_text(objective)
    if not isinstance(objective, dict) or objective.get("objective") not in OBJECTIVES:
        raise ValueError(f"unknown threshold objective {text}; allowed: "
                         + ", ".join(OBJECTIVES))
    kind = objective["objective"]
    y, p = _as_binary(y_true, p_pos)
    if not y.any():
        raise ValueError(f"threshold objective {text}: the data has no positive examples")
    pts = _operating_points(y, p)
    idx = np.arange(len(pts["cut"]))

    if kind == "best_f1":
        i = int(np.argmax(pts["f1"]))
    elif kind == "recall_at_precision":
        mp = _fraction(objective, "min_precision", text)
        ok = idx[pts["precision"] >= mp - 1e-12]
        if not len(ok):
            fallback = objective.get("fallback")
            best = float(pts["precision"].max())
            if fallback:
                fb = fallback if isinstance(fallback, dict) else {"objective": fallback}
                if fb.get("objective") == kind:
                    raise ValueError(f"threshold objective {text}: fallback repeats the objective")
                return _choose(y, p, fb)
            raise ThresholdUnreachable(
                f"threshold objective {text} is unreachable on this data: the highest "
                f"precision at any threshold is {best:.4f} < min_precision {mp}; lower "
                f"min_precision or use {{\"objective\": \"best_f1\"}}")
        best_recall = pts["recall"][ok].max()
        i = int(ok[pts["recall"][ok] >= best_recall][0])   # earliest = higher precision
    else:
        mr = _fraction(objective, "min_recall", text)
        ok = idx[pts["recall"] >= mr - 1e-12]     # never empty: the last point has recall 1
        keys = np.lexsort((-ok, pts["recall"][ok], pts["precision"][ok]))
        i = int(ok[keys[-1]])
    return float(pts["cut"][i]), dict(objective)


def _fraction(objective: dict, key: str, text: str) -> float:
    value = objective.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"threshold objective {text}: {key} must be a number in (0, 1], "
                         f"got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- metrics


def binary_metrics(y_true: Any, p_pos: Any, threshold: float) -> dict:
    """PR-AUC (average precision), ROC-AUC, and precision / recall / F1 / accuracy at
    ``threshold`` (positive when p >= threshold), the threshold, the class counts and the
    confusion counts ``{"tn", "fp", "fn", "tp"}``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, p = _as_binary(y_true, p_pos)
    t = float(threshold)
    pred = (p >= t).astype(np.int64)
    tp = int(np.sum((pred == 1) & (y == 1)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    tn = int(np.sum((pred == 0) & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = 0 < y.sum() < len(y)
    return {
        "pr_auc": float(average_precision_score(y, p)) if y.any() else None,
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "accuracy": float((tp + tn) / len(y)),
        "threshold": t,
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def multiclass_metrics(y_true: Any, probs: Any, class_names: Sequence[str]) -> dict:
    """Accuracy, per-class accuracy (recall of each true class; ``None`` for a class with
    no examples), per-class support and the confusion matrix (rows = true class,
    columns = predicted) from ``probs`` of shape (n, len(class_names))."""
    names = [str(c) for c in class_names]
    k = len(names)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probs must have shape (n, {k}) for {k} classes, got {probs.shape}")
    y = _as_labels(y_true, k)
    if len(y) != len(probs):
        raise ValueError(f"{len(y)} labels but {len(probs)} rows of probabilities")
    if len(y) == 0:
        raise ValueError("no examples")
    pred = probs.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    support = cm.sum(axis=1)
    per_class = {name: (float(cm[i, i] / support[i]) if support[i] else None)
                 for i, name in enumerate(names)}
    return {
        "accuracy": float(np.trace(cm) / len(y)),
        "per_class_accuracy": per_class,
        "support": {name: int(support[i]) for i, name in enumerate(names)},
        "confusion_matrix": cm.tolist(),
    }


# --------------------------------------------------------------------------- baseline


def gradient_boosting_baseline(x_train: Any, y_train: Any, x_val: Any, y_val: Any,
                               x_test: Any, y_test: Any, *, objective: dict, seed: int,
                               return_probabilities: bool = False,
                               n_threads: int | None = None) -> dict:
    """scikit-learn ``HistGradientBoostingClassifier(class_weight="balanced",
    random_state=seed)`` fitted on the training split, threshold chosen on the validation
    split with the same ``objective`` (a ``fallback`` in it is honoured; the objective
    used is reported), metrics on validation and test.

    ``n_threads``: OpenMP threads for the fit; default 1 below 100,000 training rows
    (on this 2-core machine a 1,800-row fit took 1.2 s on one thread and 10 s on two
    while another process was busy: OpenMP's spinning barriers fight for the cores, and
    small fits gain nothing from them), else every core.

    ``return_probabilities=True`` adds ``p_validation`` / ``p_test`` numpy arrays (for
    plots); pop them before serialising, everything else is JSON-ready."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    x_train = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    y_train = _as_labels(y_train, 2)
    if n_threads is None:
        n_threads = 1 if len(x_train) < 100_000 else (os.cpu_count() or 1)
    model = HistGradientBoostingClassifier(class_weight="balanced", random_state=seed)
    started = time.perf_counter()
    with threadpool_limits(limits=int(n_threads), user_api="openmp"):
        model.fit(x_train, y_train)
    seconds = time.perf_counter() - started

    def positive_proba(x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        return model.predict_proba(x)[:, list(model.classes_).index(1)]

    p_val, p_test = positive_proba(x_val), positive_proba(x_test)
    threshold, used = _choose(y_val, p_val, objective)
    params = {k: v for k, v in model.get_params().items()
              if v is None or isinstance(v, (bool, int, float, str))}
    out = {
        "model": "HistGradientBoostingClassifier",
        "params": params,
        "n_iter": int(model.n_iter_),
        "objective": used,
        "threshold": float(threshold),
        "validation": binary_metrics(y_val, p_val, threshold),
        "test": binary_metrics(y_test, p_test, threshold),
        "fit_seconds": round(seconds, 3),
        "n_threads": int(n_threads),
    }
    if return_probabilities:
        out["p_validation"] = p_val
        out["p_test"] = p_test
    return out
