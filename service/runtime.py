"""Model runtimes: the small interface every protocol and the introspection code call.

``KerasRuntime`` loads one published version and builds two compiled ``tf.function``s
once: ``predict`` (the model) and one multi-output function over every layer, so any set
of hidden layers plus the prediction comes out of ONE forward pass. Both have a ``None``
batch dimension in their input signature (no retracing per batch size) and are warmed
with a reference-shaped zero batch before the version is marked ready."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from service.errors import LayerNotFound
from training.publish import sha256_file  # the checksum publishing recorded

PREPROCESSING_TYPES = {"Normalization", "Rescaling", "Resizing", "CenterCrop"}


class LoadError(Exception):
    """A version that cannot be served (bad checksum, bad metadata, unloadable model)."""


@runtime_checkable
class ModelRuntime(Protocol):
    name: str
    version: int
    metadata: dict
    ready: bool
    layer_names: list[str]
    hidden_layer_names: list[str]

    def load(self) -> None: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]: ...


def read_metadata(path: Path) -> dict:
    """Parse and minimally validate ``metadata.json`` of a version folder."""
    try:
        metadata = json.loads((path / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise LoadError(f"unreadable metadata.json: {exc}") from exc
    if not isinstance(metadata, dict):
        raise LoadError("metadata.json is not a JSON object")
    for key in ("name", "version", "task", "class_names", "input", "files"):
        if key not in metadata:
            raise LoadError(f"metadata.json lacks the required key {key!r}")
    return metadata


class KerasRuntime:
    """One loaded version of a Keras model. Thread-safe after ``load()``: the compiled
    functions are traced during warm-up and only called afterwards."""

    platform = "tensorflow_keras"

    def __init__(self, path: Path | str, metadata: dict | None = None):
        self.path = Path(path)
        self.metadata = metadata if metadata is not None else read_metadata(self.path)
        self.name: str = str(self.metadata["name"])
        self.version: int = int(self.metadata["version"])
        self.ready = False
        self.model = None
        self.load_seconds: float | None = None
        self._lock = threading.Lock()
        spec = self.metadata["input"]
        self.input_kind: str = spec.get("kind", "tabular")
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in spec["shape"])
        self.class_names: list[str] = [str(c) for c in self.metadata["class_names"]]
        self.binary = self.metadata["task"] == "binary_classification"
        self.threshold = self.metadata.get("threshold")
        self.layer_names: list[str] = []
        self.hidden_layer_names: list[str] = []
        self.layer_shapes: dict[str, list[int | None]] = {}
        self._predict_fn = None
        self._all_fn = None
        self._predict_call = None  # concrete functions of the two above, set by _warm()
        self._all_call = None
        self._all_names: list[str] = []
        self.output_layer_name: str = "output"
        self.output_layer_names: list[str] = []
        self._input_names: set[str] = set()

    # -- loading -----------------------------------------------------------------------
    def verify(self) -> None:
        """Compare model.keras with the sha256 recorded at publish time, before loading."""
        entry = (self.metadata.get("files") or {}).get("model.keras") or {}
        expected = entry.get("sha256")
        if not expected:
            raise LoadError("metadata.json has no files['model.keras'].sha256")
        model_path = self.path / "model.keras"
        if not model_path.is_file():
            raise LoadError("model.keras is missing")
        actual = sha256_file(model_path)
        if actual != expected:
            raise LoadError(
                f"checksum mismatch for model.keras: metadata says sha256 {expected}, "
                f"file has {actual}"
            )

    def load(self) -> None:
        with self._lock:
            if self.ready:
                return
            start = time.perf_counter()
            self.verify()
            import keras
            import tensorflow as tf

            try:
                model = keras.saving.load_model(
                    self.path / "model.keras", safe_mode=True, compile=False
                )
            except Exception as exc:  # any loader failure means: do not serve this version
                raise LoadError(f"keras could not load model.keras: {exc}") from exc
            self._build(model, tf, keras)
            self._warm()
            self.model = model
            self.load_seconds = time.perf_counter() - start
            self.ready = True

    def _build(self, model, tf, keras) -> None:
        model_shape = tuple(model.inputs[0].shape[1:])
        if tuple(d for d in model_shape) != self.input_shape:
            raise LoadError(
                f"model input shape {list(model_shape)} differs from metadata input.shape "
                f"{list(self.input_shape)}"
            )
        layers = list(model.layers)
        self.layer_names = [layer.name for layer in layers]
        roles = {e["name"]: e for e in self.metadata.get("layers") or [] if "name" in e}
        self._input_names = {layer.name for layer in layers if type(layer).__name__ == "InputLayer"}
        computed = [layer for layer in layers if layer.name not in self._input_names]
        if roles:
            self.hidden_layer_names = [
                n for n in self.layer_names if roles.get(n, {}).get("hidden")
            ]
        else:  # no layer table: everything between preprocessing and the final layer
            self.hidden_layer_names = [
                layer.name
                for layer in computed[:-1]
                if type(layer).__name__ not in PREPROCESSING_TYPES
            ]
        self.layer_shapes = {
            layer.name: [None, *[int(d) for d in layer.output.shape[1:]]] for layer in layers
        }
        self._all_names = [layer.name for layer in computed]
        self.output_layer_name = self._all_names[-1]
        # every layer a client may ask for: all but InputLayers (their output is the input)
        self.output_layer_names = list(self._all_names)
        signature = [tf.TensorSpec([None, *self.input_shape], tf.float32, name="input")]
        single = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        multi = keras.Model(single, [layer.output for layer in computed])

        @tf.function(input_signature=signature, reduce_retracing=True)
        def predict_fn(x):
            return model(x, training=False)

        @tf.function(input_signature=signature, reduce_retracing=True)
        def all_fn(x):
            out = multi(x, training=False)
            return list(out) if isinstance(out, (list, tuple)) else [out]

        self._predict_fn = predict_fn
        self._all_fn = all_fn
        self._multi = multi

    def _warm(self) -> None:
        """Trace both functions with a zero batch shaped like the served input, then keep
        their concrete functions for requests: calling a ConcreteFunction skips the
        tf.function's per-call signature binding and trace-cache lookup (~0.1 ms a call,
        ~40 % of a small MLP's call; bench/ measures it)."""
        zeros = np.zeros((2, *self.input_shape), np.float32)
        self._predict_fn(zeros)
        self._all_fn(zeros)
        self._predict_call = self._predict_fn.get_concrete_function()
        self._all_call = self._all_fn.get_concrete_function()

    def unload(self) -> None:
        """Mark unserved; requests already holding this runtime finish normally and the
        graphs are freed when the last reference goes."""
        self.ready = False

    # -- inference -----------------------------------------------------------------------
    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"expected (n, {self.input_shape}), got {x.shape}")
        return x

    def raw_predict(self, x: np.ndarray) -> np.ndarray:
        """The model's own output (binary: (n, 1) sigmoid) — what TF Serving would return."""
        fn = self._predict_call
        if fn is None:
            raise RuntimeError(f"{self.name} v{self.version} is not loaded")
        return np.asarray(fn(self._check(x)), dtype=np.float32)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """(n, n_classes) from the final layer's output; binary becomes [1 - p, p]."""
        raw = np.asarray(raw, dtype=np.float32)
        if self.binary and raw.shape[-1] == 1:
            return np.concatenate([1.0 - raw, raw], axis=-1)
        return raw

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities(self.raw_predict(x))

    def check_layers(self, layers: Sequence[str]) -> None:
        unknown = [name for name in layers if name not in self.layer_shapes]
        if unknown:
            raise LayerNotFound(
                f"model {self.name!r} version {self.version} has no layer "
                f"{', '.join(repr(u) for u in unknown)}; available layers: "
                f"{', '.join(self.layer_names)}"
            )

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """Outputs of the named layers (an InputLayer's output is the input itself), all
        from one call of the multi-output function. Unknown names raise LayerNotFound."""
        self.check_layers(layers)
        fn = self._all_call
        if fn is None:
            raise RuntimeError(f"{self.name} v{self.version} is not loaded")
        x = self._check(x)
        wanted = [name for name in layers if name not in self._input_names]
        result: dict[str, np.ndarray] = {}
        if wanted:
            outputs = fn(x)
            index = {name: i for i, name in enumerate(self._all_names)}
            for name in wanted:
                result[name] = np.asarray(outputs[index[name]], dtype=np.float32)
        for name in layers:
            if name in self._input_names:
                result[name] = x
        return {name: result[name] for name in layers}

    def predict_with_activations(
        self, x: np.ndarray, layers: Sequence[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Probabilities and the named layers from the same forward pass."""
        final = self.output_layer_name
        acts = self.activations(x, [*layers, final] if final not in layers else list(layers))
        probs = self.probabilities(acts[final])
        return probs, {name: acts[name] for name in layers}

    # -- description -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Metadata for the JSON APIs (no file paths or dataset paths)."""
        md = self.metadata
        return {
            "name": self.name,
            "version": self.version,
            "task": md.get("task"),
            "created": md.get("created"),
            "input": md.get("input"),
            "output": md.get("output"),
            "class_names": self.class_names,
            "threshold": self.threshold,
            "metrics": md.get("metrics"),
            "layers": md.get("layers")
            or [
                {
                    "index": i,
                    "name": n,
                    "output_shape": self.layer_shapes.get(n),
                    "hidden": n in self.hidden_layer_names,
                }
                for i, n in enumerate(self.layer_names)
            ],
            "hidden_layers": self.hidden_layer_names,
            "libraries": md.get("libraries"),
        }
