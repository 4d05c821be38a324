"""Per-model serving options and the LiteRT inference runtime.

``options_for`` merges the global settings (``LAYERSCOPE_RUNTIME``, ``LAYERSCOPE_BATCHING``,
``LAYERSCOPE_BATCH_*``) with a model's entry in ``LAYERSCOPE_SERVING`` (a JSON object keyed
by model name). ``runtime_factory`` is what the repository builds each version with.

``LiteRTRuntime`` is a ``KerasRuntime`` whose plain predictions run a LiteRT (TFLite)
conversion of the same model: the conversion happens once per version at load time and
must match the TensorFlow function on the version's reference sample (max abs difference
<= ``PARITY_TOLERANCE``) before it serves. Activations get a second conversion, of the
multi-output model over every layer, gated layer by layer (with and without the XNNPACK
delegate; the fastest passing one serves): each layer within ``ACTIVATION_TOLERANCE``, or
with ``activation_parity="layer-scaled"`` within that x max(1, the layer's largest |value|)
(``activation_scale``). Attributions (gradients) and everything else stay on the
TensorFlow path. Whatever does not convert or does not match serves through TensorFlow,
with the reason logged and reported in ``describe()``."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from service.runtime import Limits, ModelRuntime
from service.settings import ActivationParity

log = logging.getLogger("layerscope.serving")

PARITY_TOLERANCE = 1e-5
PARITY_ROWS = 256  # reference rows the gates compare on
# Hidden layers: max abs difference / activation_scale(layer) (setting activation_parity)
ACTIVATION_TOLERANCE = 1e-5
# Outputs of the multi-output interpreter all stay allocated (none can share arena memory)
# and the arena never shrinks after a resize: a 64-image Fashion-MNIST call left ~37 MB in
# each thread's interpreter (2.3 MB at one row). Batches are cut into chunks of at most
# this many output bytes (Fashion-MNIST: 11 images, ~8 MB of arena per thread).
ACTIVATION_CHUNK_BYTES = 4 << 20
# op resolver per candidate, fastest first when both pass
DELEGATES = {"xnnpack": "AUTO", "none": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}
_BLOBS: dict[str, bytes] = {}  # sha256 of model.keras (+ suffix) -> converted flatbuffer
_BLOBS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ServingOptions:
    runtime: str
    batching: bool
    batch_max_size: int
    batch_max_delay_ms: float
    batch_queue_size: int
    activation_parity: str


def options_for(settings, name: str) -> ServingOptions:
    """The global serving settings with ``settings.serving[name]`` applied on top."""
    merged: dict[str, Any] = {
        "runtime": settings.runtime,
        "batching": settings.batching,
        "batch_max_size": settings.batch_max_size,
        "batch_max_delay_ms": settings.batch_max_delay_ms,
        "batch_queue_size": settings.batch_queue_size,
        "activation_parity": settings.activation_parity,
    }
    override = (settings.serving or {}).get(name)
    if override is not None:
        merged.update({k: v for k, v in override.model_dump().items() if v is not None})
    return ServingOptions(**merged)


def runtime_factory(settings):
    """``(path, metadata, model_file) -> runtime``: a ``ModelRuntime`` with the settings'
    limits, composed with the LiteRT accelerator unless the model's runtime is ``keras``."""
    limits = Limits(settings.max_model_bytes, settings.max_model_params)

    def make(path: Path, metadata: dict, model_file: dict | None = None):
        options = options_for(settings, str(metadata.get("name")))
        accelerator = None
        if options.runtime != "keras":
            accelerator = LiteRT(
                threads=settings.intra_op_threads,
                required=options.runtime == "litert",
                activation_parity=options.activation_parity,
                sync_max_params=settings.litert_sync_max_params,
            )
        return ModelRuntime(
            path, metadata, model_file=model_file, limits=limits, accelerator=accelerator
        )

    return make


def activation_scale(values: np.ndarray, parity: str = "absolute") -> float:
    """What a layer's max abs difference is divided by before it is held to
    ``ACTIVATION_TOLERANCE``. "absolute" (the default): 1. "layer-scaled": max(1, largest
    |value| of the layer), the normwise relative error with a floor, so layers within
    [-1, 1] (probabilities, most normalised inputs) keep the absolute 1e-5. Why offer it:
    a Dense layer of 3,136 float32 products summed in another order (XNNPACK vs oneDNN)
    lands ~2e-6 of its range apart; for a range of 34 that is 7.6e-5 absolute, above 1e-5
    although each value agrees to 6 significant digits."""
    if parity == "absolute" or not values.size:
        return 1.0
    return max(1.0, float(np.abs(values).max()))


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


def new_interpreter(blob: bytes, threads: int, delegate: str = "xnnpack"):
    """A LiteRT interpreter. The first XNNPACK one of a process is created with file
    descriptor 2 pointed at /dev/null for a moment: LiteRT prints a plain-text "INFO:
    Created TensorFlow Lite XNNPACK delegate" line (once per process) that would break the
    one-JSON-object-per-line log stream. XNNPACK itself is wanted: without it a 64-image
    Fashion-MNIST batch takes 6x longer. ``delegate="none"`` runs the built-in kernels
    only (different float summation order: sometimes closer to TensorFlow)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if delegate not in DELEGATES:
        raise ValueError(f"delegate {delegate!r}; expected one of {sorted(DELEGATES)}")
    resolver = getattr(OpResolverType, DELEGATES[delegate])

    def make():
        return Interpreter(
            model_content=blob, num_threads=threads, experimental_op_resolver_type=resolver
        )

    if _QUIET["done"] or delegate != "xnnpack":
        return make()
    with _BLOBS_LOCK:
        if _QUIET["done"]:
            return make()
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            interpreter = make()
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


def signature_tensors(interpreter, count: int) -> tuple[int, list[int]]:
    """(input tensor index, output tensor index per Keras output) of an exported model.

    ``get_output_details()`` is not in Keras' output order (seen shuffled), and the
    signature lists its outputs sorted as strings (output_0, output_1, output_10, ...):
    the integer suffix of the serving signature's ``output_<i>`` names is the Keras index."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(f"expected one signature in the converted model, got {signatures}")
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    inputs = runner.get_input_details()
    outputs = {name: d["index"] for name, d in runner.get_output_details().items()}
    wanted = [f"output_{i}" for i in range(count)]
    if len(inputs) != 1 or sorted(outputs) != sorted(wanted):
        raise ValueError(
            f"converted signature has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"expected one input and output_0..output_{count - 1}"
        )
    index = next(iter(inputs.values()))["index"]
    if index != interpreter.get_input_details()[0]["index"]:  # not the main subgraph
        raise ValueError(f"signature input is tensor {index}, not the interpreter's input")
    return index, [outputs[name] for name in wanted]


class InterpreterPool:
    """Per-thread LiteRT interpreters of one converted model (an interpreter is not
    thread-safe), each resized when the batch size changes, with the tensor index of every
    named output. Serves plain predictions (one output) and activations (every layer)."""

    def __init__(
        self,
        blob: bytes,
        *,
        input_index: int,
        index: dict[str, int],
        threads: int,
        delegate: str = "xnnpack",
        max_rows: int | None = None,
    ):
        self.blob, self.threads, self.delegate = blob, threads, delegate
        self.input_index, self.index = input_index, index
        self.max_rows = None if max_rows is None else max(1, int(max_rows))
        self._slot = _Slot()

    @classmethod
    def for_signature(
        cls, blob: bytes, names: Sequence[str], *, threads: int, delegate: str, max_rows: int
    ) -> InterpreterPool:
        """A pool over a multi-output conversion, its outputs named after ``names`` (the
        Keras output order) through the serving signature."""
        probe = new_interpreter(blob, threads, delegate)
        input_index, indices = signature_tensors(probe, len(names))
        return cls(
            blob,
            input_index=input_index,
            index=dict(zip(names, indices, strict=True)),
            threads=threads,
            delegate=delegate,
            max_rows=max_rows,
        )

    def reset(self) -> None:
        """Drop the interpreters made so far (the loading thread's is sized for the whole
        reference sample)."""
        self._slot = _Slot()

    def run(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named outputs for the float32 batch ``x`` (at least one row)."""
        step = self.max_rows
        if step is None or len(x) <= step:
            return self._invoke(x, names)
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(x), step):  # filled in place: no second full-size copy
            for name, values in self._invoke(x[start : start + step], names).items():
                if name not in out:
                    out[name] = np.empty((len(x), *values.shape[1:]), values.dtype)
                out[name][start : start + len(values)] = values
        return out

    def _invoke(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        slot = self._slot
        interpreter = slot.interpreter
        if interpreter is None:
            interpreter = slot.interpreter = new_interpreter(self.blob, self.threads, self.delegate)
            slot.rows = -1
        try:
            if slot.rows != len(x):
                slot.rows = -1
                interpreter.resize_tensor_input(self.input_index, x.shape, strict=False)
                interpreter.allocate_tensors()
                slot.rows = len(x)
            interpreter.set_tensor(self.input_index, np.ascontiguousarray(x, dtype=np.float32))
            interpreter.invoke()
            # get_tensor copies: the arrays survive this thread's next invoke. Layers that
            # are one tensor (inference-time Dropout is an identity) share one copy.
            copies: dict[int, np.ndarray] = {}
            out = {}
            for name in names:
                index = self.index[name]
                values = copies.get(index)
                if values is None:
                    values = copies[index] = interpreter.get_tensor(index)
                out[name] = values
            return out
        except Exception:
            slot.interpreter = None  # a half-resized interpreter is not reused
            raise


class LiteRTEngine:
    """An ``Engine`` over one interpreter pool (a single float32 input): plain predictions
    (the pool's one output) or any of the flattened graph's entries. An empty batch, which
    XNNPACK cannot reshape to, goes to the TensorFlow engine."""

    name = "litert"

    def __init__(self, pool: InterpreterPool, fallback, outputs: Sequence[str]):
        self.pool, self.fallback, self.outputs = pool, fallback, list(outputs)

    @property
    def delegate(self) -> str:
        return self.pool.delegate

    def predict(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        if not len(xs[0]):
            return self.fallback.predict(xs)
        got = self.pool.run(np.ascontiguousarray(xs[0], dtype=np.float32), self.outputs)
        return [got[n] for n in self.outputs]

    def run(self, xs: list[np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        if not len(xs[0]):
            return self.fallback.run(xs, names)
        return self.pool.run(np.ascontiguousarray(xs[0], dtype=np.float32), list(names))


class LiteRT:
    """The accelerator a runtime is composed with (``ModelRuntime(accelerator=LiteRT())``):
    after the TensorFlow engine is warm, ``attach`` converts the model (once per process
    and version) and makes LiteRT the runtime's ``predictor`` where the conversion matches
    TensorFlow within ``PARITY_TOLERANCE`` on the reference sample, and its ``inspector``
    where every layer of the multi-output conversion passes its gate. Whatever fails keeps
    its TensorFlow engine, with the reason logged and reported in ``describe``. LiteRT
    takes models with one float32 input of fixed shape and one output."""

    def __init__(
        self,
        *,
        threads: int = 1,
        required: bool = False,
        activation_parity: str = "absolute",
        sync_max_params: int = 0,
    ):
        allowed = get_args(ActivationParity)
        if activation_parity not in allowed:
            raise ValueError(
                f"activation_parity must be {' or '.join(map(repr, allowed))}. "
                f"Received: activation_parity={activation_parity!r}"
            )
        self.threads = max(1, int(threads))
        self.required = required
        # models with more parameters are accelerated after they serve (0: always at load)
        self.sync_max_params = int(sync_max_params)
        self.pending = False  # converting in the background; TensorFlow serves meanwhile
        self.activation_parity = activation_parity
        self.backend = "tensorflow"
        self.backend_error: str | None = None
        self.parity: float | None = None
        self.predictor: LiteRTEngine | None = None
        self.activations_backend = "tensorflow"
        self.activations_error: str | None = None
        self.activations_parity: float | None = None  # max abs difference, any layer
        self.activations_parity_scaled: float | None = None  # max of abs diff / scale
        self.inspector: LiteRTEngine | None = None

    # -- attaching -------------------------------------------------------------------------
    def attach(self, runtime) -> None:
        unsupported = _unsupported(runtime)
        try:
            if unsupported:
                raise ValueError(unsupported)
            self._setup(runtime)
            runtime.predictor = self.predictor
        except Exception as exc:  # any failure: serve through TensorFlow, say why
            self.predictor, self.backend = None, "tensorflow"
            self.backend_error = f"{type(exc).__name__}: {exc}"
            level = logging.ERROR if self.required and not unsupported else logging.WARNING
            log.log(
                level,
                "model %s version %s: LiteRT unavailable (%s); serving with TensorFlow",
                runtime.name,
                runtime.version,
                self.backend_error,
            )
        try:
            if unsupported:
                raise ValueError(unsupported)
            if runtime.inspector is None:
                raise ValueError(runtime.introspection_error or "no graph")
            self._setup_activations(runtime)
            runtime.inspector = self.inspector
        except Exception as exc:  # any failure: activations through TensorFlow, say why
            self.inspector, self.activations_backend = None, "tensorflow"
            self.activations_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "model %s version %s: LiteRT activations unavailable (%s); serving them "
                "with TensorFlow",
                runtime.name,
                runtime.version,
                self.activations_error,
            )

    def _converted(self, runtime, model, suffix: str = "") -> bytes:
        """The flatbuffer of ``model``, converted once per process and version."""
        import ai_edge_litert.interpreter  # noqa: F401  (not installed: fail before converting)

        key = runtime.expected_sha256() or hashlib.sha256(repr(runtime.path).encode()).hexdigest()
        with _BLOBS_LOCK:
            blob = _BLOBS.get(key + suffix)
            if blob is None:
                blob = _BLOBS[key + suffix] = convert_to_litert(model)
        return blob

    def _setup(self, runtime) -> None:
        blob = self._converted(runtime, runtime.model)
        probe = new_interpreter(blob, self.threads)
        pool = InterpreterPool(
            blob,
            input_index=probe.get_input_details()[0]["index"],
            index={"output": probe.get_output_details()[0]["index"]},
            threads=self.threads,
        )
        engine = LiteRTEngine(pool, runtime.tensorflow, ["output"])
        x = parity_sample(runtime)
        expected = runtime.tensorflow.predict([x])[0]
        got = engine.predict([x])[0]  # the whole sample as one batch, then row by row
        single = np.concatenate([engine.predict([x[i : i + 1]])[0] for i in range(min(4, len(x)))])
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
        pool.reset()  # fresh per-thread interpreters for serving
        self.predictor, self.backend = engine, "litert"

    def _setup_activations(self, runtime) -> None:
        """Convert the multi-output model; serve activations with the fastest delegate whose
        every layer matches TensorFlow on the reference sample, else raise saying why."""
        tf_engine = runtime.tensorflow
        blob = self._converted(runtime, tf_engine.multi, ":activations")
        names, x = tf_engine.entry_names, parity_sample(runtime)
        row_bytes = 4 * sum(int(np.prod(runtime.layer_shapes[n][1:])) for n in names)
        passed: list[tuple[float, LiteRTEngine, tuple[float, float]]] = []
        failures, diffs = [], []
        for delegate in DELEGATES:
            try:
                pool = InterpreterPool.for_signature(
                    blob,
                    names,
                    threads=self.threads,
                    delegate=delegate,
                    max_rows=ACTIVATION_CHUNK_BYTES // max(1, row_bytes),
                )
                engine = LiteRTEngine(pool, tf_engine, runtime.output_layer_names[-1:])
                scaled, diff, layer, layer_diff = self._activation_parity(tf_engine, engine, x)
            except Exception as exc:  # this delegate does not run the model: try the next
                failures.append(f"{delegate}: {type(exc).__name__}: {exc}")
                continue
            diffs.append((scaled, diff))
            if np.isfinite(scaled) and scaled <= ACTIVATION_TOLERANCE:
                passed.append((_seconds_per_call(pool, x, names), engine, (scaled, diff)))
            else:
                failures.append(
                    f"{delegate}: layer {layer!r} differs by {layer_diff:g}"
                    + (f" ({scaled:g} of its scale)" if scaled != layer_diff else "")
                )
        finite = [d for d in diffs if np.isfinite(d[0])]
        self.activations_parity_scaled, self.activations_parity = (
            min(finite) if finite else (None, None)
        )
        if not passed:
            raise ValueError(
                "LiteRT activations differ from TensorFlow on the reference sample "
                f"(tolerance {self._tolerance_text()}): {'; '.join(failures)}"
            )
        _, engine, (self.activations_parity_scaled, self.activations_parity) = min(
            passed, key=lambda p: p[0]
        )
        engine.pool.reset()  # fresh per-thread interpreters for serving
        self.inspector, self.activations_backend = engine, "litert"

    def _tolerance_text(self) -> str:
        if self.activation_parity == "absolute":
            return f"{ACTIVATION_TOLERANCE:g}"
        return f"{ACTIVATION_TOLERANCE:g} x max(1, max |layer value|)"

    def _activation_parity(
        self, tf_engine, engine: LiteRTEngine, x: np.ndarray
    ) -> tuple[float, float, str, float]:
        """(worst max abs difference / activation_scale, worst max abs difference, the
        layer of the first and its max abs difference) of the engine against TensorFlow
        over every layer, for the whole sample and its first rows one by one (same batch
        on both sides: TensorFlow itself differs across batch sizes). NaNs if any value is
        not finite."""
        names = tf_engine.entry_names
        worst, worst_abs, where, where_diff = 0.0, 0.0, names[0], 0.0
        for batch in [x, *(x[i : i + 1] for i in range(min(4, len(x))))]:
            expected = tf_engine.run([batch], names)
            got = engine.run([batch], names)
            for name in names:
                want = np.asarray(expected[name], dtype=np.float32)
                if got[name].shape != want.shape:
                    raise ValueError(
                        f"LiteRT output of layer {name!r} has shape {got[name].shape}, "
                        f"TensorFlow's {want.shape}"
                    )
                diff = float(np.abs(got[name] - want).max())
                if not np.isfinite(diff):
                    return float("nan"), float("nan"), name, diff
                scaled = diff / activation_scale(want, self.activation_parity)
                worst_abs = max(worst_abs, diff)
                if scaled > worst:
                    worst, where, where_diff = scaled, name, diff
        return worst, worst_abs, where, where_diff

    # -- reporting -------------------------------------------------------------------------
    def describe(self, runtime=None) -> dict[str, Any]:
        return {
            "predict": self.backend,
            "activations": self.activations_backend,
            "litert_pending": self.pending,
            "litert_parity_max_abs_diff": self.parity,
            "litert_error": self.backend_error,
            "litert_activations_delegate": self.inspector.delegate if self.inspector else None,
            "litert_activations_parity_max_abs_diff": self.activations_parity,
            "litert_activations_parity_scaled_diff": self.activations_parity_scaled,
            "litert_activations_tolerance": self._tolerance_text(),
            "litert_activations_error": self.activations_error,
        }


def _unsupported(runtime) -> str | None:
    """Why LiteRT does not take this model, or None."""
    if not runtime.single:
        return (
            f"LiteRT serves single-input, single-output models; this one has "
            f"{len(runtime.inputs)} inputs and {len(runtime.outputs)} outputs"
        )
    spec = runtime.inputs[0]
    if spec["dtype"] != "float32" or any(d is None for d in spec["shape"]):
        return (
            f"LiteRT serves float32 inputs of fixed shape; input {spec['name']!r} is "
            f"{spec['dtype']} {spec['shape']}"
        )
    return None


def parity_sample(runtime) -> np.ndarray:
    """The version's reference inputs (what it was trained on), else a fixed noise."""
    try:
        xs, _ = runtime.read_reference()
        if len(xs[0]):  # the first PARITY_ROWS: the gate's cost stays bounded
            return np.ascontiguousarray(xs[0][:PARITY_ROWS], dtype=np.float32)
    except LookupError:
        pass
    rng = np.random.default_rng(0)
    hi = float((runtime.inputs[0].get("value_range") or [0, 1])[1])
    return rng.uniform(0, hi, (64, *runtime.input_shape)).astype(np.float32)


def LiteRTRuntime(  # noqa: N802  (reads like the class it replaced)
    path, metadata=None, *, threads: int = 1, required: bool = False,
    activation_parity: str = "absolute", **kwargs,
) -> ModelRuntime:
    """A runtime composed with the LiteRT accelerator."""
    accelerator = LiteRT(threads=threads, required=required, activation_parity=activation_parity)
    return ModelRuntime(path, metadata, accelerator=accelerator, **kwargs)


def _seconds_per_call(engine: InterpreterPool, x: np.ndarray, names: Sequence[str]) -> float:
    """Median time of a one-row call plus that of a 32-row call, over every layer: what
    picks the delegate. Both sizes count: for the fraud MLP the two are equally fast on
    one row while XNNPACK is 3x faster on 64 rows (reference statistics, big requests)."""
    total = 0.0
    for batch in (x[:1], x[:32]):
        times = []
        for _ in range(15):
            start = time.perf_counter()
            engine.run(batch, names)
            times.append(time.perf_counter() - start)
        total += float(np.median(times))
    return total
