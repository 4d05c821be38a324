"""Training plots as PNG files (matplotlib, Agg backend, no display needed).

Figures are built with the object-oriented ``matplotlib.figure.Figure`` API rather
than pyplot's global state, so nothing leaks between calls or threads.  Every function
creates the parent folders of ``path`` and writes one PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

_DPI = 100


def _save(fig: Figure, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight")


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def plot_history(history: dict[str, list[float]], path: str | os.PathLike) -> None:
    """One panel per quantity (loss first, then each metric): train and, when the
    history has ``val_<name>``, validation, against the epoch."""
    bases = [k for k in history if not k.startswith("val_")]
    bases += [k[4:] for k in history if k.startswith("val_") and k[4:] not in history]
    bases = sorted(bases, key=lambda k: k != "loss")  # stable: loss first, then as given
    bases = [b for b in bases if history.get(b) or history.get(f"val_{b}")]
    n = max(1, len(bases))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    if not bases:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "empty history", ha="center", va="center")
        ax.set_axis_off()
    for i, base in enumerate(bases):
        ax = fig.add_subplot(rows, cols, i + 1)
        for key, label, style in ((base, "train", "-o"), (f"val_{base}", "validation", "-s")):
            values = history.get(key)
            if values:
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, np.asarray(values, dtype=float), style, markersize=3, label=label)
        ax.set_title(_pretty(base))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(confusion: list[list[int]], class_names: Sequence[str],
                   path: str | os.PathLike) -> None:
    """Confusion matrix (rows = true class, columns = predicted) with counts written in
    the cells; colour = share of the true class's examples."""
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {k} class names")
    support = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)
    size = max(4.0, 0.6 * k + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels([str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticklabels([str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fontsize = 9 if k <= 10 else 7
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if share[i, j] > 0.5 else "black")
    total = cm.sum()
    acc = np.trace(cm) / total if total else float("nan")
    ax.set_title(f"confusion matrix (accuracy {acc:.4f}, n={total})")
    fig.tight_layout()
    _save(fig, path)


def plot_pr_curve(y_true: Any, p_pos: Any, threshold: float, path: str | os.PathLike,
                  baseline_p: Any = None) -> None:
    """Precision-recall curve with its average precision, the operating point at
    ``threshold`` marked, the no-skill line (prevalence) and, when ``baseline_p`` is
    given (probabilities on the same examples), the baseline's curve."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(p_pos, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    if not y.any():
        raise ValueError("a PR curve needs at least one positive example")
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    prec, rec, _ = precision_recall_curve(y, p)
    ax.step(rec, prec, where="post", label=f"model (AP {average_precision_score(y, p):.4f})")
    if baseline_p is not None:
        b = np.asarray(baseline_p, dtype=np.float64).ravel()
        if len(b) != len(y):
            raise ValueError(f"{len(y)} labels but {len(b)} baseline probabilities")
        bprec, brec, _ = precision_recall_curve(y, b)
        ax.step(brec, bprec, where="post", linestyle="--",
                label=f"baseline (AP {average_precision_score(y, b):.4f})")
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    op_precision = tp / int(pred.sum()) if pred.any() else 1.0
    op_recall = tp / int(y.sum())
    ax.plot([op_recall], [op_precision], "o", color="crimson", markersize=8,
            label=f"threshold {threshold:.3g}: P {op_precision:.3f}, R {op_recall:.3f}")
    prevalence = float(y.mean())
    ax.axhline(prevalence, color="grey", linestyle=":", label=f"no skill ({prevalence:.3f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"precision-recall (n={len(y)}, positives={int(y.sum())})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_sweep(rows: list[dict], path: str | os.PathLike, metric: str) -> None:
    """Validation ``metric`` against parameter count (log x) for sweep variants; rows
    flagged ``overfit`` are drawn as red crosses; each point carries its ``label``.
    Rows whose metric is missing or None (failed variants) are left out."""
    pts = [r for r in rows if r.get(metric) is not None and r.get("params") is not None]
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    for overfit, style in ((False, dict(marker="o", color="tab:blue", label="ok")),
                           (True, dict(marker="x", color="crimson", label="overfit",
                                       s=70, linewidths=2))):
        sel = [r for r in pts if bool(r.get("overfit")) is overfit]
        if sel:
            ax.scatter([max(1, int(r["params"])) for r in sel],
                       [float(r[metric]) for r in sel], **style)
    for r in pts:
        ax.annotate(str(r.get("label", "")), (max(1, int(r["params"])), float(r[metric])),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    if pts:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no rows with {metric!r}", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(f"sweep: {metric} vs parameter count")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
