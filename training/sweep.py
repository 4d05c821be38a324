"""Depth x width x activation sweeps of one model's hidden layers.

Each variant keeps the base config (data, recipe, preprocessing) and the feature-extracting
prefix of its hidden layers (everything up to the last flatten / global pool, so a CNN keeps
its convolutions), and replaces the dense head. Variants are trained on the same split as
the base model and compared on the validation metric only (the test split stays untouched
for the final model). A variant whose train metric exceeds its validation metric by more than
``overfit_gap`` is flagged. Variants are published as versions only when asked.
"""

from __future__ import annotations

import csv
import datetime as _dt
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training.config import ACTIVATIONS, ConfigError, ModelConfig, load_config

PREFIX_END_KINDS = ("flatten", "global_avg_pool", "global_max_pool")
ENV_SWEEPS_DIR = "LAYERSCOPE_SWEEPS_DIR"


@dataclass
class SweepResult:
    rows: list[dict]
    out_dir: Path
    metric: str
    table_md: Path
    table_csv: Path
    plot: Path


def feature_prefix(hidden: list[dict]) -> list[dict]:
    """The base layers a variant keeps: up to and including the last flatten/global pool."""
    last = max((i for i, s in enumerate(hidden) if s["kind"] in PREFIX_END_KINDS), default=-1)
    return [dict(s) for s in hidden[: last + 1]]


def grid_variants(config: ModelConfig, depths: Sequence[int], widths: Sequence[int],
                  activations: Sequence[str], dropout: float | None = None) -> list[dict]:
    """Every depth x width x activation head on the base config's feature prefix."""
    for path, values, check in (("depths", depths, lambda v: isinstance(v, int) and v >= 0),
                                ("widths", widths, lambda v: isinstance(v, int) and v >= 1),
                                ("activations", activations, lambda v: v in ACTIVATIONS)):
        if not values:
            raise ConfigError(f"sweep.{path}", "expected at least one value. Received: []")
        for v in values:
            if not check(v):
                allowed = ("one of " + ", ".join(ACTIVATIONS) if path == "activations"
                           else "an integer >= " + ("0" if path == "depths" else "1"))
                raise ConfigError(f"sweep.{path}", f"expected {allowed}. Received: {v!r}")
    prefix = feature_prefix(config["hidden"])
    variants, seen = [], set()
    for depth, width, act in itertools.product(depths, widths, activations):
        key = (depth, width if depth else 0, act if depth else "")
        if key in seen:  # depth 0 is the same model for every width and activation
            continue
        seen.add(key)
        head: list[dict] = []
        for _ in range(depth):
            head.append({"kind": "dense", "units": width, "activation": act})
            if dropout:
                head.append({"kind": "dropout", "rate": dropout})
        label = f"d{depth}" + (f"-w{width}-{act}" if depth else "")
        variants.append({"label": label, "depth": depth, "width": width if depth else None,
                         "activation": act if depth else None,
                         "hidden": _strip_names(prefix) + head})
    return variants


def _strip_names(layers: list[dict]) -> list[dict]:
    """Prefix layers with their generated names removed (so numbering stays consistent)."""
    out = []
    for spec in layers:
        s = dict(spec)
        if s.get("name", "").startswith(f"{s['kind']}_"):
            s.pop("name")
        out.append(s)
    return out


def load_variants(path: str | os.PathLike) -> list[dict]:
    """Variants from a YAML list of ``{label, hidden: [...]}`` (full hidden lists)."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, list) or not raw:
        raise ConfigError("variants", f"expected a non-empty list of {{label, hidden}} in "
                                      f"{path}. Received: {type(raw).__name__}")
    out = []
    for i, v in enumerate(raw):
        if not isinstance(v, dict) or "hidden" not in v:
            raise ConfigError(f"variants[{i}]", f"expected a mapping with 'hidden'. "
                                                f"Received: {v!r}")
        hidden = v["hidden"]
        dense = [s for s in hidden if isinstance(s, dict) and s.get("kind") == "dense"]
        out.append({"label": str(v.get("label", f"v{i + 1}")), "depth": len(dense),
                    "width": dense[0].get("units") if dense else None,
                    "activation": dense[0].get("activation", "relu") if dense else None,
                    "hidden": hidden})
    return out


def sweep_metric(config: ModelConfig) -> str:
    return "pr_auc" if config.is_binary else "accuracy"


def run_sweep(config: str | os.PathLike | dict | ModelConfig, variants: list[dict], *,
              out_dir: str | os.PathLike | None = None,
              models_root: str | os.PathLike | None = None,
              data_dir: str | os.PathLike | None = None,
              overrides: dict[str, Any] | None = None,
              publish: bool = False, overfit_gap: float = 0.05,
              log: Callable[[str], None] | None = None) -> SweepResult:
    """Train each variant, write ``sweep.md``, ``sweep.csv`` and ``sweep.png`` to ``out_dir``.

    Every variant config is validated before the first one trains.
    """
    import keras

    from training import plots
    from training import train as train_mod

    log = log or (lambda _msg: None)
    base = load_config(config, overrides)
    if not 0.0 <= overfit_gap <= 1.0:
        raise ConfigError("sweep.overfit_gap", f"expected a number in [0, 1]. "
                                               f"Received: overfit_gap={overfit_gap}")
    raw = base.get_config()
    configs = []
    for i, v in enumerate(variants):
        try:
            configs.append(ModelConfig.from_config({**raw, "hidden": v["hidden"]}))
        except ConfigError as exc:
            raise ConfigError(f"variants[{i}] ({v['label']}).{exc.path}",
                              str(exc).split(": ", 1)[-1]) from exc
    model_root = train_mod.default_model_root(config, base.name, models_root)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if out_dir is None:  # beside the project's models/, git-ignored (/sweeps/)
        out_dir = Path(os.environ.get(ENV_SWEEPS_DIR, "sweeps")) / base.name / stamp
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = sweep_metric(base)
    rows: list[dict] = []
    for i, (v, cfg) in enumerate(zip(variants, configs, strict=True)):
        log(f"[sweep] variant {i + 1}/{len(variants)}: {v['label']}")
        keras.backend.clear_session()  # free the previous variant's graph and functions
        started = time.perf_counter()
        result = train_mod.run_training(cfg, data_dir=data_dir, log=log,
                                        baseline=publish and base.is_binary)
        tr = result.metrics["train"][metric]
        va = result.metrics["validation"][metric]
        gap = None if tr is None or va is None else tr - va
        row = {
            "label": v["label"], "depth": v["depth"], "width": v["width"],
            "activation": v["activation"],
            "params": int(sum(int(w.numpy().size) for w in result.model.trainable_weights)),
            "epochs": result.epochs_run,
            f"train_{metric}": _r(tr), f"val_{metric}": _r(va),
            "val_loss": _r(min(result.history.get("val_loss", [float("nan")]))),
            "gap": _r(gap), "overfit": bool(gap is not None and gap > overfit_gap),
            "seconds": round(time.perf_counter() - started, 1),
            "synthetic": bool(result.dataset.synthetic), "version": None,
        }
        if publish:
            row["version"] = int(train_mod.publish(result, model_root).name)
        rows.append(row)
        log(f"[sweep] {v['label']}: params={row['params']} train_{metric}={row[f'train_{metric}']}"
            f" val_{metric}={row[f'val_{metric}']} gap={row['gap']}"
            f"{' OVERFIT' if row['overfit'] else ''}")
    md, csv_path, png = out / "sweep.md", out / "sweep.csv", out / "sweep.png"
    _write_csv(rows, csv_path)
    md.write_text(_markdown(rows, base, metric, overfit_gap))
    plots.plot_sweep(rows, png, f"val_{metric}")
    return SweepResult(rows, out, metric, md, csv_path, png)


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _markdown(rows: list[dict], base: ModelConfig, metric: str, gap: float) -> str:
    cols = list(rows[0])
    best = max(rows, key=lambda r: r[f"val_{metric}"] or -1.0)
    lines = [f"# Sweep of `{base.name}` ({base['dataset']['name']}"
             f"{', SYNTHETIC data' if rows[0]['synthetic'] else ''})", "",
             f"Validation {metric} per variant; `overfit` = train {metric} exceeds validation "
             f"by more than {gap}. Best on validation: **{best['label']}**.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = ["" if r[c] is None else ("**yes**" if r[c] is True else "no"
                                          if r[c] is False else str(r[c])) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
