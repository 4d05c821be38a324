"""The ``model.yaml`` schema: validation with field paths, defaults, and round trips.

A config is validated completely before any data is read or any layer is built, so a
typo costs a second rather than a training run. Every error names the field path
(``hidden[2].activation``), the value received and what is allowed; the CLI turns a
:class:`ConfigError` into exit status 2.

The validated config is a plain, fully-defaulted dict wrapped in :class:`ModelConfig`; that
dict is what ``metadata.json`` stores as "the config as trained", and
``ModelConfig.from_config(cfg.get_config())`` gives back an equal config.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TASKS = ("binary_classification", "multiclass_classification")
INPUT_KINDS = ("tabular", "image")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "elu", "selu", "leaky_relu", "linear")
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")
PADDINGS = ("same", "valid")
THRESHOLD_OBJECTIVES = ("best_f1", "recall_at_precision", "precision_at_recall")
ES_MODES = ("min", "max", "auto")
LR_SCHEDULES = ("constant", "cosine")  # cosine: decay to 0 over the configured epochs
# training.augment (image inputs): random changes applied to each training batch in the input
# pipeline (training/builder.py: augment_batch), never layers of the saved model.
AUGMENT_FIELDS = ("flip_horizontal", "translate", "cutout")

# What each data set is, so that input kind, task and layer shapes are checked before loading.
DATASET_INFO: dict[str, dict[str, Any]] = {
    "creditcard": {"kind": "tabular", "shape": (30,), "classes": 2},
    "fashion_mnist": {"kind": "image", "shape": (28, 28, 1), "classes": 10},
    "mnist": {"kind": "image", "shape": (28, 28, 1), "classes": 10},
    "digits": {"kind": "image", "shape": (8, 8, 1), "classes": 10},
}

# Names the builder gives to the fixed layers; hidden layers may not take them.
RESERVED_NAMES = ("input", "normalization", "rescaling", "output")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

_REQUIRED = object()


class ConfigError(ValueError):
    """An invalid model config; ``path`` is the offending field (``hidden[2].activation``)."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# --------------------------------------------------------------------------- field checks


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _received(path: str, value: Any) -> str:
    return f"Received: {path.rsplit('.', 1)[-1]}={_fmt(value)}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int(path: str, v: Any, *, lo: int | None = None) -> int:
    if not _is_int(v) or (lo is not None and v < lo):
        allowed = "an integer" + (f" >= {lo}" if lo is not None else "")
        raise ConfigError(path, f"expected {allowed}. {_received(path, v)}")
    return v


def _float(path: str, v: Any, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> float:
    ok = _is_num(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        bounds = " and ".join(s for s in (lo_s, hi_s) if s)
        raise ConfigError(path, f"expected a number{' ' + bounds if bounds else ''}. "
                                f"{_received(path, v)}")
    return float(v)


def _bool(path: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(path, f"expected true or false. {_received(path, v)}")
    return v


def _choice(path: str, v: Any, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise ConfigError(path, f"expected one of {', '.join(allowed)}. {_received(path, v)}")
    return v


def _pair(path: str, v: Any, *, lo: int = 1) -> list[int]:
    """An int or a 2-list of ints (kernel, strides, pool sizes), stored as a 2-list."""
    if _is_int(v) and v >= lo:
        return [v, v]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(i) and i >= lo for i in v):
        return [int(v[0]), int(v[1])]
    raise ConfigError(path, f"expected an integer >= {lo} or a list of two. "
                            f"{_received(path, v)}")


def _mapping(path: str, v: Any, allowed: tuple[str, ...]) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(path, f"expected a mapping. Received: {type(v).__name__} {_fmt(v)}")
    unknown = [k for k in v if k not in allowed]
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(where, f"unknown field {_fmt(unknown[0])}; allowed fields: "
                                 f"{', '.join(allowed)}")
    return v


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- hidden layers

# kind -> {field: default or _REQUIRED}; validation of each field is in _layer_field.
LAYER_FIELDS: dict[str, dict[str, Any]] = {
    "dense": {"units": _REQUIRED, "activation": "relu", "l1": 0.0, "l2": 0.0, "use_bias": True},
    "dropout": {"rate": _REQUIRED},
    "batch_norm": {"momentum": 0.99},
    "layer_norm": {},
    "conv2d": {"filters": _REQUIRED, "kernel": 3, "strides": 1, "padding": "same",
               "activation": "relu", "l1": 0.0, "l2": 0.0, "use_bias": True},
    "max_pool": {"pool": 2, "strides": None, "padding": "valid"},
    "avg_pool": {"pool": 2, "strides": None, "padding": "valid"},
    "flatten": {},
    "global_avg_pool": {},
    "global_max_pool": {},
    # recurrent: an image is read row by row (H time steps of W x C values)
    "lstm": {"units": _REQUIRED, "return_sequences": False, "dropout": 0.0,
             "recurrent_dropout": 0.0},
    "gru": {"units": _REQUIRED, "return_sequences": False, "dropout": 0.0,
            "recurrent_dropout": 0.0},
    "simple_rnn": {"units": _REQUIRED, "return_sequences": False, "dropout": 0.0,
                   "recurrent_dropout": 0.0},
}
LAYER_KINDS = tuple(LAYER_FIELDS)
RECURRENT_KINDS = ("lstm", "gru", "simple_rnn")
SPATIAL_KINDS = ("conv2d", "max_pool", "avg_pool", "flatten", "global_avg_pool",
                 "global_max_pool")


def _layer_field(path: str, field: str, v: Any) -> Any:
    if field in ("units", "filters"):
        return _int(path, v, lo=1)
    if field == "activation":
        return _choice(path, v, ACTIVATIONS)
    if field in ("l1", "l2"):
        return _float(path, v, lo=0.0)
    if field in ("use_bias", "return_sequences"):
        return _bool(path, v)
    if field in ("dropout", "recurrent_dropout"):
        return _float(path, v, lo=0.0, hi=1.0, hi_open=True)
    if field == "rate":
        return _float(path, v, lo=0.0, hi=1.0, hi_open=True)
    if field == "momentum":
        return _float(path, v, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    if field in ("kernel", "pool"):
        return _pair(path, v)
    if field == "strides":
        return None if v is None else _pair(path, v)
    if field == "padding":
        return _choice(path, v, PADDINGS)
    raise AssertionError(field)  # pragma: no cover - LAYER_FIELDS and this function agree


def _conv_out(size: int, window: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - window) // stride + 1


def _validate_hidden(raw: Any, input_kind: str, input_shape: tuple[int, ...]) -> list[dict]:
    if not isinstance(raw, list):
        raise ConfigError("hidden", f"expected a list of layers. {_received('hidden', raw)}")
    out: list[dict] = []
    counts: dict[str, int] = {}
    shape: tuple[int, ...] = tuple(input_shape)
    for i, layer in enumerate(raw):
        path = f"hidden[{i}]"
        if not isinstance(layer, dict):
            raise ConfigError(path, f"expected a mapping with a 'kind'. {_received(path, layer)}")
        kind = layer.get("kind", _REQUIRED)
        if kind is _REQUIRED:
            raise ConfigError(f"{path}.kind", f"missing; allowed kinds: {', '.join(LAYER_KINDS)}")
        _choice(f"{path}.kind", kind, LAYER_KINDS)
        fields = LAYER_FIELDS[kind]
        _mapping(path, layer, ("kind", "name", *fields))
        spec: dict[str, Any] = {"kind": kind}
        counts[kind] = counts.get(kind, 0) + 1
        name = layer.get("name")
        if name is None:
            name = f"{kind}_{counts[kind]}"
        elif not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(f"{path}.name", "expected a letter then letters, digits or '_' "
                                              f"(at most 64). {_received(path + '.name', name)}")
        elif name in RESERVED_NAMES:
            raise ConfigError(f"{path}.name", f"{_fmt(name)} is reserved for a fixed layer "
                                              f"({', '.join(RESERVED_NAMES)})")
        spec["name"] = name
        for field, default in fields.items():
            fpath = f"{path}.{field}"
            if field in layer:
                spec[field] = _layer_field(fpath, field, layer[field])
            elif default is _REQUIRED:
                raise ConfigError(fpath, f"missing; a {kind} layer needs {field!r}")
            else:
                spec[field] = _layer_field(fpath, field, default) if default is not None else None
        shape = _next_shape(path, spec, shape, input_kind)
        out.append(spec)

    seen: dict[str, int] = {}
    for i, spec in enumerate(out):
        if spec["name"] in seen:
            raise ConfigError(f"hidden[{i}].name", f"duplicate layer name {_fmt(spec['name'])} "
                                                   f"(also hidden[{seen[spec['name']]}])")
        seen[spec["name"]] = i
    if len(shape) != 1:
        raise ConfigError("hidden", f"the last hidden layer gives a {len(shape)}-D feature map "
                                    f"{list(shape)}; end with flatten, global_avg_pool or "
                                    "global_max_pool before the output")
    return out


def _next_shape(path: str, spec: dict, shape: tuple[int, ...], input_kind: str):
    """Track the feature shape so misplaced layers fail here with the layer's path."""
    kind = spec["kind"]
    where = f"{path} ({spec['name']})"
    if kind in SPATIAL_KINDS and len(shape) != 3:
        why = "tabular input" if input_kind == "tabular" else "a flat input (after flatten/pool)"
        raise ConfigError(f"{path}.kind", f"{kind} needs an image feature map (H, W, C) but "
                                          f"{where} receives {why} of shape {list(shape)}")
    if kind in RECURRENT_KINDS:
        if len(shape) == 3:  # an image: its rows are the time steps
            shape = (shape[0], shape[1] * shape[2])
        if len(shape) != 2:
            raise ConfigError(f"{path}.kind", f"{kind} needs a sequence (time, features) or an "
                                              f"image but {where} receives a flat input of "
                                              f"shape {list(shape)}")
        return (shape[0], spec["units"]) if spec["return_sequences"] else (spec["units"],)
    if kind == "dense" and len(shape) != 1:
        raise ConfigError(f"{path}.kind", f"dense needs a flat input but {where} receives a "
                                          f"feature map of shape {list(shape)}; put flatten or "
                                          "a global pool before it")
    if kind == "conv2d":
        h, w = (_conv_out(s, k, st, spec["padding"])
                for s, k, st in zip(shape[:2], spec["kernel"], spec["strides"], strict=True))
        if h < 1 or w < 1:
            raise ConfigError(f"{path}.kernel", f"kernel {spec['kernel']} does not fit the "
                                                f"{shape[0]}x{shape[1]} input of {where}")
        return (h, w, spec["filters"])
    if kind in ("max_pool", "avg_pool"):
        strides = spec["strides"] or spec["pool"]
        h, w = (_conv_out(s, k, st, spec["padding"])
                for s, k, st in zip(shape[:2], spec["pool"], strides, strict=True))
        if h < 1 or w < 1:
            raise ConfigError(f"{path}.pool", f"pool {spec['pool']} does not fit the "
                                              f"{shape[0]}x{shape[1]} input of {where}")
        return (h, w, shape[2])
    if kind == "flatten":
        return (shape[0] * shape[1] * shape[2],)
    if kind in ("global_avg_pool", "global_max_pool"):
        return (shape[2],)
    if kind == "dense":
        return (spec["units"],)
    return shape


# --------------------------------------------------------------------------- sections

TOP_FIELDS = ("name", "description", "task", "dataset", "input", "preprocessing", "hidden",
              "output", "training", "threshold")
TASK_OUTPUT = {"binary_classification": "sigmoid", "multiclass_classification": "softmax"}


def _validate_dataset(raw: Any) -> dict:
    if isinstance(raw, str):
        raw = {"name": raw}
    d = _mapping("dataset", raw, ("name", "limit", "synthetic", "rows", "fraud_rate"))
    if "name" not in d:
        raise ConfigError("dataset.name", f"missing; allowed: {', '.join(DATASET_INFO)}")
    out = {"name": _choice("dataset.name", d["name"], tuple(DATASET_INFO))}
    limit = d.get("limit")
    out["limit"] = None if limit is None else _int("dataset.limit", limit, lo=10)
    out["synthetic"] = _bool("dataset.synthetic", d.get("synthetic", False))
    if out["synthetic"]:
        if out["name"] != "creditcard":
            raise ConfigError("dataset.synthetic", "synthetic data exists only for creditcard. "
                                                   f"Received: name={_fmt(out['name'])}")
        out["rows"] = _int("dataset.rows", d.get("rows", 284_807), lo=100)
        out["fraud_rate"] = _float("dataset.fraud_rate", d.get("fraud_rate", 0.00172),
                                   lo=0.0, hi=0.5, lo_open=True)
    else:
        for key in ("rows", "fraud_rate"):
            if key in d:
                raise ConfigError(f"dataset.{key}", "only meaningful with synthetic: true. "
                                                    f"{_received(key, d[key])}")
    return out


def _validate_preprocessing(raw: Any, kind: str) -> dict:
    if raw is None:
        raw = {}
    if kind == "tabular":
        d = _mapping("preprocessing", raw, ("normalize",))
        return {"normalize": _bool("preprocessing.normalize", d.get("normalize", True))}
    d = _mapping("preprocessing", raw, ("rescale",))
    return {"rescale": _float("preprocessing.rescale", d.get("rescale", 1.0 / 255.0),
                              lo=0.0, lo_open=True)}


def _validate_output(raw: Any, task: str) -> dict:
    d = _mapping("output", raw or {}, ("activation", "l1", "l2"))
    want = TASK_OUTPUT[task]
    act = d.get("activation", want)
    if act != want:
        raise ConfigError("output.activation", f"a {task} model ends in {want}. "
                                               f"{_received('activation', act)}")
    return {"activation": want, "l1": _float("output.l1", d.get("l1", 0.0), lo=0.0),
            "l2": _float("output.l2", d.get("l2", 0.0), lo=0.0)}


def monitor_choices(task: str) -> tuple[str, ...]:
    """Metric names Keras logs for this task (what early stopping may watch)."""
    names = ["loss", "accuracy"] + (["pr_auc", "roc_auc"] if task == TASKS[0] else [])
    return tuple(names + [f"val_{n}" for n in names])


def _validate_augment(raw: Any, input_kind: str, shape: tuple[int, ...]) -> dict | None:
    """``training.augment``: None (off) or {flip_horizontal, translate, cutout}."""
    if raw is None or raw is False:
        return None
    d = _mapping("training.augment", raw, AUGMENT_FIELDS)
    if input_kind != "image":
        raise ConfigError("training.augment", "only image inputs are augmented. "
                                              f"Received: input={_fmt(input_kind)}")
    side = min(shape[:2])
    out = {"flip_horizontal": _bool("training.augment.flip_horizontal",
                                    d.get("flip_horizontal", False)),
           "translate": _int("training.augment.translate", d.get("translate", 0), lo=0),
           "cutout": _int("training.augment.cutout", d.get("cutout", 0), lo=0)}
    if out["translate"] >= side // 2:
        raise ConfigError("training.augment.translate", f"expected a shift in pixels below "
                                                        f"half the {side}-pixel side ("
                                                        f"< {side // 2}). "
                                                        f"Received: translate={out['translate']}")
    if out["cutout"] > side:
        raise ConfigError("training.augment.cutout", f"expected a square side <= the "
                                                     f"{side}-pixel image side. "
                                                     f"Received: cutout={out['cutout']}")
    return out


def _validate_training(raw: Any, task: str, official_test: bool, n_classes: int,
                       input_kind: str = "tabular", shape: tuple[int, ...] = ()) -> dict:
    fields = ("optimizer", "learning_rate", "lr_schedule", "weight_decay", "epochs",
              "batch_size", "early_stopping", "class_weight", "seed", "validation_fraction",
              "test_fraction", "label_smoothing", "augment")
    d = _mapping("training", raw or {}, fields)
    out: dict[str, Any] = {
        "optimizer": _choice("training.optimizer", d.get("optimizer", "adam"), OPTIMIZERS),
        "learning_rate": _float("training.learning_rate", d.get("learning_rate", 1e-3),
                                lo=0.0, hi=10.0, lo_open=True),
        "lr_schedule": _choice("training.lr_schedule", d.get("lr_schedule", "constant"),
                               LR_SCHEDULES),
        "weight_decay": _float("training.weight_decay", d.get("weight_decay", 0.0), lo=0.0),
        "epochs": _int("training.epochs", d.get("epochs", 10), lo=1),
        "batch_size": _int("training.batch_size", d.get("batch_size", 128), lo=1),
        "seed": _int("training.seed", d.get("seed", 0), lo=0),
        "validation_fraction": _float("training.validation_fraction",
                                      d.get("validation_fraction", 0.15),
                                      lo=0.0, hi=0.5, lo_open=True),
        "test_fraction": _float("training.test_fraction", d.get("test_fraction", 0.15),
                                lo=0.0, hi=0.5, lo_open=True),
        # the loss' targets: 1 - s for the true class, s spread evenly over all classes
        "label_smoothing": _float("training.label_smoothing", d.get("label_smoothing", 0.0),
                                  lo=0.0, hi=1.0, hi_open=True),
        "augment": _validate_augment(d.get("augment"), input_kind, shape),
    }
    if out["weight_decay"] and out["optimizer"] not in ("adamw", "sgd"):
        raise ConfigError("training.weight_decay", "applies to adamw or sgd. Received: "
                                                   f"optimizer={_fmt(out['optimizer'])}")
    if not official_test and out["validation_fraction"] + out["test_fraction"] >= 0.8:
        raise ConfigError("training.test_fraction", "validation_fraction + test_fraction must "
                                                    "leave at least 20% for training. Received: "
                                                    f"{out['validation_fraction']} + "
                                                    f"{out['test_fraction']}")
    es = d.get("early_stopping")
    if es is None or es is False:
        out["early_stopping"] = None
    else:
        if es is True:
            es = {}
        e = _mapping("training.early_stopping", es,
                     ("monitor", "patience", "mode", "restore_best_weights", "min_delta"))
        monitor = _choice("training.early_stopping.monitor", e.get("monitor", "val_loss"),
                          monitor_choices(task))
        mode = _choice("training.early_stopping.mode", e.get("mode", "auto"), ES_MODES)
        if mode == "auto":
            mode = "min" if monitor.endswith("loss") else "max"
        out["early_stopping"] = {
            "monitor": monitor,
            "patience": _int("training.early_stopping.patience", e.get("patience", 3), lo=0),
            "mode": mode,
            "restore_best_weights": _bool("training.early_stopping.restore_best_weights",
                                          e.get("restore_best_weights", True)),
            "min_delta": _float("training.early_stopping.min_delta", e.get("min_delta", 0.0),
                                lo=0.0),
        }
    cw = d.get("class_weight", "balanced" if task == TASKS[0] else "none")
    if cw is None:
        cw = "none"
    if isinstance(cw, dict):
        weights = {}
        for k, v in cw.items():
            key = int(k) if isinstance(k, str) and k.isdigit() else k
            if not _is_int(key) or not 0 <= key < n_classes:
                raise ConfigError(f"training.class_weight.{k}", "keys are class indices "
                                                                f"0..{n_classes - 1}. "
                                                                f"Received: {_fmt(k)}")
            weights[key] = _float(f"training.class_weight.{k}", v, lo=0.0, lo_open=True)
        out["class_weight"] = {str(k): weights[k] for k in sorted(weights)}
    elif cw in ("balanced", "none"):
        out["class_weight"] = cw
    else:
        raise ConfigError("training.class_weight", "expected balanced, none or a mapping "
                                                   "{class index: weight}. "
                                                   f"{_received('class_weight', cw)}")
    return out


def _validate_threshold(raw: Any, task: str) -> dict | None:
    if task != TASKS[0]:
        if raw is not None:
            raise ConfigError("threshold", f"only binary_classification has a decision "
                                           f"threshold. Received: task={_fmt(task)}")
        return None
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"objective": raw}
    d = _mapping("threshold", raw, ("objective", "min_precision", "min_recall"))
    obj = _choice("threshold.objective", d.get("objective", "best_f1"), THRESHOLD_OBJECTIVES)
    out: dict[str, Any] = {"objective": obj}
    need = {"recall_at_precision": "min_precision", "precision_at_recall": "min_recall"}
    for key in ("min_precision", "min_recall"):
        if key in d and need.get(obj) != key:
            raise ConfigError(f"threshold.{key}", f"does not apply to objective {obj}. "
                                                  f"{_received(key, d[key])}")
    if obj in need:
        key = need[obj]
        if key not in d:
            raise ConfigError(f"threshold.{key}", f"missing; objective {obj} needs {key}")
        out[key] = _float(f"threshold.{key}", d[key], lo=0.0, hi=1.0, lo_open=True)
    return out


def validate_config(raw: Any) -> dict:
    """Check a raw (YAML-loaded) config and return it fully defaulted; raise ConfigError."""
    top = _mapping("", raw, TOP_FIELDS)
    for key in ("name", "task", "dataset", "input", "hidden"):
        if key not in top:
            raise ConfigError(key, "missing required field")
    name = top["name"]
    if not isinstance(name, str) or not re.match(r"^[a-z0-9][a-z0-9_-]{0,63}$", name):
        raise ConfigError("name", "expected lower-case letters, digits, '-' or '_' (a folder "
                                  f"name). {_received('name', name)}")
    task = _choice("task", top["task"], TASKS)
    dataset = _validate_dataset(top["dataset"])
    info = DATASET_INFO[dataset["name"]]
    kind = _choice("input", top["input"], INPUT_KINDS)
    if kind != info["kind"]:
        raise ConfigError("input", f"data set {dataset['name']} is {info['kind']}. "
                                   f"{_received('input', kind)}")
    want_task = TASKS[0] if info["classes"] == 2 else TASKS[1]
    if task != want_task:
        raise ConfigError("task", f"data set {dataset['name']} has {info['classes']} classes, "
                                  f"so the task is {want_task}. {_received('task', task)}")
    desc = top.get("description", "")
    if not isinstance(desc, str):
        raise ConfigError("description", f"expected text. {_received('description', desc)}")
    official_test = dataset["name"] in ("mnist", "fashion_mnist")
    return {
        "name": name,
        "description": desc,
        "task": task,
        "dataset": dataset,
        "input": kind,
        "preprocessing": _validate_preprocessing(top.get("preprocessing"), kind),
        "hidden": _validate_hidden(top["hidden"], kind, info["shape"]),
        "output": _validate_output(top.get("output"), task),
        "training": _validate_training(top.get("training"), task, official_test,
                                       info["classes"], kind, tuple(info["shape"])),
        "threshold": _validate_threshold(top.get("threshold"), task),
    }


# --------------------------------------------------------------------------- overrides + I/O


def apply_overrides(raw: dict, overrides: dict[str, Any] | None) -> dict:
    """Set dotted paths (``training.epochs``) in a copy of a raw config (CLI flags, sweeps)."""
    out = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = node[part] = {}
            if isinstance(nxt, str) and part == "dataset":
                nxt = node[part] = {"name": nxt}
            if not isinstance(nxt, dict):
                raise ConfigError(dotted, f"cannot override inside {part!r}, which is "
                                          f"{_fmt(nxt)}")
            node = nxt
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "model.yaml"
    if not path.is_file():
        raise ConfigError("", f"config file not found. Received: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping. Received: {type(raw).__name__}")
    return raw


@dataclass(frozen=True)
class ModelConfig:
    """A validated config; ``get_config()`` is the plain dict stored in metadata.json."""

    data: dict

    @classmethod
    def from_config(cls, raw: dict, overrides: dict[str, Any] | None = None) -> ModelConfig:
        return cls(validate_config(apply_overrides(raw, overrides)))

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict[str, Any] | None = None):
        return cls.from_config(read_yaml(path), overrides)

    def get_config(self) -> dict:
        return copy.deepcopy(self.data)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def task(self) -> str:
        return self.data["task"]

    @property
    def is_binary(self) -> bool:
        return self.data["task"] == TASKS[0]

    @property
    def training(self) -> dict:
        return self.data["training"]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False)


def load_config(source: str | Path | dict | ModelConfig,
                overrides: dict[str, Any] | None = None) -> ModelConfig:
    """Accept a path (file or model folder), a raw dict or a ModelConfig."""
    if isinstance(source, ModelConfig):
        source = source.get_config()
    if isinstance(source, dict):
        return ModelConfig.from_config(source, overrides)
    return ModelConfig.from_file(source, overrides)
