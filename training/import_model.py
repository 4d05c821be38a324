"""``python -m training import PATH/model.keras --name NAME``: publish any Keras 3 model as a
complete version, exactly like a trained one.

The version is staged by ``training.publish.stage_version`` (a hidden ``.tmp-<uuid>``
folder renamed into place once everything is written), so the repository never holds half
an import: a run that fails, or is killed, leaves no version. What it writes:

* ``model.keras``: a byte-for-byte copy of the file given (its sha256 is recorded);
* ``reference.npz``: the reference sample given with ``--reference`` (key ``x``, or one
  key per input name; optional ``y``), else a SYNTHETIC one, flagged in the metadata
  (``"reference": {"source": "synthetic", ...}``): random inputs within each input's value
  range (images: ``--image``'s range, default 0..255), token ids below the vocabulary size
  of the Embedding reading an integer input, standard normal values otherwise;
* ``metadata.json``: the fields of a trained version that the service reads (``task``,
  ``class_names``, ``threshold``, ``input`` = the first input's spec, ``output``,
  ``layers``, ``files`` with checksums) plus the full description of
  ``service.model_spec.describe``: every input (``inputs``), every output (``outputs``)
  and the flattened layer table (nested ``outer/inner``, shared ``name@k``, recurrent
  ``name:sequence``).

Before the rename the staged version is loaded the way a worker loads it
(``service.runtime.ModelRuntime``: checksum, ``safe_mode=True``, compiled functions
warmed) and its predictions on the reference sample are compared with the model's own,
so a version the service would refuse is never published.

Bad options exit with status 2 and a message quoting what was received."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.publish import (
    _NAME_RE,
    MODEL_FILE,
    STAGING_PREFIX,
    sha256_file,
    stage_version,
)

REFERENCE_FILE = "reference.npz"
SYNTHETIC_ROWS = 256
SYNTHETIC_VALUES = 2_000_000  # values per input at most in a synthetic sample (rows shrink)
STALE_STAGING_SECONDS = 3600  # an unlocked staging folder this old was left by a killed run
TASKS = ("binary_classification", "multiclass_classification", "regression")
STAGES = 6


class InvalidImport(ValueError):
    """Invalid options or a model that cannot be imported as asked (exit status 2)."""


@dataclass
class ImportOptions:
    """What the command line gives, before the model is read."""

    path: Path
    name: str
    model_dir: Path = Path("models")
    class_names: dict[str | None, list[str]] = field(default_factory=dict)  # output -> names
    threshold: dict[str | None, float] = field(default_factory=dict)
    task: dict[str | None, str] = field(default_factory=dict)
    images: dict[str | None, list[float] | None] = field(default_factory=dict)  # input -> range
    features: dict[str | None, list[str]] = field(default_factory=dict)
    reference: Path | None = None
    custom_objects_modules: list[str] = field(default_factory=list)


# -- option parsing (no TensorFlow needed) -------------------------------------------------
def _split_target(text: str) -> tuple[str | None, str]:
    """``[TARGET=]VALUE``: the target (an input or output name) is optional."""
    target, sep, value = text.partition("=")
    return (target.strip(), value) if sep else (None, text)


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise InvalidImport(
            f"{flag}: expected comma-separated unique, non-empty names (e.g. cat,dog). "
            f"Received: {flag}={text!r}"
        )
    return names


def parse_class_names(items: Sequence[str]) -> dict[str | None, list[str]]:
    out = {}
    for item in items or ():
        target, value = _split_target(item)
        out[target] = _names(value, "--class-names")
    return out


def parse_features(items: Sequence[str]) -> dict[str | None, list[str]]:
    out = {}
    for item in items or ():
        target, value = _split_target(item)
        out[target] = _names(value, "--features")
    return out


def parse_threshold(items: Sequence[str]) -> dict[str | None, float]:
    out = {}
    for item in items or ():
        target, value = _split_target(item)
        try:
            t = float(value)
        except ValueError:
            t = float("nan")
        if not 0 < t < 1:
            raise InvalidImport(
                f"--threshold: expected a number in (0, 1). Received: threshold={value!r}"
            )
        out[target] = t
    return out


def parse_task(items: Sequence[str]) -> dict[str | None, str]:
    out = {}
    for item in items or ():
        target, value = _split_target(item)
        if value not in TASKS:
            raise InvalidImport(
                f"--task: expected one of {', '.join(TASKS)}. Received: task={value!r}"
            )
        out[target] = value
    return out


def parse_images(items: Sequence[str]) -> dict[str | None, list[float] | None]:
    """``INPUT[:LOW:HIGH]`` (``INPUT`` may be left empty for a single-input model)."""
    out: dict[str | None, list[float] | None] = {}
    for item in items or ():
        parts = item.split(":")
        if len(parts) not in (1, 3):
            raise InvalidImport(
                f"--image: expected INPUT or INPUT:LOW:HIGH (e.g. image:0:255). "
                f"Received: --image {item!r}"
            )
        target = parts[0].strip() or None
        value_range = None
        if len(parts) == 3:
            try:
                value_range = [float(parts[1]), float(parts[2])]
            except ValueError:
                value_range = None
            if value_range is None or not value_range[0] < value_range[1]:
                raise InvalidImport(
                    f"--image: expected LOW < HIGH, two numbers. Received: --image {item!r}"
                )
        out[target] = value_range
    return out


def check_file(path: Path) -> None:
    if not path.is_file():
        raise InvalidImport(f"no such file: {str(path)!r}. Received: PATH={str(path)!r}")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise InvalidImport(
            f"expected a Keras 3 model file (model.save('name.keras'), a zip archive ending "
            f"in .keras). Received: PATH={str(path)!r}"
        )


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise InvalidImport(
            f"--name: expected lower case letters, digits, '_' or '-', starting with a letter "
            f"(at most 64). Received: name={name!r}"
        )


# -- stale staging folders -------------------------------------------------------------------
def _locked(folder: Path):
    """Hold an exclusive flock on ``folder`` for as long as the returned fd is open: a live
    import's staging folder is never taken for a killed run's leftover."""
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def clean_stale(model_root: Path, older_than: float = STALE_STAGING_SECONDS) -> list[Path]:
    """Remove staging folders under ``model_root`` that no live import holds and that have
    not changed for ``older_than`` seconds (a killed run cannot remove its own). The
    service ignores them either way (their names are not version numbers)."""
    removed: list[Path] = []
    if not model_root.is_dir():
        return removed
    now = time.time()
    for child in model_root.iterdir():
        if not child.name.startswith(STAGING_PREFIX) or not child.is_dir():
            continue
        try:
            if now - child.stat().st_mtime < older_than:
                continue
            fd = _locked(child)
        except OSError:  # held by a live import, or already gone
            continue
        try:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
        finally:
            os.close(fd)
    return removed


# -- the model -------------------------------------------------------------------------------
def _import_modules(modules: Sequence[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InvalidImport(
                f"--custom-objects-module: cannot import {module!r}: {exc}. "
                f"Received: --custom-objects-module {module!r}"
            ) from None


def load_model(path: Path):
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the file's
        raise InvalidImport(
            f"keras could not load {str(path)!r} with safe_mode=True: {exc}. Custom layers "
            "or models must be registered (keras.saving.register_keras_serializable) in a "
            "module named with --custom-objects-module; Lambda layers are refused"
        ) from None


def _resolve(
    given: dict[str | None, Any], names: list[str], flag: str, what: str
) -> dict[str, Any]:
    """Options keyed ``None`` (no target named) apply to the sole input / output."""
    out = {}
    for target, value in given.items():
        if target is None:
            if len(names) != 1:
                raise InvalidImport(
                    f"{flag}: the model has {len(names)} {what}s ({', '.join(names)}); name "
                    f"the one meant, e.g. {flag} {names[0]}=... . Received: {flag} without one"
                )
            target = names[0]
        if target not in names:
            raise InvalidImport(
                f"{flag}: the model has no {what} {target!r}; its {what}s: "
                f"{', '.join(names)}. Received: {target!r}"
            )
        out[target] = value
    return out


def overrides(options: ImportOptions, plain: dict) -> dict:
    """The options as a validated ``serving.yaml``-shaped dict for ``model_spec.describe``
    (``plain``: the model's description without them)."""
    input_names = [s["name"] for s in plain["inputs"]]
    output_names = [o["name"] for o in plain["outputs"]]
    derived = {o["name"]: o["task"] for o in plain["outputs"]}
    inputs: dict[str, dict] = {}
    for name, value_range in _resolve(options.images, input_names, "--image", "input").items():
        inputs.setdefault(name, {})["kind"] = "image"
        inputs[name]["value_range"] = value_range or [0.0, 255.0]
    for name, feats in _resolve(options.features, input_names, "--features", "input").items():
        inputs.setdefault(name, {})["features"] = feats
        if inputs[name].get("kind") == "image":
            raise InvalidImport(
                f"--features: input {name!r} is declared an image (--image); features name "
                f"the values of a tabular input. Received: --features {','.join(feats)}"
            )
        inputs[name]["kind"] = "tabular"
    outputs: dict[str, dict] = {}
    given_tasks = _resolve(options.task, output_names, "--task", "output")
    for key, given, flag in (
        ("task", options.task, "--task"),
        ("class_names", options.class_names, "--class-names"),
        ("threshold", options.threshold, "--threshold"),
    ):
        for name, value in _resolve(given, output_names, flag, "output").items():
            outputs.setdefault(name, {})[key] = value
    for name, head in outputs.items():
        task = head.get("task", derived[name])
        head.setdefault("task", task)
        if "threshold" in head and task != "binary_classification":
            raise InvalidImport(
                f"--threshold applies to a binary_classification output; {name!r} is "
                f"{'declared' if name in given_tasks else 'derived as'} {task}. "
                f"Received: threshold={head['threshold']}"
            )
    return {"inputs": inputs, "outputs": outputs}


def describe(model, file: dict) -> tuple[dict, Any, str | None]:
    """(description, flat graph or None, why there is no graph)."""
    from service import model_spec

    try:
        flat = model_spec.flatten(model)
        reason = None
    except ValueError as exc:
        flat, reason = None, str(exc)
    try:
        described = model_spec.describe(model, flat, None, file)
    except model_spec.ModelDescriptionError as exc:
        raise InvalidImport(str(exc)) from None
    for out in described["outputs"]:
        if out["task"] == "binary_classification" and out.get("threshold") is None:
            out["threshold"] = 0.5
    return described, flat, reason


# -- reference sample ------------------------------------------------------------------------
def _dtype(name: str):
    from service import model_spec

    return model_spec.DTYPES.get(name, np.float32)


def read_reference(path: Path, inputs: list[dict]) -> tuple[dict[str, np.ndarray], Any]:
    """The given sample as {input name: array} (checked against the inputs) and y or None."""
    if not path.is_file():
        raise InvalidImport(f"--reference: no such file. Received: --reference {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as exc:
        raise InvalidImport(
            f"--reference: expected a .npz file (numpy.savez): {exc}. "
            f"Received: --reference {str(path)!r}"
        ) from None
    names = [s["name"] for s in inputs]
    if len(inputs) == 1 and "x" in arrays:
        xs = {names[0]: arrays["x"]}
    else:
        missing = [n for n in names if n not in arrays]
        if missing:
            raise InvalidImport(
                f"--reference: expected the key 'x' (single-input models) or one key per "
                f"input ({', '.join(names)}); missing {', '.join(missing)}. Received: keys "
                f"{sorted(arrays)}"
            )
        xs = {n: arrays[n] for n in names}
    rows = {len(a) if a.ndim else 0 for a in xs.values()}
    for spec in inputs:
        x = xs[spec["name"]]
        want = spec["shape"]
        if x.ndim != len(want) + 1 or any(
            d is not None and d != g for d, g in zip(want, x.shape[1:], strict=True)
        ):
            raise InvalidImport(
                f"--reference: input {spec['name']!r} expects arrays of shape (n, "
                f"{', '.join('None' if d is None else str(d) for d in want)}). Received: "
                f"shape {tuple(x.shape)}"
            )
        target = _dtype(spec["dtype"])
        if np.issubdtype(target, np.integer) and not np.issubdtype(x.dtype, np.integer):
            raise InvalidImport(
                f"--reference: input {spec['name']!r} takes {spec['dtype']} values. "
                f"Received: dtype {x.dtype}"
            )
        xs[spec["name"]] = x.astype(target, copy=False)
    if len(rows) != 1 or 0 in rows:
        raise InvalidImport(
            f"--reference: every input needs the same number of rows, at least one. "
            f"Received: rows {sorted(rows)}"
        )
    y = arrays.get("y")
    if y is not None and len(y) != next(iter(rows)):
        raise InvalidImport(
            f"--reference: 'y' has {len(y)} rows, the inputs {next(iter(rows))}. "
            f"Received: y shape {tuple(y.shape)}"
        )
    return xs, y


def vocabulary_sizes(model) -> dict[str, int]:
    """Input name -> input_dim of an Embedding that reads that integer input directly."""
    import keras

    out: dict[str, int] = {}
    graph = getattr(model, "_functional", None) or model
    for index, tensor in enumerate(getattr(graph, "inputs", None) or []):
        for layer in getattr(model, "layers", []):
            if not isinstance(layer, keras.layers.Embedding):
                continue
            for node in layer._inbound_nodes:
                if any(t is tensor for t in keras.tree.flatten(node.input_tensors)):
                    name = getattr(tensor, "name", None) or f"input_{index}"
                    out[str(name)] = int(layer.input_dim)
    return out


def synthetic_reference(
    model, inputs: list[dict], seed: int = 0
) -> tuple[dict[str, np.ndarray], dict]:
    """Random inputs the model can take, and the note recorded in metadata."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary_sizes(model)
    sizes = []
    for spec in inputs:
        values = int(np.prod([8 if d is None else d for d in spec["shape"]] or [1]))
        sizes.append(values)
    rows = max(1, min(SYNTHETIC_ROWS, SYNTHETIC_VALUES // max(sizes)))
    xs: dict[str, np.ndarray] = {}
    how: dict[str, str] = {}
    for spec in inputs:
        shape = (rows, *[8 if d is None else d for d in spec["shape"]])
        dtype = _dtype(spec["dtype"])
        name = spec["name"]
        if np.issubdtype(dtype, np.bool_):
            xs[name] = rng.random(shape) < 0.5
            how[name] = "random booleans"
        elif np.issubdtype(dtype, np.integer):
            high = vocab.get(name) or 2
            xs[name] = rng.integers(0, high, shape).astype(dtype)
            how[name] = (
                f"token ids uniform in [0, {high}) (the Embedding's input_dim)"
                if name in vocab
                else "integers uniform in {0, 1} (no Embedding found reading it)"
            )
        elif spec.get("value_range") or spec.get("kind") == "image":
            lo, hi = spec.get("value_range") or [0.0, 255.0]
            xs[name] = rng.uniform(lo, hi, shape).astype(dtype)
            how[name] = f"uniform in [{lo:g}, {hi:g}]"
        else:
            xs[name] = rng.standard_normal(shape).astype(dtype)
            how[name] = "standard normal"
    note = {
        "source": "synthetic",
        "rows": rows,
        "inputs": how,
        "note": "no --reference was given: random inputs, not data the model has seen; "
        "reference statistics (dead units, spread) describe this noise, not real traffic. "
        "Import again with --reference sample.npz for meaningful ones",
    }
    return xs, note


def write_reference(path: Path, xs: dict[str, np.ndarray], y, inputs: list[dict]) -> None:
    """Key ``x`` for a single-input model (what the service has always read), else one
    key per input name."""
    arrays = {"x": xs[inputs[0]["name"]]} if len(inputs) == 1 else dict(xs)
    if y is not None:
        arrays["y"] = y
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())


# -- the version -----------------------------------------------------------------------------
def metadata(described: dict, model, flat, reason, options: ImportOptions, ref: dict) -> dict:
    inputs, outputs = described["inputs"], described["outputs"]
    first = outputs[0]
    single = len(outputs) == 1
    return {
        "format_version": 1,
        "name": options.name,
        "source": "import",
        "task": described["task"],
        "class_names": first.get("class_names") if single else None,
        "threshold": first.get("threshold") if single else None,
        "input": dict(inputs[0]),
        "inputs": inputs,
        "output": {
            "name": first["name"],
            "activation": first.get("activation"),
            "units": first["shape"][-1] if first["shape"] else 1,
        },
        "outputs": outputs,
        "layers": described["layers"],
        "params": int(model.count_params()) if model.built else None,
        "introspection": {"available": flat is not None, "reason": reason},
        "imported_from": {
            "path": str(options.path.resolve()),
            "sha256": sha256_file(options.path),
            "bytes": options.path.stat().st_size,
        },
        "custom_objects_modules": list(options.custom_objects_modules),
        "reference": ref,
    }


def check_loads(folder: Path, meta: dict, model, xs: dict[str, np.ndarray]) -> float:
    """Load the staged folder as a worker does and compare its predictions with the
    model's own on the reference sample; returns the largest difference."""
    import keras

    from service.runtime import LoadError, ModelRuntime

    probe = {
        **meta,
        "version": 0,
        "files": {MODEL_FILE: {"sha256": sha256_file(folder / MODEL_FILE)}},
    }
    runtime = ModelRuntime(folder, probe)
    try:
        runtime.load()
    except LoadError as exc:
        raise RuntimeError(f"the service would refuse this version: {exc}") from None
    names = [s["name"] for s in runtime.inputs]
    batch = {n: xs[n][:16] for n in names}
    served = runtime.predict_outputs(batch if len(names) > 1 else batch[names[0]])
    own = model([batch[n] for n in names] if len(names) > 1 else batch[names[0]], training=False)
    own = keras.tree.flatten(own)
    worst = 0.0
    for (name, got), want in zip(served.items(), own, strict=True):
        want = np.asarray(keras.ops.convert_to_numpy(want), dtype=np.float32)
        diff = float(np.max(np.abs(got - want))) if got.size else 0.0
        if not diff <= 1e-5 * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0):
            raise RuntimeError(
                f"output {name!r} served from the staged version differs from the model by "
                f"{diff:.3g}"
            )
        worst = max(worst, diff)
    return worst


def import_model(options: ImportOptions, log: Callable[[str], None] | None = print) -> Path:
    """Publish ``options.path`` as the next version of ``options.name``; returns its folder.

    Raises InvalidImport for invalid options (nothing is written), anything else for a
    failure while staging (the staging folder is removed; nothing is published)."""
    started = time.perf_counter()
    log = log or (lambda _message: None)
    check_name(options.name)
    check_file(options.path)
    model_root = Path(options.model_dir) / options.name

    def stage(n: int, text: str) -> None:
        log(f"[import {n}/{STAGES}] {text} ({time.perf_counter() - started:.1f}s)")

    stage(1, f"loading {options.path} (safe_mode=True)")
    _import_modules(options.custom_objects_modules)
    model = load_model(options.path)

    stage(2, "describing inputs, outputs and layers")
    plain, _, _ = describe(model, {})
    file = overrides(options, plain)
    described, flat, reason = describe(model, file)
    inputs = described["inputs"]
    for spec in inputs:
        log(f"    input  {spec['name']}: {spec['kind']} {spec['shape']} {spec['dtype']}")
    for out in described["outputs"]:
        log(f"    output {out['name']}: {out['task']} {out['shape']}")
    log(
        f"    layers {len(described['layers'])}"
        + ("" if flat is not None else f" (no graph: {reason}; predictions only)")
    )

    stage(
        3,
        "reading the reference sample"
        if options.reference
        else "making a synthetic reference sample (no --reference given)",
    )
    if options.reference is not None:
        xs, y = read_reference(Path(options.reference), inputs)
        ref = {
            "source": "given",
            "rows": int(len(next(iter(xs.values())))),
            "from": str(Path(options.reference).resolve()),
            "labels": y is not None,
        }
    else:
        xs, ref = synthetic_reference(model, inputs)
        y = None
    ref["file"] = REFERENCE_FILE

    clean_stale(model_root)
    with stage_version(model_root, options.name) as staged:
        lock = _locked(staged.path)
        try:
            stage(4, f"staging in {staged.path}")
            shutil.copyfile(options.path, staged.path / MODEL_FILE)
            write_reference(staged.path / REFERENCE_FILE, xs, y, inputs)
            meta = metadata(described, model, flat, reason, options, ref)
            stage(5, "loading the staged version as the service does")
            worst = check_loads(staged.path, meta, model, xs)
            log(f"    predictions equal the model's own (max |diff| {worst:.2g})")
            staged.metadata.update(meta)
            stage(6, "checksums, metadata.json, rename into place")
        finally:
            os.close(lock)
    with contextlib.suppress(OSError):
        os.utime(model_root)
    log(
        f"== {options.name} v{staged.version} published at {staged.final_path} "
        f"({time.perf_counter() - started:.1f}s)"
        + ("  ** SYNTHETIC REFERENCE SAMPLE **" if ref["source"] == "synthetic" else "")
    )
    return Path(staged.final_path)
