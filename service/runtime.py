"""Model runtimes: the small interface every protocol and the introspection code call.

``ModelRuntime`` is one loaded version of any Keras 3 model: a version our pipeline
published (``metadata.json`` with checksums) or a bare ``model.keras`` dropped into the
repository (its description derived at load by ``service.model_spec``). It composes two
engines behind one small interface (``Engine``):

* ``predictor``: the model's outputs (plain predictions);
* ``inspector``: any set of layers plus the outputs, from ONE forward pass of a function
  over the model's flattened graph (nested models, shared layers, recurrent states).

Both start as ``TensorFlowEngine`` (compiled ``tf.function``s with a ``None`` batch
dimension, traced once at load, called through their concrete functions); an accelerator
(``service.serving.LiteRT``) may replace either with a LiteRT engine that passed its
parity gate. A model without a static graph (subclassed) serves predictions; asking it for
layers raises ``IntrospectionUnavailable`` (422) saying why.

A batch is an ``np.ndarray`` (single-input models) or a mapping of input name to array;
``arrays(x)`` turns either into the list the engines take, in ``model.inputs`` order."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from service import model_spec
from service.errors import IntrospectionUnavailable, LayerNotFound
from training.publish import sha256_file  # the checksum publishing recorded

PREPROCESSING_TYPES = model_spec.PREPROCESSING_TYPES


class LoadError(Exception):
    """A version that cannot be served (bad checksum, bad metadata, unloadable model)."""


@dataclass(frozen=True)
class Limits:
    """What a version may weigh before it is refused (settings ``LAYERSCOPE_MAX_MODEL_*``)."""

    max_model_bytes: int = 0  # 0 = no limit
    max_model_params: int = 0


@runtime_checkable
class Engine(Protocol):
    """What runs a version's compiled functions: TensorFlow or LiteRT."""

    name: str

    def predict(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs, in model order."""

    def run(self, xs: list[np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named entries of the flattened graph (layers and outputs), one pass."""


def read_metadata(path: Path) -> dict:
    """Parse and minimally validate ``metadata.json`` of a published version folder."""
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


def bare_metadata(path: Path, name: str, version: int) -> dict:
    """The starting metadata of a bare version (only ``model.keras``): completed at load."""
    model = Path(path) / "model.keras"
    return {
        "format_version": 1,
        "name": name,
        "version": version,
        "source": "bare",
        "files": {"model.keras": {"bytes": model.stat().st_size if model.is_file() else None}},
    }


class TensorFlowEngine:
    """``predict``: the model itself; ``run``: one functional model over every entry of the
    flattened graph. Both ``tf.function``s take one tensor per model input with a ``None``
    batch dimension (``reduce_retracing``), traced once by ``warm``."""

    name = "tensorflow"

    def __init__(self, model, flat: model_spec.Flat | None, inputs: list[dict]):
        import keras
        import tensorflow as tf

        signature = [
            tf.TensorSpec([None, *spec["shape"]], _tf_dtype(spec["dtype"])) for spec in inputs
        ]
        structure = getattr(model, "_inputs_struct", None)

        def pack(xs):
            if structure is not None and not isinstance(structure, (list, tuple)) and len(xs) == 1:
                return xs[0]
            if structure is not None:
                return keras.tree.pack_sequence_as(structure, list(xs))
            return xs[0] if len(xs) == 1 else list(xs)

        @tf.function(input_signature=signature, reduce_retracing=True)
        def predict_fn(*xs):
            return keras.tree.flatten(model(pack(xs), training=False))

        self._predict_fn = predict_fn
        self._predict_call = None
        self._all_fn = None
        self._all_call = None
        self.entry_names: list[str] = []
        self.multi = None
        if flat is not None:
            multi = flat.model()
            self.multi = multi
            self.entry_names = [e.name for e in flat.entries]

            @tf.function(input_signature=signature, reduce_retracing=True)
            def all_fn(*xs):
                out = multi(xs[0] if len(xs) == 1 else list(xs), training=False)
                return list(out) if isinstance(out, (list, tuple)) else [out]

            self._all_fn = all_fn
        self._index = {n: i for i, n in enumerate(self.entry_names)}

    def warm(self, xs: list[np.ndarray]) -> None:
        """Trace both functions once, then keep their concrete functions: calling one skips
        the tf.function's signature binding and trace-cache lookup (~0.1 ms a call)."""
        self._predict_fn(*xs)
        self._predict_call = self._predict_fn.get_concrete_function()
        if self._all_fn is not None:
            self._all_fn(*xs)
            self._all_call = self._all_fn.get_concrete_function()

    def predict(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(t) for t in self._predict_call(*xs)]

    def run(self, xs: list[np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        outputs = self._all_call(*xs)
        return {n: np.asarray(outputs[self._index[n]]) for n in names}


def _tf_dtype(name: str):
    import tensorflow as tf

    return tf.as_dtype("float32" if name == "bfloat16" else name)


class ModelRuntime:
    """One loaded version. Thread-safe after ``load()``: the compiled functions are traced
    during warm-up and only called afterwards."""

    platform = "tensorflow_keras"

    def __init__(
        self,
        path: Path | str,
        metadata: dict | None = None,
        *,
        model_file: dict | None = None,
        limits: Limits | None = None,
        accelerator=None,
    ):
        self.path = Path(path)
        self.metadata = dict(metadata if metadata is not None else read_metadata(self.path))
        self.name: str = str(self.metadata["name"])
        self.version: int = int(self.metadata["version"])
        self.bare = self.metadata.get("source") == "bare"
        self.model_file = model_file or {}
        self.limits = limits or Limits()
        self.accelerator = accelerator
        self.ready = False
        self.model = None
        self.flat: model_spec.Flat | None = None
        self.introspection_error: str | None = None
        self.load_seconds: float | None = None
        self.verified: bool | None = None  # None until verify(); False: no checksum known
        self._lock = threading.Lock()
        self.inputs: list[dict] = []
        self.outputs: list[dict] = []
        self.layers: list[dict] = []  # the layer table (model_spec.layer_table)
        self.layer_names: list[str] = []
        self.hidden_layer_names: list[str] = []
        self.layer_shapes: dict[str, list[int | None]] = {}
        self.output_layer_names: list[str] = []  # every name a client may ask for
        self._input_names: dict[str, int] = {}
        self.tensorflow: TensorFlowEngine | None = None
        self.predictor: Engine | None = None
        self.inspector: Engine | None = None
        if "input" in self.metadata:  # a published version: known before loading
            spec = self.metadata["input"]
            self.inputs = [
                {"name": "input", "dtype": "float32", **spec, "shape": list(spec["shape"])}
            ]

    # -- loading -----------------------------------------------------------------------
    def expected_sha256(self) -> str | None:
        entry = (self.metadata.get("files") or {}).get("model.keras") or {}
        if entry.get("sha256"):
            return entry["sha256"]
        recorded = (self.model_file.get("versions") or {}).get(self.version) or {}
        return recorded.get("sha256")

    def verify(self) -> None:
        """Compare model.keras with the sha256 recorded at publish time (or in the model's
        serving.yaml), before loading. A bare version with none recorded is unverified."""
        model_path = self.path / "model.keras"
        if not model_path.is_file():
            raise LoadError("model.keras is missing")
        size = model_path.stat().st_size
        limit = self.limits.max_model_bytes
        if limit and size > limit:
            raise LoadError(
                f"model.keras is {size} bytes, over the limit of {limit} bytes "
                "(LAYERSCOPE_MAX_MODEL_BYTES); not loaded"
            )
        expected = self.expected_sha256()
        if not expected:
            if not self.bare:
                raise LoadError("metadata.json has no files['model.keras'].sha256")
            self.verified = False
            return
        actual = sha256_file(model_path)
        if actual != expected:
            where = "serving.yaml" if self.bare else "metadata"
            raise LoadError(
                f"checksum mismatch for model.keras: {where} says sha256 {expected}, "
                f"file has {actual}"
            )
        self.verified = True

    def load(self) -> None:
        with self._lock:
            if self.ready:
                return
            start = time.perf_counter()
            self.verify()
            import keras

            try:
                model = keras.saving.load_model(
                    self.path / "model.keras", safe_mode=True, compile=False
                )
            except Exception as exc:  # any loader failure means: do not serve this version
                raise LoadError(f"keras could not load model.keras: {exc}") from exc
            params = int(model.count_params()) if model.built else 0
            limit = self.limits.max_model_params
            if limit and params > limit:
                raise LoadError(
                    f"the model has {params} parameters, over the limit of {limit} "
                    "(LAYERSCOPE_MAX_MODEL_PARAMS); not loaded"
                )
            self._build(model)
            self.model = model
            self._warm()
            self.load_seconds = time.perf_counter() - start
            self.ready = True
            if self.accelerator is not None and self._accelerate_later():
                self._accelerate_in_background()

    def _build(self, model) -> None:
        try:
            self.flat = model_spec.flatten(model)
        except ValueError as exc:
            self.flat, self.introspection_error = None, str(exc)
        try:
            described = model_spec.describe(
                model, self.flat, None if self.bare else self.metadata, self.model_file
            )
        except model_spec.ModelDescriptionError as exc:
            raise LoadError(str(exc)) from None
        if not self.bare:
            self._check_published(described)
        self.inputs, self.outputs = described["inputs"], described["outputs"]
        self.layers = described["layers"] or self._opaque_layers()
        self._record(described, model)
        self._input_names = {spec["name"]: i for i, spec in enumerate(self.inputs)}
        self.layer_names = [row["name"] for row in self.layers]
        self.layer_shapes = {row["name"]: row["output_shape"] for row in self.layers}
        self.hidden_layer_names = [row["name"] for row in self.layers if row["hidden"]]
        computed = [row["name"] for row in self.layers if row["role"] != "input"]
        self.output_layer_names = computed if self.flat is not None else []
        for out in self.outputs:
            self.layer_shapes.setdefault(out["name"], [None, *out["shape"]])
        self.tensorflow = TensorFlowEngine(model, self.flat, self.inputs)
        self.predictor = self.tensorflow
        self.inspector = self.tensorflow if self.flat is not None else None

    def _check_published(self, described: dict) -> None:
        """The model takes what its metadata records: every input of ``inputs`` (an
        imported multi-input version) or the single legacy ``input``, same shapes."""
        stored = self.metadata.get("inputs") or [self.metadata["input"]]
        want = [[None if d is None else int(d) for d in s["shape"]] for s in stored]
        got = [list(s["shape"]) for s in described["inputs"]]
        if got != want:
            if len(want) == 1 and len(got) == 1:
                raise LoadError(
                    f"model input shape {got[0]} differs from metadata input.shape {want[0]}"
                )
            raise LoadError(f"model input shapes {got} differ from metadata inputs {want}")

    def _opaque_layers(self) -> list[dict]:
        """A subclassed model: its inputs and outputs only (no graph to list)."""
        rows = [
            {
                "index": i,
                "name": s["name"],
                "type": "InputLayer",
                "role": "input",
                "hidden": False,
                "output_shape": [None, *s["shape"]],
                "activation": None,
                "units": None,
                "filters": None,
                "params": 0,
                "parent": None,
            }
            for i, s in enumerate(self.inputs)
        ]
        return rows

    def _record(self, described: dict, model) -> None:
        """Complete the metadata with what was derived (a bare version has nothing else)."""
        md = self.metadata
        md["inputs"] = self.inputs
        md["outputs"] = self.outputs
        md["layers"] = self.layers
        md["introspection"] = {
            "available": self.flat is not None,
            "reason": self.introspection_error,
        }
        if self.bare:
            md["task"] = described["task"]
            first = self.outputs[0]
            md["class_names"] = first.get("class_names") if len(self.outputs) == 1 else None
            md["threshold"] = first.get("threshold") if len(self.outputs) == 1 else None
            md["params"] = int(model.count_params()) if model.built else None
            if len(self.inputs) == 1:
                md["input"] = self.inputs[0]
            md.setdefault("files", {}).setdefault("model.keras", {})["sha256"] = (
                self.expected_sha256() if self.verified else None
            )
        md["checksum"] = "verified" if self.verified else "unverified"

    def warm_batch(self, rows: int = 2) -> list[np.ndarray]:
        """Zeros shaped like every input (unknown inner dimensions as 8)."""
        return [
            np.zeros((rows, *[8 if d is None else d for d in s["shape"]]), _np_dtype(s["dtype"]))
            for s in self.inputs
        ]

    def _warm(self) -> None:
        self.tensorflow.warm(self.warm_batch())
        if self.accelerator is not None and not self._accelerate_later():
            self.accelerator.attach(self)

    def _accelerate_later(self) -> bool:
        """A large model serves through TensorFlow as soon as it is warm, and the
        accelerator converts and gates it in the background (a MobileNetV2's LiteRT
        conversion and parity gates took minutes); its engines then replace TensorFlow's
        by one assignment each."""
        limit = getattr(self.accelerator, "sync_max_params", None)
        params = self.metadata.get("params") or (self.model.count_params() if self.model else 0)
        return bool(limit) and params > limit

    def _accelerate_in_background(self) -> None:
        def run() -> None:
            try:
                self.accelerator.attach(self)
            finally:
                self.accelerator.pending = False

        self.accelerator.pending = True
        threading.Thread(target=run, name=f"layerscope-litert-{self.name}", daemon=True).start()

    def unload(self) -> None:
        """Mark unserved; requests already holding this runtime finish normally and the
        graphs are freed when the last reference goes."""
        self.ready = False

    # -- the served description (compatibility views of the first input / output) --------
    @property
    def input_shape(self) -> tuple:
        return tuple(self.inputs[0]["shape"])

    @property
    def input_kind(self) -> str:
        return self.inputs[0].get("kind", "tensor")

    @property
    def output_layer_name(self) -> str:
        return self.outputs[0]["name"] if self.outputs else "output"

    @property
    def class_names(self) -> list[str]:
        if self.outputs:
            return self.outputs[0].get("class_names") or []
        return [str(c) for c in self.metadata.get("class_names") or []]

    @property
    def task(self) -> str:
        return self.outputs[0]["task"] if self.outputs else str(self.metadata.get("task"))

    @property
    def binary(self) -> bool:
        return self.task == "binary_classification"

    @property
    def threshold(self):
        if self.outputs:
            return self.outputs[0].get("threshold")
        return self.metadata.get("threshold")

    @threshold.setter
    def threshold(self, value) -> None:
        """The first output's decision threshold (a binary classification output)."""
        self.outputs[0]["threshold"] = value

    @property
    def single(self) -> bool:
        """One input and one output: the shape every fast path (batching, LiteRT) takes."""
        return len(self.inputs) == 1 and len(self.outputs) == 1

    # -- inference -----------------------------------------------------------------------
    def arrays(self, x) -> list[np.ndarray]:
        """A batch as one array per model input (dtype and shape checked)."""
        if isinstance(x, Mapping):
            missing = [s["name"] for s in self.inputs if s["name"] not in x]
            if missing:
                raise ValueError(f"missing inputs {missing}")
            xs = [x[s["name"]] for s in self.inputs]
        elif isinstance(x, (list, tuple)) and len(self.inputs) > 1:
            xs = list(x)
        else:
            xs = [x]
        if len(xs) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} inputs, got {len(xs)}")
        out = []
        for spec, value in zip(self.inputs, xs, strict=True):
            arr = np.asarray(value, dtype=_np_dtype(spec["dtype"]))
            want = spec["shape"]
            if arr.ndim != len(want) + 1 or any(
                d is not None and d != g for d, g in zip(want, arr.shape[1:], strict=True)
            ):
                raise ValueError(f"input {spec['name']!r}: expected (n, {want}), got {arr.shape}")
            out.append(arr)
        if len({len(a) for a in out}) > 1:
            raise ValueError(f"inputs have different batch sizes {[len(a) for a in out]}")
        return out

    def predict_outputs(self, x) -> dict[str, np.ndarray]:
        """Every model output by name (float32), one forward pass."""
        if self.predictor is None:
            raise RuntimeError(f"{self.name} v{self.version} is not loaded")
        values = self.predictor.predict(self.arrays(x))
        return {
            o["name"]: np.asarray(v, dtype=np.float32)
            for o, v in zip(self.outputs, values, strict=True)
        }

    def raw_predict(self, x) -> np.ndarray:
        """The first output (binary: (n, 1) sigmoid) — what TF Serving returns for it."""
        if self.predictor is None:
            raise RuntimeError(f"{self.name} v{self.version} is not loaded")
        return np.asarray(self.predictor.predict(self.arrays(x))[0], dtype=np.float32)

    def probabilities(self, raw: np.ndarray, output: dict | None = None) -> np.ndarray:
        """(n, n_classes) from a classification output; binary becomes [1 - p, p]; other
        outputs are returned as they are."""
        raw = np.asarray(raw, dtype=np.float32)
        task = (output or (self.outputs[0] if self.outputs else {})).get("task", self.task)
        if task == "binary_classification" and raw.ndim == 2 and raw.shape[-1] == 1:
            return np.concatenate([1.0 - raw, raw], axis=-1)
        return raw

    def predict(self, x) -> np.ndarray:
        return self.probabilities(self.raw_predict(x))

    def require_graph(self) -> None:
        if self.flat is None:
            raise IntrospectionUnavailable(
                f"model {self.name!r} version {self.version} serves predictions only: "
                f"{self.introspection_error}. Save it as a Functional or Sequential model "
                "to open up its layers"
            )

    def check_layers(self, layers: Sequence[str]) -> None:
        unknown = [name for name in layers if name not in self.layer_shapes]
        if unknown and self.flat is None:
            self.require_graph()
        if unknown:
            raise LayerNotFound(
                f"model {self.name!r} version {self.version} has no layer "
                f"{', '.join(repr(u) for u in unknown)}; available layers: "
                f"{', '.join(self.layer_names)}"
            )

    def activations(self, x, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """Outputs of the named layers (an input's "activation" is the input itself), all
        from one call of the inspector. Unknown names raise LayerNotFound."""
        self.check_layers(layers)
        xs = self.arrays(x)
        wanted = list(dict.fromkeys(n for n in layers if n not in self._input_names))
        result: dict[str, np.ndarray] = {}
        if wanted:
            if self.inspector is None:
                outputs = {o["name"] for o in self.outputs}
                if set(wanted) <= outputs:  # only outputs: the predictor has them
                    result = self.predict_outputs(xs if len(xs) > 1 else xs[0])
                else:
                    self.require_graph()
            else:
                result = self.inspector.run(xs, wanted)
        out = {}
        for name in layers:
            if name in self._input_names:
                out[name] = xs[self._input_names[name]]
            else:
                out[name] = np.asarray(result[name], dtype=np.float32)
        return out

    def predict_with_activations(self, x, layers: Sequence[str]):
        """Probabilities of the first output and the named layers, one forward pass."""
        final = self.output_layer_name
        acts = self.activations(x, list(dict.fromkeys([*layers, final])))
        return self.probabilities(acts[final]), {name: acts[name] for name in layers}

    # -- reference sample ------------------------------------------------------------------
    def reference_path(self) -> Path | None:
        """The version's reference sample: ``reference.npz`` in the version folder, else the
        file serving.yaml names (relative to the model folder)."""
        own = self.path / "reference.npz"
        if own.is_file():
            return own
        named = self.model_file.get("reference")
        if named:
            candidate = self.path.parent / named
            if candidate.is_file():
                return candidate
        return None

    def read_reference(self) -> tuple[list[np.ndarray], np.ndarray | None]:
        """(one array per input, labels or None); raises LookupError when there is none."""
        path = self.reference_path()
        if path is None:
            raise LookupError("no reference.npz in the version folder and none in serving.yaml")
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = set(data.files)
                if len(self.inputs) == 1 and "x" in keys:
                    raw = [data["x"]]
                else:
                    missing = [s["name"] for s in self.inputs if s["name"] not in keys]
                    if missing:
                        raise LookupError(
                            f"{path.name} lacks the arrays {missing} (keys: {sorted(keys)})"
                        )
                    raw = [data[s["name"]] for s in self.inputs]
                y = np.asarray(data["y"]) if "y" in keys else None
        except (OSError, ValueError) as exc:
            raise LookupError(f"{path.name} is unreadable: {exc}") from None
        try:
            xs = self.arrays(raw if len(raw) > 1 else raw[0])
        except ValueError as exc:
            raise LookupError(f"{path.name} does not fit the model: {exc}") from None
        return xs, y

    # -- description -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Metadata for the JSON APIs (no file paths or dataset paths)."""
        md = self.metadata
        return {
            "name": self.name,
            "version": self.version,
            "task": md.get("task"),
            "source": "bare" if self.bare else "published",
            "checksum": md.get("checksum", "verified"),
            "created": md.get("created"),
            "input": md.get("input") if len(self.inputs) == 1 else None,
            "inputs": self.inputs,
            "output": md.get("output"),
            "outputs": self.outputs,
            "class_names": self.class_names if len(self.outputs) == 1 else None,
            "threshold": self.threshold if len(self.outputs) == 1 else None,
            "metrics": md.get("metrics"),
            "layers": self.layers,
            "hidden_layers": self.hidden_layer_names,
            "introspection": md.get("introspection"),
            "libraries": md.get("libraries"),
            "reference": md.get("reference"),
            "reference_sample": self.reference_path() is not None,
            **({"runtime": self.accelerator.describe(self)} if self.accelerator else {}),
        }


def _np_dtype(name: str):
    return model_spec.DTYPES.get(name, np.float32)


# The name every caller and test has used for the TensorFlow runtime.
KerasRuntime = ModelRuntime
