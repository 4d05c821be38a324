"""Per-model serving options and the LiteRT inference runtime.

``options_for`` merges the global settings (``LAYERSCOPE_RUNTIME``, ``LAYERSCOPE_BATCHING``,
``LAYERSCOPE_BATCH_*``) with a model's entry in ``LAYERSCOPE_SERVING`` (a JSON object keyed
by model name). ``runtime_factory`` is what the repository builds each version with.

``LiteRTRuntime`` is a ``KerasRuntime`` whose plain predictions run a LiteRT (TFLite)
conversion of the same model: the conversion happens once per version at load time and
must match the TensorFlow function on the version's reference sample (max abs difference
<= ``PARITY_TOLERANCE``) before it serves. Activations, attributions and everything else
stay on the TensorFlow path. A version that does not convert or does not match serves
through TensorFlow, with the reason logged and reported in ``describe()``."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime import KerasRuntime

log = logging.getLogger("layerscope.serving")

PARITY_TOLERANCE = 1e-5
_BLOBS: dict[str, bytes] = {}  # sha256 of model.keras -> converted flatbuffer (per process)
_BLOBS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ServingOptions:
    runtime: str
    batching: bool
    batch_max_size: int
    batch_max_delay_ms: float
    batch_queue_size: int


def options_for(settings, name: str) -> ServingOptions:
    """The global serving settings with ``settings.serving[name]`` applied on top."""
    merged: dict[str, Any] = {
        "runtime": settings.runtime,
        "batching": settings.batching,
        "batch_max_size": settings.batch_max_size,
        "batch_max_delay_ms": settings.batch_max_delay_ms,
        "batch_queue_size": settings.batch_queue_size,
    }
    override = (settings.serving or {}).get(name)
    if override is not None:
        merged.update({k: v for k, v in override.model_dump().items() if v is not None})
    return ServingOptions(**merged)


def runtime_factory(settings):
    """``(path, metadata) -> runtime`` choosing the runtime per model."""

    def make(path: Path, metadata: dict):
        choice = options_for(settings, str(metadata.get("name"))).runtime
        if choice == "keras":
            return KerasRuntime(path, metadata)
        return LiteRTRuntime(
            path, metadata, threads=settings.intra_op_threads, required=choice == "litert"
        )

    return make


def convert_to_litert(model) -> bytes:
    """Keras model -> TFLite flatbuffer (float32, no quantisation, ``None`` batch).

    Goes through ``model.export`` (a SavedModel): converting a concrete function of the
    loaded model directly yields NaN outputs in TF 2.21 (its variables are not frozen)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="layerscope-litert-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        return converter.convert()


_QUIET = {"done": False}


def new_interpreter(blob: bytes, threads: int):
    """A LiteRT interpreter. The first one of a process is created with file descriptor 2
    pointed at /dev/null for a moment: LiteRT prints a plain-text "INFO: Created
    TensorFlow Lite XNNPACK delegate" line (once per process) that would break the
    one-JSON-object-per-line log stream. XNNPACK itself is wanted: without it a 64-image
    Fashion-MNIST batch takes 6x longer."""
    from ai_edge_litert.interpreter import Interpreter

    if _QUIET["done"]:
        return Interpreter(model_content=blob, num_threads=threads)
    with _BLOBS_LOCK:
        if _QUIET["done"]:
            return Interpreter(model_content=blob, num_threads=threads)
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            interpreter = Interpreter(model_content=blob, num_threads=threads)
            interpreter.allocate_tensors()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        _QUIET["done"] = True
        return interpreter


class _Slot(threading.local):
    interpreter: Any = None
    rows: int = -1


class LiteRTRuntime(KerasRuntime):
    """Plain predictions through a LiteRT interpreter (one per thread: an interpreter is
    not thread-safe), everything else through the inherited TensorFlow functions."""

    def __init__(self, path, metadata=None, *, threads: int = 1, required: bool = False):
        super().__init__(path, metadata)
        self.threads = max(1, int(threads))
        self.required = required
        self.backend = "tensorflow"
        self.backend_error: str | None = None
        self.parity: float | None = None
        self._blob: bytes | None = None
        self._slot = _Slot()
        self._in_index = self._out_index = 0

    def _build(self, model, tf, keras) -> None:
        super()._build(model, tf, keras)
        self._source_model = model

    def _warm(self) -> None:
        super()._warm()
        model, self._source_model = self._source_model, None
        try:
            self._setup(model)
        except Exception as exc:  # any failure: serve through TensorFlow, say why
            self._blob, self.backend = None, "tensorflow"
            self.backend_error = f"{type(exc).__name__}: {exc}"
            level = logging.ERROR if self.required else logging.WARNING
            log.log(
                level,
                "model %s version %s: LiteRT unavailable (%s); serving with TensorFlow",
                self.name,
                self.version,
                self.backend_error,
            )

    def _setup(self, model) -> None:
        import ai_edge_litert.interpreter  # noqa: F401  (not installed: fail before converting)

        entry = (self.metadata.get("files") or {}).get("model.keras") or {}
        key = str(entry.get("sha256") or hashlib.sha256(repr(self.path).encode()).hexdigest())
        with _BLOBS_LOCK:
            blob = _BLOBS.get(key)
            if blob is None:
                blob = _BLOBS[key] = convert_to_litert(model)
        probe = new_interpreter(blob, self.threads)
        self._in_index = probe.get_input_details()[0]["index"]
        self._out_index = probe.get_output_details()[0]["index"]
        self._blob = blob
        x = self._parity_sample()
        expected = np.asarray(self._predict_fn(x), dtype=np.float32)
        got = self._invoke(x)  # the whole sample as one batch, then row by row
        single = np.concatenate([self._invoke(x[i : i + 1]) for i in range(min(4, len(x)))])
        diff = max(
            float(np.abs(got - expected).max()),
            float(np.abs(single - expected[: len(single)]).max()),
        )
        self.parity = diff
        if not np.isfinite(diff) or diff > PARITY_TOLERANCE:
            raise ValueError(
                f"LiteRT output differs from TensorFlow by {diff:g} on the reference sample "
                f"(tolerance {PARITY_TOLERANCE:g})"
            )
        self._slot = _Slot()  # fresh per-thread interpreters for serving
        self.backend = "litert"

    def _parity_sample(self) -> np.ndarray:
        """The version's reference inputs (what it was trained on), else a fixed noise."""
        try:
            with np.load(self.path / "reference.npz") as ref:
                x = np.asarray(ref["x"], dtype=np.float32)
            if x.shape[1:] == self.input_shape and len(x):
                return np.ascontiguousarray(x)
        except (OSError, KeyError, ValueError):
            pass
        rng = np.random.default_rng(0)
        hi = float((self.metadata["input"].get("value_range") or [0, 1])[1])
        return rng.uniform(0, hi, (64, *self.input_shape)).astype(np.float32)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        slot = self._slot
        interpreter = slot.interpreter
        if interpreter is None:
            interpreter = slot.interpreter = new_interpreter(self._blob, self.threads)
            slot.rows = -1
        if slot.rows != len(x):
            interpreter.resize_tensor_input(self._in_index, x.shape, strict=False)
            interpreter.allocate_tensors()
            slot.rows = len(x)
        interpreter.set_tensor(self._in_index, np.ascontiguousarray(x, dtype=np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(self._out_index)

    def raw_predict(self, x: np.ndarray) -> np.ndarray:
        if self._blob is None:
            return super().raw_predict(x)
        return self._invoke(self._check(x))

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["runtime"] = {
            "predict": self.backend,
            "activations": "tensorflow",
            "litert_parity_max_abs_diff": self.parity,
            "litert_error": self.backend_error,
        }
        return out
