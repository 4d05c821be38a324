"""Atomic publishing of numbered model versions into the model repository.

A version is staged in a hidden temporary folder beside its siblings and renamed into
place only once every file, the checksums and `metadata.json` are written, so a reader
(the service's hot reload) never sees half a version and a failed run leaves nothing.
See docs/DESIGN.md for the layout and the metadata fields.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
MODEL_FILE = "model.keras"
STAGING_PREFIX = ".tmp-"
_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
PREPROCESSING_LAYERS = frozenset({"normalization", "rescaling"})


class PublishError(RuntimeError):
    """The version could not be published; nothing was left in the repository."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large models do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def existing_versions(model_root: str | os.PathLike) -> list[int]:
    """Integer versions published under a model folder (complete ones only)."""
    root = Path(model_root)
    if not root.is_dir():
        return []
    versions = []
    for child in root.iterdir():
        if _VERSION_RE.match(child.name) and (child / METADATA_FILE).is_file():
            versions.append(int(child.name))
    return sorted(versions)


def _next_free_version(root: Path) -> int:
    taken = [int(c.name) for c in root.iterdir() if _VERSION_RE.match(c.name)]
    return max(taken, default=0) + 1


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model was trained with, for reproducibility."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "numpy", "scikit-learn", "jax", "jaxlib"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def _shape(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) and value and isinstance(value[0], list | tuple):
        value = value[0]  # multi-output layers: first output
    return [None if d is None else int(d) for d in value]


def layer_role(layer: Any) -> str:
    """`input`, `preprocessing`, `hidden` or `output`, from the naming contract."""
    if type(layer).__name__ == "InputLayer":
        return "input"
    if layer.name == "output":
        return "output"
    if layer.name in PREPROCESSING_LAYERS:
        return "preprocessing"
    return "hidden"


def layer_table(model: Any) -> list[dict]:
    """One row per layer: what the service and metadata.json expose about it."""
    rows = []
    for index, layer in enumerate(model.layers):
        config = layer.get_config()
        activation = config.get("activation")
        if isinstance(activation, dict):  # serialized activation object
            activation = activation.get("config", {}).get("name") or activation.get("class_name")
        role = layer_role(layer)
        try:
            output_shape = _shape(layer.output.shape)
        except (AttributeError, ValueError):
            output_shape = None
        rows.append(
            {
                "index": index,
                "name": layer.name,
                "type": type(layer).__name__,
                "role": role,
                "hidden": role == "hidden",
                "output_shape": output_shape,
                "params": int(layer.count_params()) if layer.built else 0,
                "activation": activation,
                "units": config.get("units"),
                "filters": config.get("filters"),
            }
        )
    return rows


@dataclass
class StagedVersion:
    """A version being written: put files in `path`, fill `metadata`, then leave the block."""

    name: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int | None = None  # set once published
    final_path: Path | None = None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _finalise(staged: StagedVersion) -> None:
    files = {}
    for file in sorted(staged.path.rglob("*")):
        if file.is_file():
            rel = file.relative_to(staged.path).as_posix()
            files[rel] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    if MODEL_FILE not in files:
        raise PublishError(f"a version needs {MODEL_FILE}; staged files: {sorted(files)}")
    meta = dict(staged.metadata)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta["name"] = staged.name
    meta.setdefault("created", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    meta.setdefault("libraries", library_versions())
    meta["files"] = files
    meta["model_sha256"] = files[MODEL_FILE]["sha256"]
    staged.metadata = meta


def _write_metadata(path: Path, metadata: dict) -> None:
    target = path / METADATA_FILE
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays and paths in metadata become plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")


@contextlib.contextmanager
def stage_version(
    model_root: str | os.PathLike, name: str | None = None
) -> Iterator[StagedVersion]:
    """Stage a new version of the model at `model_root` (`models/<name>`).

    Yields a StagedVersion whose `path` is an empty temporary folder. On a clean exit the
    files are checksummed, `metadata.json` is written last and the folder is renamed to the
    next integer version; on any exception the temporary folder is removed and nothing is
    published.
    """
    root = Path(model_root)
    name = root.name if name is None else name
    if not _NAME_RE.match(name):
        raise PublishError(
            f"model name must match {_NAME_RE.pattern} (lower case, digits, '_' or '-'). "
            f"Received: name={name!r}"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    staged = StagedVersion(name=name, path=tmp)
    try:
        yield staged
        _finalise(staged)
        for _ in range(100):  # another publisher may take a number between our read and rename
            version = _next_free_version(root)
            staged.metadata["version"] = version
            _write_metadata(tmp, staged.metadata)
            final = root / str(version)
            try:
                os.rename(tmp, final)  # atomic on one file system; fails if `final` exists
            except OSError:
                if final.exists():
                    continue
                raise
            _fsync_dir(root)
            staged.version, staged.final_path = version, final
            return
        raise PublishError(f"could not find a free version number under {root}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_stale_staging(model_root: str | os.PathLike) -> list[Path]:
    """Remove staging folders left by a killed run (a crash cannot run `finally`)."""
    removed = []
    root = Path(model_root)
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(STAGING_PREFIX) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


# -- object storage (docs/scaling.md) -------------------------------------------------------
def is_store(root: object) -> bool:
    """An ``s3://bucket/prefix`` repository rather than a folder."""
    return str(root).startswith("s3://")


@contextlib.contextmanager
def publishing_to(root: str | None) -> Iterator[str | None]:
    """``--models-root`` / ``--model-dir`` as the pipeline needs it: a folder as given, or
    for an ``s3://`` repository a local staging root whose published versions are then
    uploaded (every file, ``model.keras`` after the others, ``metadata.json`` renumbered
    and last; readers take a version only once metadata.json and every checksum are in).
    The caller passes the yielded folder to the pipeline and ``upload(version_folder)``."""
    if not is_store(root):
        yield root
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="layerscope-publish-") as tmp:
        yield tmp


def upload(version_folder: str | os.PathLike, url: str) -> str:
    """Upload a published local version to the ``s3://`` repository ``url`` as the next
    version of its model; returns the version's URL."""
    from service.storage import upload_version

    folder = Path(version_folder)
    name = json.loads((folder / METADATA_FILE).read_text())["name"]
    return upload_version(folder, url, name)
