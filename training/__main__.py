"""Command line: ``python -m training data | train | sweep | evaluate | import``.

Exit status: 0 success, 2 invalid config, options or usage (nothing was trained or
imported), 3 data set not found, 1 any other failure (no version is published by a failed
run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_CONFIG = 2
EXIT_DATA = 3
BACKENDS = ("tensorflow", "jax")


def _log(msg: str) -> None:
    print(msg, flush=True)


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set training.epochs=3`` -> {"training.epochs": 3} (values parsed as YAML)."""
    import yaml

    from training.config import ConfigError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"expected KEY=VALUE (e.g. training.epochs=3). "
                                       f"Received: {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from training.config import ConfigError

    out = _parse_set(args.set)
    for flag, key in (("epochs", "training.epochs"), ("limit", "dataset.limit"),
                      ("seed", "training.seed")):
        value = getattr(args, flag, None)
        if value is not None:
            if value < 1 and flag != "seed":
                raise ConfigError(f"--{flag}", f"expected an integer >= 1. "
                                               f"Received: {flag}={value}")
            out[key] = value
    if getattr(args, "synthetic", False):
        out["dataset.synthetic"] = True
        if args.rows is not None:
            out["dataset.rows"] = args.rows
    elif getattr(args, "rows", None) is not None:
        raise ConfigError("--rows", f"only applies with --synthetic. Received: rows={args.rows}")
    return out


def _data_dir(args: argparse.Namespace) -> str | None:
    """--data-dir, else None: training.data then looks at $LAYERSCOPE_DATA_DIR itself."""
    return args.data_dir


# --------------------------------------------------------------------------- commands


def cmd_data(args: argparse.Namespace) -> int:
    from training import data

    names = args.names or list(data.DATASETS)
    try:
        rows = data.prepare(names, _data_dir(args))
        missing = None
    except data.DataNotFound as exc:
        rows, missing = getattr(exc, "rows", []), str(exc)
    for r in rows:
        _log(f"{r['name']:<14} {r['kind']:<8} rows={r['rows']:<7} test={r['test_rows']:<6} "
             f"sha256={r['sha256'][:12]} {'SYNTHETIC ' if r['synthetic'] else ''}"
             f"{r['source']}")
    if missing:
        print(missing, file=sys.stderr)
        return EXIT_DATA
    return 0


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _summary(version_dir: Path, seconds: float) -> None:
    meta = json.loads((version_dir / "metadata.json").read_text())
    ds = meta["dataset"]
    test, base = meta["metrics"]["test"], meta["metrics"].get("baseline")
    _log("")
    _log(f"== {meta['name']} v{meta['version']} published at {version_dir}")
    _log(f"   data      {ds['name']} rows={ds['rows']} sha256={ds['sha256'][:12]}"
         f"{'  ** SYNTHETIC DATA **' if ds['synthetic'] else ''}")
    _log("   splits    " + " ".join(f"{k}={v}" for k, v in meta["splits"].items()))
    if meta["task"] == "binary_classification":
        _log(f"   test      PR-AUC={_f(test['pr_auc'])} ROC-AUC={_f(test['roc_auc'])} "
             f"P={test['precision']:.3f} R={test['recall']:.3f} F1={test['f1']:.3f} "
             f"@ threshold {meta['threshold']:.4f}")
        if base:
            bt = base["test"]
            diff = (None if test["pr_auc"] is None or bt["pr_auc"] is None
                    else f"{test['pr_auc'] - bt['pr_auc']:+.4f}")
            _log(f"   baseline  HGB PR-AUC={_f(bt['pr_auc'])} ROC-AUC={_f(bt['roc_auc'])} "
                 f"F1={bt['f1']:.3f} (MLP - HGB PR-AUC = {diff or 'n/a'})")
    else:
        worst = min((v, k) for k, v in test["per_class_accuracy"].items() if v is not None)
        _log(f"   test      accuracy={test['accuracy']:.4f} "
             f"(weakest class {worst[1]!r}: {worst[0]:.3f})")
    _log(f"   time      fit {meta['training_seconds']:.1f}s, total {seconds:.1f}s, "
         f"{meta['epochs_run']} epochs")


def _launch(args: argparse.Namespace) -> int:
    """``--processes N``: N children of this command over 127.0.0.1 (training.distributed)."""
    from training import distributed
    from training.config import ConfigError

    if args.backend != "jax":
        raise ConfigError("--processes", f"data-parallel training runs on the JAX backend "
                                         f"(add --backend jax). Received: backend="
                                         f"{args.backend}")
    child = distributed.strip_option(args.argv, "--processes")
    return distributed.launch(child, args.processes, log=_log)


def cmd_train(args: argparse.Namespace) -> int:
    from training.config import ConfigError, load_config

    overrides = _overrides(args)
    cfg = load_config(args.model, overrides)  # fail fast (exit 2) before importing Keras
    if args.processes is not None and args.processes < 1:
        raise ConfigError("--processes", f"expected an integer >= 1. Received: "
                                         f"processes={args.processes}")
    if (args.processes or 1) > 1:
        if cfg.training["batch_size"] % args.processes:
            raise ConfigError("training.batch_size",
                              f"the global batch must be a multiple of --processes "
                              f"{args.processes}. Received: batch_size="
                              f"{cfg.training['batch_size']}")
        return _launch(args)
    from training.publish import is_store, publishing_to, upload
    from training.train import train

    started = time.perf_counter()
    with _terminate_on_sigterm(), publishing_to(args.models_root) as root:
        path = train(args.model, models_root=root, data_dir=_data_dir(args),
                     overrides=overrides, log=None if args.quiet else _log)
        if path is None:  # a data-parallel worker: the chief publishes
            return 0
        _summary(path, time.perf_counter() - started)
        if is_store(args.models_root):
            _log(f"== uploaded to {upload(path, args.models_root)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from training import distributed, sweep
    from training.config import load_config

    overrides = _overrides(args)
    cfg = load_config(args.model, overrides)
    if args.variants:
        variants = sweep.load_variants(args.variants)
    else:
        variants = sweep.grid_variants(cfg, args.depths, args.widths, args.activations,
                                       args.dropout)
    _log(f"[sweep] {len(variants)} variants of {cfg.name}: "
         + ", ".join(v["label"] for v in variants))
    worker = None
    if args.workers:  # the workers run this same command line, without --workers
        argv = getattr(args, "argv", None) or sys.argv[1:]
        worker = [sys.executable, "-m", "training", *distributed.strip_option(argv, "--workers")]
    try:
        res = sweep.run_sweep(args.model, variants, out_dir=args.out,
                              models_root=args.models_root, data_dir=_data_dir(args),
                              overrides=overrides, publish=args.publish,
                              overfit_gap=args.overfit_gap, log=None if args.quiet else _log,
                              search=args.search, max_trials=args.max_trials,
                              seed=args.seed, retries=args.retries, workers=args.workers,
                              worker_command=worker, tuner_id=args.tuner_id)
    except sweep.WorkerExit as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    if res is None:  # a worker of a distributed sweep: the chief writes the table
        return 0
    _log("")
    _log(res.table_md.read_text())
    _log(f"table: {res.table_md}  {res.table_csv}\nplot:  {res.plot}")
    if res.failed:
        print(f"error: {len(res.failed)} of {len(variants)} variants failed: "
              + "; ".join(f"{f['label']}: {f['reason']}" for f in res.failed), file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.train import evaluate_version

    r = evaluate_version(args.version, data_dir=_data_dir(args))
    _log(f"{r['name']} v{r['version']} ({r['path']}), test n={r['n_test']}"
         f"{'  ** SYNTHETIC DATA **' if r['synthetic'] else ''}")
    for k, v in r["recomputed"].items():
        _log(f"   {k:<10} recomputed={_f(v)} stored={_f(r['stored'][k])}")
    ok = r["max_abs_diff"] <= 1e-4
    _log(f"   {'matches' if ok else 'DIFFERS FROM'} metadata.json "
         f"(max |diff| = {r['max_abs_diff']:.2e})")
    return 0 if ok else 1


def cmd_import(args: argparse.Namespace) -> int:
    from training import import_model as im
    from training.publish import is_store, publishing_to, upload

    with publishing_to(args.model_dir) as root:  # s3://: staged here, then uploaded
        status, folder = _import(args, im, Path(root))
        if status == 0 and is_store(args.model_dir):
            _log(f"== uploaded to {upload(folder, args.model_dir)}")
    return status


def _import(args: argparse.Namespace, im, model_dir: Path) -> tuple[int, Path | None]:
    try:
        options = im.ImportOptions(
            path=Path(args.path),
            name=args.name,
            model_dir=model_dir,
            class_names=im.parse_class_names(args.class_names),
            threshold=im.parse_threshold(args.threshold),
            task=im.parse_task(args.task),
            images=im.parse_images(args.image),
            features=im.parse_features(args.features),
            reference=Path(args.reference) if args.reference else None,
            custom_objects_modules=list(args.custom_objects_module or ()),
        )
        folder = im.import_model(options, log=None if args.quiet else _log)
    except im.InvalidImport as exc:
        print(f"error: invalid import: {exc}", file=sys.stderr)
        return EXIT_CONFIG, None
    return 0, folder


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training",
                                description="Layerscope offline pipeline: data, training, "
                                            "sweeps and re-evaluation of model versions.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, train_like: bool = True) -> None:
        sp.add_argument("--data-dir", help="data directory (default $LAYERSCOPE_DATA_DIR)")
        if not train_like:
            return
        sp.add_argument("--models-root", help="publish under DIR/<name> or s3://bucket/"
                                              "prefix/<name> (default: the model.yaml's "
                                              "folder)")
        sp.add_argument("--epochs", type=int, help="override training.epochs")
        sp.add_argument("--limit", type=int, help="use a stratified subset of N rows")
        sp.add_argument("--seed", type=int, help="override training.seed")
        sp.add_argument("--synthetic", action="store_true",
                        help="train on SYNTHETIC transactions (creditcard schema); flagged "
                             "everywhere")
        sp.add_argument("--rows", type=int, help="rows of synthetic data (with --synthetic)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any config field, e.g. training.batch_size=64")
        sp.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress")
        sp.add_argument("--backend", choices=BACKENDS, default="tensorflow",
                        help="Keras backend to train on (default tensorflow; set before "
                             "Keras is imported; recorded in metadata.json)")

    d = sub.add_parser("data", help="locate, load and checksum the data sets")
    d.add_argument("names", nargs="*", help="data sets (default: all)")
    common(d, train_like=False)
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train models/<name> and publish a new version")
    t.add_argument("model", help="models/<name> or a model.yaml")
    common(t)
    t.add_argument("--processes", type=int, metavar="N",
                   help="data-parallel training as N processes on this host over 127.0.0.1 "
                        "(--backend jax; on a cluster run the command once per process "
                        "with KERAS_DISTRIBUTION_* set instead, docs/training.md)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="train depth x width x activation variants and "
                                     "compare them")
    s.add_argument("model", help="models/<name> or a model.yaml (the base config)")
    common(s)
    s.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3])
    s.add_argument("--widths", type=int, nargs="+", default=[32, 128])
    s.add_argument("--activations", nargs="+", default=["relu", "tanh"])
    s.add_argument("--dropout", type=float, help="dropout after each dense layer")
    s.add_argument("--variants", help="YAML list of {label, hidden} instead of the grid")
    s.add_argument("--overfit-gap", type=float, default=0.05,
                   help="flag train - validation metric above this (default 0.05)")
    s.add_argument("--out", help="output folder (default sweeps/<name>/<time>, or under "
                                      "$LAYERSCOPE_SWEEPS_DIR)")
    s.add_argument("--publish", action="store_true", help="publish every variant as a version")
    s.add_argument("--search", default="grid", metavar="grid|random|bayesian",
                   help="KerasTuner oracle picking the variants (default grid: each once)")
    s.add_argument("--max-trials", type=int, metavar="N",
                   help="trials of the search (default: every variant)")
    s.add_argument("--retries", type=int, default=1, metavar="N",
                   help="retries of a failed trial, and restarts of a dead --workers "
                        "process, before the variant is reported failed (default 1)")
    s.add_argument("--workers", type=int, default=0, metavar="N",
                   help="a chief (the oracle, the table) and N worker processes on this "
                        "host over 127.0.0.1 (docs/sweeps.md)")
    s.add_argument("--tuner-id", metavar="chief|tunerK",
                   help="this process's part in a distributed sweep (default "
                        "$KERASTUNER_TUNER_ID, else index $LAYERSCOPE_SWEEP_INDEX or "
                        "$JOB_COMPLETION_INDEX: 0 = chief, k = tuner<k-1>)")
    s.set_defaults(func=cmd_sweep)

    e = sub.add_parser("evaluate", help="re-check a published version on its test split")
    e.add_argument("version", help="models/<name>/<version> or models/<name> (newest)")
    common(e, train_like=False)
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser(
        "import",
        help="publish any Keras 3 model file as the next version of models/NAME",
        description="Publish PATH (a .keras file) as a complete version: model.keras, "
        "metadata.json (inputs, outputs, task, classes, layer table, checksums) and a "
        "reference sample (--reference, else a synthetic one, flagged as such), staged and "
        "renamed into place atomically. [TARGET=] names an input or output of a model with "
        "several.",
    )
    i.add_argument("path", help="the model file (model.save('model.keras'))")
    i.add_argument("--name", required=True, help="the model's name in the repository")
    i.add_argument("--model-dir", default=os.environ.get("LAYERSCOPE_MODEL_REPOSITORY", "models"),
                   help="the repository root, a folder or s3://bucket/prefix (default "
                        "$LAYERSCOPE_MODEL_REPOSITORY or models)")
    i.add_argument("--class-names", action="append", metavar="[OUTPUT=]A,B,...",
                   help="class names of a classification output")
    i.add_argument("--threshold", action="append", metavar="[OUTPUT=]T",
                   help="decision threshold of a binary output, in (0, 1) (default 0.5)")
    i.add_argument("--task", action="append", metavar="[OUTPUT=]TASK",
                   help="binary_classification, multiclass_classification or regression "
                        "(default: derived from the output's activation)")
    i.add_argument("--image", action="append", metavar="INPUT[:LOW:HIGH]",
                   help="declare an image input and its value range (default 0:255)")
    i.add_argument("--features", action="append", metavar="[INPUT=]F1,F2,...",
                   help="feature names of a tabular input")
    i.add_argument("--reference", metavar="FILE.npz",
                   help="reference sample: key x (or one key per input name), optional y")
    i.add_argument("--custom-objects-module", action="append", metavar="MODULE",
                   help="import MODULE first (it registers custom layers / models)")
    i.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    i.set_defaults(func=cmd_import)
    return p


def _select_backend(backend: str | None) -> None:
    """KERAS_BACKEND before Keras is imported (keras reads it once, at import)."""
    from training.config import ConfigError

    if backend is None:
        return
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != backend:
        raise ConfigError("--backend", f"Keras is already loaded on "
                                       f"{keras.backend.backend()!r} in this process. "
                                       f"Received: backend={backend!r}")
    os.environ["KERAS_BACKEND"] = backend


@contextlib.contextmanager
def _terminate_on_sigterm():
    """SIGTERM (the --processes launcher, Kubernetes) unwinds like an exception while
    training, so a half-staged version is removed instead of left behind."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from training.config import ConfigError

    try:
        _select_backend(getattr(args, "backend", None))
        return args.func(args)
    except ConfigError as exc:
        print(f"error: invalid config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # noqa: BLE001 - the CLI turns failures into a status
        from training.data import DataNotFound

        if isinstance(exc, DataNotFound):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_DATA
        if os.environ.get("LAYERSCOPE_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
