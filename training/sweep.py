"""Depth x width x activation sweeps of one model's hidden layers, run by KerasTuner.

Each variant keeps the base config (data, recipe, preprocessing) and the feature-extracting
prefix of its hidden layers (everything up to the last flatten / global pool, so a CNN keeps
its convolutions), and replaces the dense head. Variants are trained on the same split as
the base model and compared on the validation metric only (the test split stays untouched
for the final model). A variant whose train metric exceeds its validation metric by more than
``overfit_gap`` is flagged. Variants are published as versions only when asked.

The variants are one KerasTuner hyperparameter (``variant``, a Choice of their labels, in
grid order) and a KerasTuner oracle picks them: grid (every variant once, in order),
random or bayesian (``max_trials`` of them). One process runs the oracle and trains every
trial itself; distributed (docs/sweeps.md), a chief serves the oracle over gRPC and the
workers (``KERASTUNER_TUNER_ID=tuner<k>``) ask it for trials, train them and report every
column of the table as the trial's metrics, so the chief writes the table, CSV and plot from
what its oracle knows: no shared file system is needed.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import itertools
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.config import ACTIVATIONS, ConfigError, ModelConfig, load_config

PREFIX_END_KINDS = ("flatten", "global_avg_pool", "global_max_pool")
ENV_SWEEPS_DIR = "LAYERSCOPE_SWEEPS_DIR"
SEARCHES = ("grid", "random", "bayesian")
HP_NAME = "variant"
# KerasTuner's own distribution contract, and ours on top of it (docs/sweeps.md)
ENV_TUNER_ID = "KERASTUNER_TUNER_ID"
ENV_ORACLE_IP = "KERASTUNER_ORACLE_IP"
ENV_ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
ENV_SWEEP_INDEX = "LAYERSCOPE_SWEEP_INDEX"  # 0 -> chief, k -> tuner<k-1>
ENV_JOB_INDEX = "JOB_COMPLETION_INDEX"  # a Kubernetes Indexed Job's, when the above is unset
ENV_SWEEP_BIND = "LAYERSCOPE_SWEEP_BIND"  # the chief's listening address (default all)
_TUNER_ID_RE = re.compile(r"^(chief|tuner[0-9]+)$")
_NONE = "__none"  # metric name suffix: this column of the row is None


@dataclass
class SweepResult:
    rows: list[dict]
    out_dir: Path
    metric: str
    table_md: Path
    table_csv: Path
    plot: Path
    failed: list[dict] = field(default_factory=list)  # {label, reason} of failed variants
    trials: int = 0  # trials the oracle created
    ran_by: dict[str, list[str]] = field(default_factory=dict)  # label -> tuner ids


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


def tuner_role(tuner_id: str | None = None, env: dict | None = None) -> str | None:
    """This process's part in a distributed sweep: ``"chief"``, ``"tuner<k>"``, or None
    (one process runs the whole sweep).

    ``tuner_id`` (``--tuner-id``) wins; else ``$KERASTUNER_TUNER_ID``; else, when
    ``$KERASTUNER_ORACLE_IP`` is set, the index ``$LAYERSCOPE_SWEEP_INDEX`` (or a Kubernetes
    Indexed Job's ``$JOB_COMPLETION_INDEX``): 0 is the chief, k is ``tuner<k-1>``."""
    env = os.environ if env is None else env
    source = "--tuner-id"
    if tuner_id is None and env.get(ENV_TUNER_ID):
        tuner_id, source = env[ENV_TUNER_ID], ENV_TUNER_ID
    if tuner_id is None and env.get(ENV_ORACLE_IP):
        for name in (ENV_SWEEP_INDEX, ENV_JOB_INDEX):
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            if not raw.isdigit():
                raise ConfigError(name, f"expected an index >= 0 (0 = the chief, k = "
                                        f"tuner<k-1>). Received: {name}={raw!r}")
            index = int(raw)
            return "chief" if index == 0 else f"tuner{index - 1}"
    if tuner_id is None:
        return None
    if not _TUNER_ID_RE.match(tuner_id):
        raise ConfigError(source, f"expected 'chief' or 'tuner<k>' (k = 0, 1, ...). "
                                  f"Received: {tuner_id!r}")
    return tuner_id


def _oracle_address(env: dict | None = None) -> tuple[str, int]:
    env = os.environ if env is None else env
    ip, port = env.get(ENV_ORACLE_IP), env.get(ENV_ORACLE_PORT)
    if not ip:
        raise ConfigError(ENV_ORACLE_IP, "a distributed sweep needs the chief's address "
                                         f"(host name or IP). Received: {ENV_ORACLE_IP}={ip!r}")
    if not (port or "").isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(ENV_ORACLE_PORT, f"expected a port in [1, 65535]. "
                                           f"Received: {ENV_ORACLE_PORT}={port!r}")
    return ip, int(port)


def check_search(search: str, max_trials: int | None, n_variants: int) -> int:
    """The oracle's trial budget: every variant for a grid unless ``max_trials`` is less."""
    if search not in SEARCHES:
        raise ConfigError("--search", f"expected one of {', '.join(SEARCHES)}. "
                                      f"Received: search={search!r}")
    if max_trials is None:
        return n_variants
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or not (
            1 <= max_trials <= n_variants):
        raise ConfigError("--max-trials", f"expected an integer in [1, {n_variants}] (the "
                                          f"number of variants). Received: "
                                          f"max_trials={max_trials!r}")
    return max_trials


def make_oracle(search: str, labels: Sequence[str], metric: str, max_trials: int, *,
                seed: int | None = None, retries: int = 1):
    """A KerasTuner oracle over one hyperparameter, ``variant`` (a Choice of the labels).

    A trial that raises is retried ``retries`` times (on any worker), then marked FAILED;
    failed trials never stop the search (they are reported, not dropped)."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Choice(HP_NAME, list(labels), default=labels[0])
    common = dict(objective=kt.Objective(f"val_{metric}", direction="max"),
                  max_trials=max_trials, hyperparameters=hp, seed=seed,
                  tune_new_entries=False, allow_new_entries=False,
                  max_retries_per_trial=retries,
                  max_consecutive_failed_trials=len(labels) * (retries + 1) + 1)
    if search == "grid":
        oracle = kt.oracles.GridSearchOracle(**common)
    elif search == "random":
        oracle = kt.oracles.RandomSearchOracle(**common)
    else:
        oracle = _bayesian_class(kt)(**common)
    # random draws repeat: allow enough of them to reach every variant of a small grid
    oracle._max_collisions = max(oracle._max_collisions, 50 * len(labels))
    oracle.verbose = 0  # our own log lines, not KerasTuner's tables
    oracle.owners = {}  # trial id -> the tuner ids it was handed to (a retry: several)
    create_trial = oracle.create_trial

    def create_and_record(tuner_id):
        trial = create_trial(tuner_id)
        if trial.status == "RUNNING":
            owners = oracle.owners.setdefault(trial.trial_id, [])
            if not owners or owners[-1] != tuner_id:
                owners.append(tuner_id)
        return trial

    oracle.create_trial = create_and_record
    return oracle


def _bayesian_class(kt):
    class BayesianOncePerVariant(kt.oracles.BayesianOptimizationOracle):
        """KerasTuner's Bayesian oracle may propose a value it has tried (the optimum of
        its acquisition function); a variant is trained once, so it then draws an untried
        one at random (or stops when none is left)."""

        def populate_space(self, trial_id):
            response = super().populate_space(trial_id)
            values = response.get("values")
            if values and self._compute_values_hash(values) in self._tried_so_far:
                return self._random_populate_space()
            return response

    return BayesianOncePerVariant


def _sweep_tuner_class():
    from keras_tuner.src import errors as kt_errors
    from keras_tuner.src.engine import base_tuner
    from keras_tuner.src.engine import trial as trial_module

    class SweepTuner(base_tuner.BaseTuner):
        """Asks the oracle (local, or the chief's over gRPC) for trials until it stops."""

        def __init__(self, oracle, run_variant, directory, poll: float = 0.5):
            super().__init__(oracle, hypermodel=None, directory=str(directory),
                             project_name="sweep", overwrite=True)
            self.run_variant, self.poll, self.ran, self.fatal = run_variant, poll, 0, None

        def run_trial(self, trial, *args, **kwargs):
            label = trial.hyperparameters.get(HP_NAME)
            self.ran += 1
            try:
                return self.run_variant(label, trial.trial_id)
            except Exception as exc:
                from training.data import DataNotFound

                if isinstance(exc, DataNotFound | ConfigError):  # no retry can help
                    self.fatal = exc
                    raise kt_errors.FatalError(str(exc)) from exc
                raise

        def search(self, *args, **kwargs):  # KerasTuner's loop, without spinning on IDLE
            self.on_search_begin()
            while True:
                trial = self.oracle.create_trial(self.tuner_id)
                if trial.status == trial_module.TrialStatus.STOPPED:
                    break
                if trial.status == trial_module.TrialStatus.IDLE:
                    time.sleep(self.poll)  # the last trials run elsewhere
                    continue
                self.on_trial_begin(trial)
                self._try_run_and_update_trial(trial)
                self.on_trial_end(trial)
            self.on_search_end()

        def save_model(self, trial_id, model, step=0):  # versions are published instead
            pass

        def load_model(self, trial):
            raise NotImplementedError("sweep trials publish versions; load those")

    return SweepTuner


def _row_metrics(row: dict, metric: str) -> dict[str, float]:
    """A table row as KerasTuner metrics (floats); None columns as ``<col>__none``."""
    out: dict[str, float] = {}
    for col in ("params", "epochs", f"train_{metric}", f"val_{metric}", "val_loss", "gap",
                "overfit", "seconds", "synthetic", "version"):
        value = row[col]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[col + _NONE] = 1.0
        else:
            out[col] = float(value)
    if f"val_{metric}" not in out:  # the objective must be a number: rank it last
        out[f"val_{metric}"] = float("-inf")
    return out


_INT_COLS = ("params", "epochs", "version")
_BOOL_COLS = ("overfit", "synthetic")


def _row_from_trial(trial, variant: dict, metric: str) -> dict:
    """The table row of a completed trial, from the metrics its worker reported."""
    def get(col):
        if not trial.metrics.exists(col) or trial.metrics.exists(col + _NONE):
            return None
        value = trial.metrics.get_last_value(col)
        if col in _INT_COLS:
            return int(value)
        if col in _BOOL_COLS:
            return bool(value)
        return float(value) if col == "seconds" else _r(value)

    return {"label": variant["label"], "depth": variant["depth"], "width": variant["width"],
            "activation": variant["activation"], "params": get("params"),
            "epochs": get("epochs"), f"train_{metric}": get(f"train_{metric}"),
            f"val_{metric}": get(f"val_{metric}"), "val_loss": get("val_loss"),
            "gap": get("gap"), "overfit": get("overfit"), "seconds": get("seconds"),
            "synthetic": get("synthetic"), "version": get("version")}


def _failed_row(variant: dict, metric: str) -> dict:
    cols = ("params", "epochs", f"train_{metric}", f"val_{metric}", "val_loss", "gap",
            "overfit", "seconds", "synthetic", "version")
    return {"label": variant["label"], "depth": variant["depth"], "width": variant["width"],
            "activation": variant["activation"], **dict.fromkeys(cols)}


def collect_rows(oracle, variants: list[dict], metric: str) -> tuple[list[dict], list[dict]]:
    """Rows (in variant order) and failures from what the oracle knows of its trials.

    A variant appears once: its completed trial, else (it failed every attempt) a row
    with empty metrics and an entry in the failures."""
    from keras_tuner.src.engine import trial as trial_module

    by_label = {v["label"]: v for v in variants}
    done: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for trial in oracle.trials.values():
        label = trial.hyperparameters.values.get(HP_NAME)
        if label not in by_label:
            continue
        if trial.status == trial_module.TrialStatus.COMPLETED:
            done.setdefault(label, trial)
        elif trial.status in (trial_module.TrialStatus.FAILED,
                              trial_module.TrialStatus.INVALID):
            lines = [ln for ln in (trial.message or "").strip().splitlines() if ln.strip()]
            failed[label] = lines[-1].strip() if lines else trial.status
    rows, failures = [], []
    for v in variants:
        if v["label"] in done:
            rows.append(_row_from_trial(done[v["label"]], v, metric))
        elif v["label"] in failed:
            rows.append(_failed_row(v, metric))
            failures.append({"label": v["label"], "reason": failed[v["label"]]})
    return rows, failures


def run_sweep(config: str | os.PathLike | dict | ModelConfig, variants: list[dict], *,
              out_dir: str | os.PathLike | None = None,
              models_root: str | os.PathLike | None = None,
              data_dir: str | os.PathLike | None = None,
              overrides: dict[str, Any] | None = None,
              publish: bool = False, overfit_gap: float = 0.05,
              log: Callable[[str], None] | None = None,
              search: str = "grid", max_trials: int | None = None,
              seed: int | None = None, retries: int = 1,
              workers: int = 0, worker_command: Sequence[str] | None = None,
              tuner_id: str | None = None) -> SweepResult | None:
    """Run the variants as KerasTuner trials; write ``sweep.md``, ``sweep.csv`` and
    ``sweep.png`` to ``out_dir``.

    One process (the default) runs the oracle and every trial. ``workers=N`` runs the
    oracle here (the chief) and N processes of ``worker_command`` (the same sweep on the
    command line) on 127.0.0.1. With ``tuner_id`` / the environment (``tuner_role``) this
    process is the cluster's chief (serves the oracle, writes the table) or a worker
    (trains what the chief hands it; returns None). Every variant config is validated
    before the first one trains, in every role.
    """
    log = log or (lambda _msg: None)
    base = load_config(config, overrides)
    if not 0.0 <= overfit_gap <= 1.0:
        raise ConfigError("sweep.overfit_gap", f"expected a number in [0, 1]. "
                                               f"Received: overfit_gap={overfit_gap}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError("--retries", f"expected an integer >= 0. Received: {retries!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError("--workers", f"expected an integer >= 0. Received: {workers!r}")
    raw = base.get_config()
    configs = []
    for i, v in enumerate(variants):
        try:
            configs.append(ModelConfig.from_config({**raw, "hidden": v["hidden"]}))
        except ConfigError as exc:
            raise ConfigError(f"variants[{i}] ({v['label']}).{exc.path}",
                              str(exc).split(": ", 1)[-1]) from exc
    labels = [v["label"] for v in variants]
    if not labels:
        raise ConfigError("variants", "expected at least one variant. Received: []")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError("variants", f"expected unique labels. Received duplicates: {dupes}")
    trials = check_search(search, max_trials, len(variants))
    role = tuner_role(tuner_id)
    if workers and role is not None:
        raise ConfigError("--workers", f"starts a chief and workers on this host; this "
                                       f"process is already {role!r} of a distributed sweep. "
                                       f"Received: workers={workers}")
    metric = sweep_metric(base)

    def new_oracle():
        return make_oracle(search, labels, metric, trials, seed=seed, retries=retries)

    if role is not None and role != "chief":
        _oracle_address()
        _run_worker(role, base, config, variants, configs, new_oracle(), metric, models_root,
                    data_dir, publish, overfit_gap, log)
        return None
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if out_dir is None:  # beside the project's models/, git-ignored (/sweeps/)
        out_dir = Path(os.environ.get(ENV_SWEEPS_DIR, "sweeps")) / base.name / stamp
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    oracle = new_oracle()
    state = out / "keras-tuner"
    if (state / "sweep").is_dir():  # a previous sweep's trials into this folder: not ours
        import shutil

        shutil.rmtree(state / "sweep")
    oracle._set_project_dir(str(state), "sweep")
    log(f"[sweep] {search} search over {len(variants)} variants, {trials} trials, "
        f"objective val_{metric}"
        + (f", {workers} workers" if workers else f", {role}" if role else ""))
    if workers:
        _serve_local(oracle, workers, list(worker_command or ()), out, retries, log)
    elif role == "chief":
        ip, port = _oracle_address()
        bind = os.environ.get(ENV_SWEEP_BIND) or "[::]"
        log(f"[sweep] chief: oracle on {bind}:{port} (workers reach it at {ip}:{port})")
        _serve(oracle, f"{bind}:{port}", log=log)
    else:
        tuner = _sweep_tuner_class()(oracle, _variant_runner(
            base, config, variants, configs, metric, models_root, data_dir, publish,
            overfit_gap, log, "tuner0"), out / "keras-tuner")
        _search(tuner)
    rows, failed = collect_rows(oracle, variants, metric)
    if not rows:
        raise RuntimeError(f"no variant finished: {failed or 'no trial ran'}")
    md, csv_path, png = out / "sweep.md", out / "sweep.csv", out / "sweep.png"
    _write_csv(rows, csv_path)
    md.write_text(_markdown(rows, base, metric, overfit_gap, search, failed))
    from training import plots

    plots.plot_sweep(rows, png, f"val_{metric}")
    ran_by = {t.hyperparameters.values.get(HP_NAME): oracle.owners.get(t.trial_id, [])
              for t in oracle.trials.values()}
    return SweepResult(rows, out, metric, md, csv_path, png, failed, len(oracle.trials), ran_by)


def _search(tuner) -> None:
    from keras_tuner.src import errors as kt_errors

    try:
        tuner.search()
    except kt_errors.FatalError:
        if tuner.fatal is not None:
            raise tuner.fatal from None
        raise


def _variant_runner(base, config, variants, configs, metric, models_root, data_dir, publish,
                    overfit_gap, log, tuner_id):
    """The function a tuner calls per trial: train one variant, return its row as metrics."""
    from training import train as train_mod
    from training.publish import is_store

    index = {v["label"]: i for i, v in enumerate(variants)}
    store = is_store(models_root)
    model_root = None if store else train_mod.default_model_root(config, base.name,
                                                                 models_root)

    def run(label: str, trial_id: str) -> dict[str, float]:
        import keras

        i = index[label]
        v, cfg = variants[i], configs[i]
        log(f"[sweep] {tuner_id}: variant {i + 1}/{len(variants)}: {label} (trial {trial_id})")
        keras.backend.clear_session()  # free the previous variant's graph and functions
        started = time.perf_counter()
        result = train_mod.run_training(cfg, data_dir=data_dir, log=log,
                                        baseline=publish and base.is_binary)
        tr = result.metrics["train"][metric]
        va = result.metrics["validation"][metric]
        gap = None if tr is None or va is None else tr - va
        row = {
            "label": label, "depth": v["depth"], "width": v["width"],
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
            row["version"] = _publish(train_mod, result, model_root, models_root, store, log)
        log(f"[sweep] {label}: params={row['params']} train_{metric}={row[f'train_{metric}']}"
            f" val_{metric}={row[f'val_{metric}']} gap={row['gap']}"
            f"{' OVERFIT' if row['overfit'] else ''}"
            f"{'' if row['version'] is None else ' version=' + str(row['version'])}")
        return _row_metrics(row, metric)

    return run


def _publish(train_mod, result, model_root, models_root, store: bool, log) -> int:
    """Publish one variant: a folder repository through stage_version (a concurrent
    publisher takes another number, never the same folder); an ``s3://`` one staged
    locally, then uploaded under the store's publishing lock (``publish_lock``)."""
    if not store:
        return int(train_mod.publish(result, model_root).name)
    from training.publish import upload

    with tempfile.TemporaryDirectory(prefix="layerscope-sweep-") as tmp:
        path = train_mod.publish(result, Path(tmp) / result.config.name)
        with publish_lock(os.environ.get(ENV_TUNER_ID, "tuner0"), log):
            url = upload(path, str(models_root))
    log(f"[sweep] uploaded to {url}")
    return int(url.rstrip("/").rsplit("/", 1)[-1])


_LOCK_SERVICE = "layerscope.SweepPublishLock"  # beside the oracle, on the chief's port
LOCK_LEASE_S = 900.0  # a holder that died frees the lock after this


class _PublishLock:
    """One uploader at a time: S3 has no atomic rename, so two workers uploading the next
    version of the same model at once could pick the same number (docs/scaling.md)."""

    def __init__(self, lease: float = LOCK_LEASE_S):
        import threading

        self.lease, self.holder, self.until = lease, None, 0.0
        self._mu = threading.Lock()

    def acquire(self, request: bytes, context) -> bytes:
        with self._mu:
            now = time.monotonic()
            if self.holder in (None, request) or now > self.until:
                self.holder, self.until = request, now + self.lease
                return b"1"
            return b"0"

    def release(self, request: bytes, context) -> bytes:
        with self._mu:
            if self.holder == request:
                self.holder = None
        return b"1"

    def handler(self):
        import grpc

        return grpc.method_handlers_generic_handler(_LOCK_SERVICE, {
            "Acquire": grpc.unary_unary_rpc_method_handler(self.acquire),
            "Release": grpc.unary_unary_rpc_method_handler(self.release)})


@contextlib.contextmanager
def publish_lock(holder: str, log: Callable[[str], None], poll: float = 0.5):
    """Hold the chief's publishing lock (workers of a distributed sweep; a no-op in one
    process, which publishes alone)."""
    if not os.environ.get(ENV_ORACLE_IP) or tuner_role() in (None, "chief"):
        yield
        return
    import grpc

    ip, port = _oracle_address()
    with grpc.insecure_channel(f"{ip}:{port}") as channel:
        acquire = channel.unary_unary(f"/{_LOCK_SERVICE}/Acquire")
        release = channel.unary_unary(f"/{_LOCK_SERVICE}/Release")
        me = holder.encode()
        waited = False
        while acquire(me, timeout=60, wait_for_ready=True) != b"1":
            if not waited:
                log(f"[sweep] {holder}: waiting for another worker's upload")
                waited = True
            time.sleep(poll)
        try:
            yield
        finally:
            release(me, timeout=60, wait_for_ready=True)


def _run_worker(role, base, config, variants, configs, oracle, metric, models_root,
                data_dir, publish, overfit_gap, log) -> None:
    """A worker: trials from the chief's oracle (KerasTuner's OracleClient) until it stops."""
    os.environ[ENV_TUNER_ID] = role  # KerasTuner reads its role from the environment
    ip, port = _oracle_address()
    log(f"[sweep] {role}: asking the oracle at {ip}:{port} for trials")
    with tempfile.TemporaryDirectory(prefix=f"layerscope-{role}-") as tmp:
        tuner = _sweep_tuner_class()(oracle, _variant_runner(
            base, config, variants, configs, metric, models_root, data_dir, publish,
            overfit_gap, log, role), tmp)
        _search(tuner)
    log(f"[sweep] {role}: the oracle has no more trials; ran {tuner.ran}")


def _server(oracle, address: str):
    """KerasTuner's OracleServicer on a gRPC server (``keras_tuner.src.distribute``);
    returns (server, servicer, bound port)."""
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((_PublishLock().handler(),))
    port = server.add_insecure_port(address)
    if not port:
        raise RuntimeError(f"the oracle could not listen on {address}")
    server.start()
    return server, servicer, port


def _finished(oracle, servicer) -> bool:
    """Every worker that asked for trials was told to stop and none runs one."""
    from keras_tuner.src.distribute.oracle_chief import exit_chief

    return servicer.stop_triggered and exit_chief(oracle)


def _serve(oracle, address: str, *, log, poll: float = 0.2) -> None:
    """The cluster chief: serve the oracle until every worker has been told to stop
    (KerasTuner's chief does the same, polling every 20 s)."""
    server, servicer, _ = _server(oracle, address)
    ended = 0
    try:
        while not _finished(oracle, servicer):
            time.sleep(poll)
            ended = _log_ended(oracle, ended, log)
    finally:
        server.stop(grace=2)
    _log_ended(oracle, ended, log)


def _log_ended(oracle, seen: int, log) -> int:
    for trial_id in oracle.end_order[seen:]:
        t = oracle.trials[trial_id]
        log(f"[sweep] trial {trial_id} {t.hyperparameters.values.get(HP_NAME)}: {t.status}"
            f" on {','.join(getattr(oracle, 'owners', {}).get(trial_id, [])) or '?'}"
            + (f" val={t.score:.4f}" if t.score is not None and t.status == "COMPLETED"
               else ""))
    return len(oracle.end_order)


def _serve_local(oracle, workers: int, command: list[str], out: Path, retries: int,
                 log, poll: float = 0.2) -> None:
    """``--workers N``: the oracle on 127.0.0.1 (a free port) and N worker processes.

    A worker that dies (any exit but 0) is started again under the same tuner id, up to
    ``retries`` times: the oracle hands it the trial it had (KerasTuner keeps ongoing trials
    per tuner id). Past that, its trial is ended FAILED (reported, not dropped) and the
    others carry on. A worker exiting 2 or 3 (invalid config, data missing) stops the
    sweep with that status."""
    if not command:
        raise ValueError("--workers needs the worker command line")
    server, servicer, port = _server(oracle, "127.0.0.1:0")
    logs = out / "workers"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, ENV_ORACLE_IP: "127.0.0.1", ENV_ORACLE_PORT: str(port)}
    env.pop(ENV_SWEEP_INDEX, None)
    env.pop(ENV_JOB_INDEX, None)
    procs: dict[str, subprocess.Popen] = {}
    restarts = dict.fromkeys((f"tuner{k}" for k in range(workers)), 0)

    def start(tid: str) -> None:
        with open(logs / f"{tid}.log", "ab") as f:
            procs[tid] = subprocess.Popen(command, env={**env, ENV_TUNER_ID: tid},
                                          stdout=f, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)

    log(f"[sweep] chief: oracle on 127.0.0.1:{port}; worker logs in {logs}")
    for tid in restarts:
        start(tid)
    ended, status = 0, None
    try:
        while not _finished(oracle, servicer):
            time.sleep(poll)
            ended = _log_ended(oracle, ended, log)
            alive = 0
            for tid, proc in list(procs.items()):
                rc = proc.poll()
                if rc is None:
                    alive += 1
                    continue
                if rc == 0:
                    continue
                if rc in (2, 3):
                    status = rc
                    raise WorkerExit(tid, rc, logs / f"{tid}.log")
                trial = oracle.ongoing_trials.get(tid)
                what = (f"its trial {trial.trial_id} "
                        f"({trial.hyperparameters.values.get(HP_NAME)})" if trial else
                        "no trial")
                if restarts[tid] < retries:
                    restarts[tid] += 1
                    log(f"[sweep] {tid} exited with {rc} holding {what}; starting it again "
                        f"({restarts[tid]}/{retries}), the oracle hands it back")
                    start(tid)
                    alive += 1
                    continue
                log(f"[sweep] {tid} exited with {rc} holding {what}, no restart left")
                del procs[tid]
                _abandon(oracle, tid, f"worker {tid} exited with status {rc} "
                                      f"({retries} restarts); see {logs / (tid + '.log')}")
            if not alive and not _finished(oracle, servicer):
                if not procs:
                    log("[sweep] no worker left; the variants not run are missing")
                    break
                if all(p.poll() == 0 for p in procs.values()):
                    break
    except BaseException:  # a worker's exit 2 / 3, Ctrl-C: the others stop too
        status = status or "stopped"
        raise
    finally:
        for proc in procs.values():
            if proc.poll() is None and status is not None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop(grace=2)
    _log_ended(oracle, ended, log)


class WorkerExit(RuntimeError):
    def __init__(self, tid: str, rc: int, log_path: Path):
        tail = ""
        with contextlib.suppress(OSError):
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln]
            tail = lines[-1] if lines else ""
        super().__init__(f"worker {tid} exited with status {rc}: {tail}")
        self.status = rc


def _abandon(oracle, tid: str, reason: str) -> None:
    """End a dead worker's trial as FAILED and forget the worker, so the chief can finish."""
    from keras_tuner.src.engine import trial as trial_module

    trial = oracle.ongoing_trials.get(tid)
    if trial is not None:
        trial.status = trial_module.TrialStatus.FAILED
        trial.message = reason
        oracle.end_trial(trial)
    oracle.tuner_ids.discard(tid)


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _markdown(rows: list[dict], base: ModelConfig, metric: str, gap: float,
              search: str = "grid", failed: Sequence[dict] = ()) -> str:
    cols = list(rows[0])
    best = max(rows, key=lambda r: r[f"val_{metric}"] if r[f"val_{metric}"] is not None
               else -1.0)
    lines = [f"# Sweep of `{base.name}` ({base['dataset']['name']}"
             f"{', SYNTHETIC data' if rows[0]['synthetic'] else ''})", "",
             f"Validation {metric} per variant; `overfit` = train {metric} exceeds validation "
             f"by more than {gap}. Best on validation: **{best['label']}**. "
             f"KerasTuner {search} search, {len(rows)} variants.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = ["" if r[c] is None else ("**yes**" if r[c] is True else "no"
                                          if r[c] is False else str(r[c])) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", f"**FAILED** ({len(failed)}; empty rows above, every attempt failed):"]
        lines += [f"- `{f['label']}`: {f['reason']}" for f in failed]
    return "\n".join(lines) + "\n"
