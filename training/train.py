"""Train one model from its ``model.yaml`` and publish it as a numbered version.

The steps: validate the config (before anything else), load the data set, split it
(stratified, fixed seed; the official test split for MNIST / Fashion-MNIST), build the
named model with normalisation adapted on the training split only, fit with early stopping
and class weights, pick the decision threshold on the validation split, measure validation
and test metrics (plus the gradient-boosting baseline for binary tasks), and publish
``model.keras``, ``history.json``, ``reference.npz``, plots and ``metadata.json`` through
:func:`training.publish.stage_version` so a failed run leaves no version behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.config import ConfigError, ModelConfig, load_config

REFERENCE_ROWS = 1000  # enough for 5-fold linear probes of every layer (service/api/understand.py)
ENV_MODELS_DIR = "LAYERSCOPE_MODELS_DIR"


@dataclass
class Splits:
    """Raw inputs (float32, as served) and int64 labels of each split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "validation": len(self.y_val),
                "test": len(self.y_test)}


@dataclass
class TrainResult:
    """Everything a run produced, before (or without) publishing."""

    config: ModelConfig
    model: Any
    history: dict[str, list[float]]
    splits: Splits
    dataset: Any
    metrics: dict[str, Any]
    threshold: float | None
    p_val: np.ndarray
    p_test: np.ndarray
    baseline_p_test: np.ndarray | None
    training_seconds: float
    epochs_run: int
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data


def load_data(cfg: ModelConfig, data_dir: str | os.PathLike | None = None):
    """The configured data set; synthetic transactions only when the config asks."""
    from training import data

    ds_cfg = cfg["dataset"]
    seed = cfg.training["seed"]
    if ds_cfg["synthetic"]:
        rows = min(ds_cfg["rows"], ds_cfg["limit"] or ds_cfg["rows"])
        return data.synthetic_transactions(rows, ds_cfg["fraud_rate"], seed)
    return data.load_dataset(ds_cfg["name"], data_dir=data_dir, limit=ds_cfg["limit"],
                             seed=seed)


def split_data(ds, cfg: ModelConfig) -> Splits:
    """Stratified train / validation / test with the config's seed.

    Fractions are of the whole data set; with an official test split the validation
    fraction is taken from the training pool and no test statistic is ever computed here.
    """
    from sklearn.model_selection import train_test_split

    t = cfg.training
    seed, val_frac, test_frac = t["seed"], t["validation_fraction"], t["test_fraction"]
    x = np.asarray(ds.x, dtype=np.float32)
    y = np.asarray(ds.y, dtype=np.int64)
    if ds.x_test is not None:
        x_test = np.asarray(ds.x_test, dtype=np.float32)
        y_test = np.asarray(ds.y_test, dtype=np.int64)
        x_train, x_val, y_train, y_val = train_test_split(
            x, y, test_size=val_frac, stratify=y, random_state=seed)
    else:
        x_rest, x_test, y_rest, y_test = train_test_split(
            x, y, test_size=test_frac, stratify=y, random_state=seed)
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=val_frac / (1.0 - test_frac), stratify=y_rest,
            random_state=seed)
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test)


def class_weights(cfg: ModelConfig, y_train: np.ndarray, n_classes: int) -> dict | None:
    """``balanced``: n / (k * count_c), from the training split only."""
    cw = cfg.training["class_weight"]
    if cw == "none":
        return None
    if cw == "balanced":
        counts = np.bincount(y_train, minlength=n_classes).astype(float)
        counts[counts == 0] = 1.0
        return {i: float(len(y_train) / (n_classes * c)) for i, c in enumerate(counts)}
    return {int(k): float(v) for k, v in cw.items()}


# --------------------------------------------------------------------------- the run


def _progress_callback(log: Callable[[str], None], name: str, epochs: int):
    """A Keras callback printing one line per epoch (the CLI's progress output)."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            parts = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items()
                             if isinstance(v, (int, float)))
            log(f"[{name}] epoch {epoch + 1}/{epochs} "
                f"({time.perf_counter() - self._t:.1f}s) {parts}")

    return Progress()


def _fit_inputs(ctx, cfg: ModelConfig, splits: Splits, n_classes: int) -> dict[str, Any]:
    """``model.fit`` data arguments.

    On TensorFlow alone: the arrays, Keras' shuffle and class weights (as before). On JAX
    (one process or N): :func:`training.distributed.batches`, the same global batches in
    the same (seed, epoch) order whatever N, each process feeding its share; class weights
    become the per-row sample weights Keras would derive from them; validation runs over
    every process's share with globally reduced metrics (identical logs on every process,
    so early stopping decides identically).
    """
    from training import distributed
    from training.builder import augmented, fit_labels

    t = cfg.training
    cw = class_weights(cfg, splits.y_train, n_classes)
    # one-hot targets under label smoothing; training.augment changes training batches only
    y_train, y_val = (fit_labels(cfg, y, n_classes) for y in (splits.y_train, splits.y_val))
    if ctx.backend != "jax" and not ctx.multi and not t["augment"]:
        return {"x": splits.x_train, "y": y_train,
                "validation_data": (splits.x_val, y_val), "batch_size": t["batch_size"],
                "class_weight": cw, "shuffle": True}
    sw = None
    if cw is not None:
        sw = np.asarray([cw[int(c)] for c in range(n_classes)], dtype=np.float32)[splits.y_train]
    share = {"global_batch": t["batch_size"], "process_id": ctx.process_id,
             "num_processes": ctx.num_processes}
    train = distributed.batches(splits.x_train, y_train, sw, shuffle=True, seed=t["seed"],
                                **share)
    return {"x": augmented(train, t["augment"], t["seed"]) if t["augment"] else train,
            "validation_data": distributed.batches(splits.x_val, y_val, **share),
            "shuffle": False}


def run_training(config: str | os.PathLike | dict | ModelConfig, *,
                 data_dir: str | os.PathLike | None = None,
                 overrides: dict[str, Any] | None = None,
                 callbacks: Sequence[Any] = (),
                 log: Callable[[str], None] | None = None,
                 baseline: bool = True) -> TrainResult:
    """Train and evaluate without publishing (``train`` publishes; sweeps may not)."""
    import keras

    from training import distributed, evaluate
    from training.builder import build_model, compile_model

    cfg = load_config(config, overrides)  # ConfigError before any data is touched
    log = log or (lambda _msg: None)
    t = cfg.training
    seed = t["seed"]
    ctx = distributed.context()  # joins the job in $KERAS_DISTRIBUTION_* (before any JAX op)
    if ctx.multi and t["batch_size"] % ctx.num_processes:
        raise ConfigError("training.batch_size", f"the global batch must be a multiple of "
                                                 f"the {ctx.num_processes} processes. "
                                                 f"Received: batch_size={t['batch_size']}")
    keras.utils.set_random_seed(seed)

    ds = load_data(cfg, data_dir)
    if ds.synthetic:
        log(f"[{cfg.name}] WARNING: training on SYNTHETIC data ({ds.name}, {len(ds.y)} rows)")
    kind = "tabular" if ds.x.ndim == 2 else "image"
    if kind != cfg["input"]:
        raise ValueError(f"data set {ds.name} is {kind} but the config says "
                         f"input={cfg['input']!r}")
    splits = split_data(ds, cfg)
    n_classes = len(ds.class_names)
    log(f"[{cfg.name}] data {ds.name}: train={len(splits.y_train)} "
        f"validation={len(splits.y_val)} test={len(splits.y_test)} "
        f"(source {ds.source}{', synthetic' if ds.synthetic else ''})")

    def build():
        m = build_model(cfg, input_shape=splits.x_train.shape[1:], num_classes=n_classes,
                        adapt_data=splits.x_train if cfg["input"] == "tabular" else None)
        return compile_model(m, cfg, steps_per_epoch=-(-len(splits.y_train) // t["batch_size"]))

    cbs: list[Any] = []
    es = t["early_stopping"]
    if es:
        cbs.append(keras.callbacks.EarlyStopping(
            monitor=es["monitor"], patience=es["patience"], mode=es["mode"],
            min_delta=es["min_delta"], restore_best_weights=es["restore_best_weights"]))
    cbs.append(_progress_callback(log, cfg.name, t["epochs"]))
    cbs.extend(callbacks)

    started = time.perf_counter()
    with ctx.scope():  # DataParallel over every process's devices, or nothing
        model = build()
        hist = model.fit(**_fit_inputs(ctx, cfg, splits, n_classes),
                         epochs=t["epochs"], callbacks=cbs, verbose=0)
    training_seconds = time.perf_counter() - started
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    epochs_run = len(next(iter(history.values()), []))
    extra = {"training": ctx.describe(t["batch_size"])}
    if ctx.multi:
        if not ctx.is_chief:  # the chief alone predicts, evaluates and publishes
            log(f"[{cfg.name}] process {ctx.process_id} of {ctx.num_processes} done "
                f"({epochs_run} epochs); the chief (process 0) evaluates and publishes")
            empty = np.zeros(0)
            return TrainResult(cfg, None, history, splits, ds, {}, None, empty, empty, None,
                               training_seconds, epochs_run, extra={**extra, "chief": False})
        model = distributed.local_copy(model, build, ctx)

    # One predict call over all splits: one trace instead of one per ragged last batch.
    cut = np.cumsum([len(splits.y_train), len(splits.y_val)])
    p_all = model.predict(np.concatenate([splits.x_train, splits.x_val, splits.x_test]),
                          batch_size=1024, verbose=0)
    p_train, p_val, p_test = np.split(np.asarray(p_all, dtype=np.float64), cut)
    metrics: dict[str, Any] = {}
    threshold = None
    baseline_p = None
    if cfg.is_binary:
        p_train, p_val, p_test = p_train[:, 0], p_val[:, 0], p_test[:, 0]
        objective = dict(cfg["threshold"])
        try:
            threshold = float(evaluate.choose_threshold(splits.y_val, p_val, objective))
        except evaluate.ThresholdUnreachable as exc:
            log(f"[{cfg.name}] {exc}; falling back to best_f1")
            objective = {"objective": "best_f1"}
            threshold = float(evaluate.choose_threshold(splits.y_val, p_val, objective))
        metrics["threshold_objective"] = objective
        # Train-split figures in inference mode (no dropout): the sweep's overfitting gap.
        metrics["train"] = evaluate.binary_metrics(splits.y_train, p_train, threshold)
        metrics["validation"] = evaluate.binary_metrics(splits.y_val, p_val, threshold)
        metrics["test"] = evaluate.binary_metrics(splits.y_test, p_test, threshold)
        metrics["baseline"] = None
        if baseline:
            log(f"[{cfg.name}] baseline: HistGradientBoostingClassifier on the same split")
            base = evaluate.gradient_boosting_baseline(
                splits.x_train, splits.y_train, splits.x_val, splits.y_val,
                splits.x_test, splits.y_test, objective={**objective, "fallback": "best_f1"},
                seed=seed, return_probabilities=True)
            baseline_p = base.pop("p_test")
            base.pop("p_validation", None)
            metrics["baseline"] = base
    else:
        metrics["train"] = evaluate.multiclass_metrics(splits.y_train, p_train,
                                                       ds.class_names)
        metrics["validation"] = evaluate.multiclass_metrics(splits.y_val, p_val,
                                                            ds.class_names)
        metrics["test"] = evaluate.multiclass_metrics(splits.y_test, p_test, ds.class_names)
        metrics["baseline"] = None
    return TrainResult(cfg, model, history, splits, ds, metrics, threshold, p_val, p_test,
                       baseline_p, training_seconds, epochs_run, extra={**extra, "chief": True})


# --------------------------------------------------------------------------- publishing


def _reference_sample(splits: Splits, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(splits.y_train)
    idx = np.sort(rng.choice(n, size=min(REFERENCE_ROWS, n), replace=False))
    return splits.x_train[idx].astype(np.float32), splits.y_train[idx]


def write_artifacts(result: TrainResult, folder: Path) -> None:
    """model.keras, history.json, reference.npz and plots into ``folder``."""
    from training import plots

    folder.mkdir(parents=True, exist_ok=True)
    result.model.save(folder / "model.keras")
    (folder / "history.json").write_text(json.dumps(result.history, indent=1) + "\n")
    x_ref, y_ref = _reference_sample(result.splits, result.config.training["seed"])
    np.savez(folder / "reference.npz", x=x_ref, y=y_ref)
    plot_dir = folder / "plots"
    plot_dir.mkdir(exist_ok=True)
    plots.plot_history(result.history, plot_dir / "training_curves.png")
    test = result.metrics["test"]
    if result.config.is_binary:
        c = test["confusion"]
        confusion = [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]
    else:
        confusion = test["confusion_matrix"]
    plots.plot_confusion(confusion, result.dataset.class_names,
                         plot_dir / "confusion_matrix.png")
    if result.config.is_binary:
        plots.plot_pr_curve(result.splits.y_test, result.p_test, result.threshold,
                            plot_dir / "pr_curve.png", baseline_p=result.baseline_p_test)


def _backend() -> str:
    import keras

    return keras.backend.backend()


def build_metadata(result: TrainResult) -> dict:
    """metadata.json per docs/DESIGN.md (files / version / created filled by publish)."""
    from training.publish import layer_table, library_versions

    cfg, ds = result.config, result.dataset
    shape = [int(d) for d in result.splits.x_train.shape[1:]]
    if cfg["input"] == "tabular":
        input_spec = {"kind": "tabular", "features": list(ds.feature_names or []),
                      "shape": shape, "dtype": "float32"}
    else:
        input_spec = {"kind": "image", "shape": shape, "dtype": "float32",
                      "value_range": [0, 255]}
    rows = len(ds.y) + (0 if ds.y_test is None else len(ds.y_test))
    return {
        "format_version": 1,
        "name": cfg.name,
        "task": cfg.task,
        "libraries": library_versions(),
        "training": result.extra.get("training") or {"backend": _backend(), "processes": 1},
        "config": cfg.get_config(),
        "dataset": {"name": ds.name, "path": ds.source, "sha256": ds.sha256,
                    "synthetic": bool(ds.synthetic), "rows": int(rows)},
        "splits": result.splits.sizes(),
        "metrics": result.metrics,
        "threshold": result.threshold,
        "class_names": list(ds.class_names),
        "input": input_spec,
        "output": {"activation": cfg["output"]["activation"],
                   "units": 1 if cfg.is_binary else len(ds.class_names)},
        "layers": layer_table(result.model),
        "training_seconds": round(result.training_seconds, 2),
        "epochs_run": result.epochs_run,
    }


def publish(result: TrainResult, model_root: str | os.PathLike) -> Path:
    """Stage every file and atomically rename it to the next integer version."""
    from training.publish import stage_version

    with stage_version(model_root, result.config.name) as staged:
        write_artifacts(result, staged.path)
        staged.metadata.update(build_metadata(result))
    return Path(staged.final_path)


def default_model_root(config_source: Any, name: str,
                       models_root: str | os.PathLike | None) -> Path:
    """``models_root/<name>``; else beside the model.yaml when it lives in ``<name>/``;
    else ``$LAYERSCOPE_MODELS_DIR/<name>`` or ``models/<name>``."""
    if models_root is not None:
        return Path(models_root) / name
    if isinstance(config_source, (str, os.PathLike)):
        p = Path(config_source)
        folder = p if p.is_dir() else p.parent
        if folder.name == name:
            return folder
    return Path(os.environ.get(ENV_MODELS_DIR, "models")) / name


def train(config: str | os.PathLike | dict | ModelConfig, *,
          models_root: str | os.PathLike | None = None,
          data_dir: str | os.PathLike | None = None,
          overrides: dict[str, Any] | None = None,
          callbacks: Sequence[Any] = (),
          log: Callable[[str], None] | None = None) -> Path | None:
    """Train, evaluate and publish one model; returns the published version folder
    (None on a data-parallel worker other than the chief, which alone publishes).

    ``callbacks`` are extra Keras callbacks run during ``fit`` (progress hooks, tests that
    interrupt a run).
    """
    cfg = load_config(config, overrides)
    result = run_training(cfg, data_dir=data_dir, callbacks=callbacks, log=log)
    if not result.extra.get("chief", True):
        return None
    return publish(result, default_model_root(config, cfg.name, models_root))


# --------------------------------------------------------------------------- re-evaluation


def resolve_version(path: str | os.PathLike) -> Path:
    """``models/<name>/<version>`` as given, or the newest complete version of
    ``models/<name>``."""
    from training.publish import METADATA_FILE, existing_versions

    p = Path(path)
    if (p / METADATA_FILE).is_file():
        return p
    versions = existing_versions(p)
    if not versions:
        raise FileNotFoundError(f"no published version under {p} (expected "
                                f"{p}/<version>/{METADATA_FILE}). Received: {path}")
    return p / str(versions[-1])


def evaluate_version(path: str | os.PathLike, *,
                     data_dir: str | os.PathLike | None = None) -> dict:
    """Reload a published version (checksum + safe_mode), rebuild its test split from the
    stored config and recompute the test metrics, next to the ones in metadata.json."""
    import keras

    from training import evaluate
    from training.publish import MODEL_FILE, sha256_file

    folder = resolve_version(path)
    meta = json.loads((folder / "metadata.json").read_text())
    want = meta["files"][MODEL_FILE]["sha256"]
    got = sha256_file(folder / MODEL_FILE)
    if got != want:
        raise ValueError(f"{folder / MODEL_FILE}: sha256 {got} does not match metadata "
                         f"{want}")
    model = keras.saving.load_model(folder / MODEL_FILE, safe_mode=True)
    cfg = load_config(meta["config"])
    ds = load_data(cfg, data_dir)
    if ds.sha256 != meta["dataset"]["sha256"]:
        raise ValueError(f"data set {ds.name} sha256 {ds.sha256} differs from the one the "
                         f"model was trained on ({meta['dataset']['sha256']})")
    splits = split_data(ds, cfg)
    p = np.asarray(model.predict(splits.x_test, batch_size=1024, verbose=0), dtype=np.float64)
    if cfg.is_binary:
        test = evaluate.binary_metrics(splits.y_test, p[:, 0], meta["threshold"])
        keys = ("pr_auc", "roc_auc", "precision", "recall", "f1", "accuracy")
    else:
        test = evaluate.multiclass_metrics(splits.y_test, p, meta["class_names"])
        keys = ("accuracy",)
    stored = meta["metrics"]["test"]
    return {"path": str(folder), "name": meta["name"], "version": meta["version"],
            "synthetic": meta["dataset"]["synthetic"], "n_test": len(splits.y_test),
            "recomputed": {k: test[k] for k in keys}, "stored": {k: stored[k] for k in keys},
            "max_abs_diff": max(abs((test[k] or 0.0) - (stored[k] or 0.0)) for k in keys)}
