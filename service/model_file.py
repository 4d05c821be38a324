"""The optional per-model file ``models/<name>/serving.yaml``: what a bare ``model.keras``
cannot say about itself. Every key is optional::

    task: binary_classification        # a single-output model's task (else derived)
    class_names: [legit, fraud]         # a single classification output's classes
    threshold: 0.63                     # binary: the decision threshold (default 0.5)
    inputs:                             # per model input, by the name the model gives it
      image: {kind: image, value_range: [0, 255]}
      features: {kind: tabular, features: [age, income, ...]}
    outputs:                            # per output (multi-output models), by name
      churn: {task: binary_classification, class_names: [stays, churns], threshold: 0.4}
    reference: reference.npz            # a sample of inputs (key per input name, or x) and y
    versions:                           # checksums to verify before loading
      1: {sha256: 3f5a...}

Validated before use like ``model.yaml``; an invalid file fails the model's versions with
a message naming the field, the value received and what is allowed, e.g.
``serving.yaml: inputs.image.kind: expected one of image, tabular, sequence, tensor.
Received: kind='picture'``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

FILE_NAME = "serving.yaml"
KINDS = ("image", "tabular", "sequence", "tensor")
TASKS = ("binary_classification", "multiclass_classification", "regression")
TOP_KEYS = ("task", "class_names", "threshold", "inputs", "outputs", "reference", "versions")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ModelFileError(ValueError):
    def __init__(self, path: str, message: str):
        super().__init__(f"{FILE_NAME}: {path + ': ' if path else ''}{message}")


def _received(path: str, value: Any) -> str:
    return f"Received: {path.rsplit('.', 1)[-1]}={value!r}"


def _mapping(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise ModelFileError(path, f"expected a mapping. {_received(path, value)}")
    return value


def _keys(value: dict, allowed: tuple, path: str) -> None:
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise ModelFileError(
            path or "top level",
            f"unknown key {unknown[0]!r}; expected any of {', '.join(allowed)}",
        )


def _task(value: Any, path: str) -> str:
    if value not in TASKS:
        raise ModelFileError(path, f"expected one of {', '.join(TASKS)}. {_received(path, value)}")
    return value


def _names(value: Any, path: str) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
    ):
        raise ModelFileError(path, f"expected a non-empty list of names. {_received(path, value)}")
    names = [str(v) for v in value]
    if len(set(names)) != len(names):
        raise ModelFileError(path, f"names must be unique. {_received(path, value)}")
    return names


def _threshold(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ModelFileError(path, f"expected a number in (0, 1). {_received(path, value)}")
    return float(value)


def _head(value: dict, path: str) -> dict:
    """task / class_names / threshold of the model or of one output."""
    out: dict[str, Any] = {}
    if "task" in value:
        out["task"] = _task(value["task"], f"{path}task")
    if "class_names" in value:
        out["class_names"] = _names(value["class_names"], f"{path}class_names")
    if "threshold" in value:
        out["threshold"] = _threshold(value["threshold"], f"{path}threshold")
    if "threshold" in out and out.get("task", "binary_classification") != "binary_classification":
        raise ModelFileError(f"{path}threshold", "applies to binary_classification only")
    return out


def validate(raw: Any) -> dict:
    """The validated file as a plain dict (``{}`` for an empty file)."""
    if raw is None:
        return {}
    raw = _mapping(raw, "")
    _keys(raw, TOP_KEYS, "")
    out = _head(raw, "")
    inputs = {}
    for name, spec in _mapping(raw.get("inputs") or {}, "inputs").items():
        path = f"inputs.{name}"
        spec = _mapping(spec, path)
        _keys(spec, ("kind", "value_range", "features"), path)
        item: dict[str, Any] = {}
        if "kind" in spec:
            if spec["kind"] not in KINDS:
                received = _received(path + ".kind", spec["kind"])
                raise ModelFileError(
                    f"{path}.kind", f"expected one of {', '.join(KINDS)}. {received}"
                )
            item["kind"] = spec["kind"]
        if "value_range" in spec:
            vr = spec["value_range"]
            if (
                not isinstance(vr, list)
                or len(vr) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vr)
                or not vr[0] < vr[1]
            ):
                raise ModelFileError(
                    f"{path}.value_range",
                    f"expected [low, high] with low < high. {_received(path + '.value_range', vr)}",
                )
            item["value_range"] = [float(vr[0]), float(vr[1])]
        if "features" in spec:
            item["features"] = _names(spec["features"], f"{path}.features")
        inputs[str(name)] = item
    if inputs:
        out["inputs"] = inputs
    outputs = {}
    for name, spec in _mapping(raw.get("outputs") or {}, "outputs").items():
        path = f"outputs.{name}"
        spec = _mapping(spec, path)
        _keys(spec, ("task", "class_names", "threshold"), path)
        outputs[str(name)] = _head(spec, f"{path}.")
    if outputs:
        out["outputs"] = outputs
    if "reference" in raw:
        ref = raw["reference"]
        if (
            not isinstance(ref, str)
            or not ref
            or Path(ref).is_absolute()
            or ".." in Path(ref).parts
        ):
            raise ModelFileError(
                "reference",
                f"expected a file name inside the model folder. {_received('reference', ref)}",
            )
        out["reference"] = ref
    versions = {}
    for version, spec in _mapping(raw.get("versions") or {}, "versions").items():
        path = f"versions.{version}"
        if isinstance(version, bool) or not str(version).isdigit() or int(version) < 1:
            raise ModelFileError(path, f"expected a positive version number. Received: {version!r}")
        spec = _mapping(spec, path)
        _keys(spec, ("sha256",), path)
        digest = spec.get("sha256")
        if not isinstance(digest, str) or not HEX64.match(digest):
            raise ModelFileError(
                f"{path}.sha256",
                f"expected 64 lowercase hex digits. {_received(path + '.sha256', digest)}",
            )
        versions[int(version)] = {"sha256": digest}
    if versions:
        out["versions"] = versions
    return out


def load(model_dir: Path) -> dict:
    """``model_dir/serving.yaml`` validated, or ``{}`` when there is none. Raises
    ModelFileError for an unreadable or invalid file."""
    path = Path(model_dir) / FILE_NAME
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelFileError("", f"cannot be read as YAML: {exc}") from None
    return validate(raw)
