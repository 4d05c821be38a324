"""Attributions for any Keras 3 model with a graph: Grad-CAM on any 4-D layer of an image
input, integrated gradients on float inputs and on the embedding output of integer inputs.

Both are compiled ``tf.function``s with a ``None`` batch dimension, built once per
(loaded version, layer / output) and kept in that version's :class:`Explainers`. They run
over the model's *flattened* graph (``service.model_spec.flatten``: nested models inlined
as ``outer/inner``, shared layers as ``name@k``), so any layer, nested or not, can be
explained, and any output of a multi-output model.

Explained function (per output; ``output`` option, default the first)
    * classification: Grad-CAM differentiates the *logit* of the explained class when the
      output layer is a ``Dense`` with a softmax / sigmoid activation (pre-activation
      recomputed from its kernel and bias; a one-unit sigmoid gives ``+z`` for class 1 and
      ``-z`` for class 0), else the log-probability. Integrated gradients explain the
      *probability* ``f(x)`` of the class (one-unit sigmoid: ``p`` for class 1, ``1 - p``
      for class 0), so completeness reads ``sum(attributions) == f(x) - f(baseline)``.
    * regression: both explain the raw value of one output unit (``unit``, default 0; the
      output's values per instance flattened).

Predicted class
    ``class_index = -1`` asks for the predicted class: argmax of the probabilities, or for a
    one-unit sigmoid ``p >= threshold`` (the output's decision threshold).

Integrated gradients
    Straight path from the baseline to ``x`` with ``steps`` intervals, trapezoidal rule,
    over the *path variables*: every float input, and for every integer input the outputs
    of the ``Embedding`` layers it feeds (the path runs in embedding space; the tokens,
    and so any padding mask computed from them, stay those of ``x``). An embedding
    variable's attributions are summed over the embedding dimension: one number per
    token. Inputs that are not path variables keep their ``x`` values along the whole
    path, so completeness holds for the function of the path variables.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from service import model_spec

MAX_STEPS = 512
EMBEDDING_TYPES = {"Embedding"}


class AttributionError(ValueError):
    """A request the model cannot answer (no image input, no such layer, ...): a 400."""


# -- the flattened graph -------------------------------------------------------------------
def _history(tensor):
    """(operation, node) that produced a symbolic tensor, or (None, None) for an input."""
    hist = getattr(tensor, "_keras_history", None)
    if hist is None:
        return None, None
    op = hist.operation
    nodes = getattr(op, "_inbound_nodes", None) or []
    node = nodes[hist.node_index] if hist.node_index < len(nodes) else None
    if node is None or node.is_input:
        return None, None
    return op, node


def _input_tensor_of(tensor):
    """The first input tensor of the node that produced ``tensor`` (a Dense head's input)."""
    _, node = _history(tensor)
    if node is None or not node.input_tensors:
        return None
    return node.input_tensors[0]


def _ancestor_inputs(tensor, inputs: list) -> set[int]:
    """Indices of the model inputs ``tensor`` depends on."""
    index = {id(t): i for i, t in enumerate(inputs)}
    seen: set[int] = set()
    found: set[int] = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) in index:
            found.add(index[id(t)])
            continue
        _, node = _history(t)
        if node is not None:
            stack.extend(node.input_tensors)
    return found


def _run_graph(graph: keras.Model, xs: list, overrides: dict | None = None) -> list:
    """Execute the functional ``graph`` on ``xs`` (inference mode), replacing the value of
    every symbolic tensor whose id is in ``overrides`` by the given tensor (the node is
    still computed, so its other outputs stay). Returns the graph's outputs as a list."""
    overrides = overrides or {}
    values = {id(x): y for x, y in zip(graph.inputs, xs, strict=True)}
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            if any(id(x) not in values for x in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(values)
            op = node.operation
            if "training" in getattr(op, "_call_context_args", {}):
                kwargs["training"] = False
            outs = keras.tree.flatten(op(*args, **kwargs))
            for x, y in zip(node.outputs, outs, strict=False):
                values[id(x)] = overrides.get(id(x), y)
    return [values[id(x)] for x in graph.outputs]


@dataclass
class Graph:
    """What the explainers need of a model: its flattened graph and served description."""

    flat: model_spec.Flat
    inputs: list[dict]  # runtime.inputs
    outputs: list[dict]  # runtime.outputs

    @classmethod
    def of(cls, model_or_runtime) -> Graph:
        flat = getattr(model_or_runtime, "flat", None)
        if flat is not None and hasattr(model_or_runtime, "inputs"):
            return cls(flat, model_or_runtime.inputs, model_or_runtime.outputs)
        model = model_or_runtime
        flat = model_spec.flatten(model)
        described = model_spec.describe(model, flat)
        return cls(flat, described["inputs"], described["outputs"])

    @property
    def entries(self) -> dict[str, model_spec.Entry]:
        return {e.name: e for e in self.flat.entries}

    def spatial_layers(self) -> list[str]:
        """Entries with a 4-D (batch, h, w, channels) output that depend on an image input."""
        cached = self.__dict__.get("_spatial")
        if cached is None:
            images = {i for i, s in enumerate(self.inputs) if s.get("kind") == "image"}
            cached = self.__dict__["_spatial"] = [
                e.name
                for e in self.flat.entries
                if len(e.tensor.shape) == 4
                and images
                and _ancestor_inputs(e.tensor, self.flat.inputs) & images
            ]
        return list(cached)

    def last_conv_layer(self) -> str:
        spatial = self.spatial_layers()
        entries = self.entries
        convs = [n for n in spatial if "Conv" in type(entries[n].layer).__name__]
        if not convs:
            kinds = ", ".join(f"{s['name']} ({s.get('kind')})" for s in self.inputs)
            hint = f"; pass 'layer', one of {spatial}" if spatial else ""
            raise AttributionError(
                "the model has no convolutional layer over an image input; Grad-CAM needs "
                f"one (inputs: {kinds}){hint}"
            )
        return convs[-1]

    def output(self, which) -> tuple[int, dict]:
        """(index, spec) of an output named or numbered by ``which`` (None: the first)."""
        names = [o["name"] for o in self.outputs]
        if which is None:
            return 0, self.outputs[0]
        if isinstance(which, str) and which in names:
            return names.index(which), self.outputs[names.index(which)]
        if isinstance(which, str) and which.isdigit():
            which = int(which)
        if isinstance(which, int) and not isinstance(which, bool) and 0 <= which < len(names):
            return which, self.outputs[which]
        raise AttributionError(
            f"'output' is {which!r}; expected one of the model's outputs {names} or an index "
            f"0..{len(names) - 1}"
        )

    def output_tensor(self, index: int):
        return self.entries[self.flat.outputs[index]].tensor

    def signature(self) -> list[tf.TensorSpec]:
        return [
            tf.TensorSpec([None, *s["shape"]], _tf_dtype(s["dtype"]), name=_safe(s["name"]))
            for s in self.inputs
        ]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "_" for c in name) or "x"


def _tf_dtype(name: str):
    return tf.as_dtype("float32" if name == "bfloat16" else name)


def is_float(spec: dict) -> bool:
    return spec["dtype"].startswith(("float", "bfloat"))


# -- explained scores ------------------------------------------------------------------------
def _resolve_class(probs, class_index, threshold):
    """class_index where >= 0, else the predicted class (int32, shape (n,))."""
    if probs.shape[-1] == 1:
        predicted = tf.cast(probs[:, 0] >= threshold, tf.int32)
    else:
        predicted = tf.cast(tf.argmax(probs, axis=-1), tf.int32)
    return tf.where(class_index >= 0, class_index, predicted)


def _class_prob(probs, cls):
    if probs.shape[-1] == 1:
        p = probs[:, 0]
        return tf.where(cls == 1, p, 1.0 - p)
    return tf.gather(probs, cls, axis=1, batch_dims=1)


def _unit_value(raw, unit):
    """One unit of a regression output per instance (its values flattened)."""
    flat = tf.reshape(tf.cast(raw, tf.float32), [tf.shape(raw)[0], -1])
    return flat[:, unit]


def classification(spec: dict) -> bool:
    return spec.get("task") in ("binary_classification", "multiclass_classification")


def output_units(spec: dict) -> int | None:
    """Values per instance of an output (None when a dimension is free)."""
    shape = spec.get("shape") or []
    if any(d is None for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def _explained(spec, raw, cls, threshold, unit):
    """(the explained value per instance (IG), the resolved class) of one output."""
    if classification(spec):
        probs = tf.cast(raw, tf.float32)
        cls = _resolve_class(probs, cls, threshold)
        return _class_prob(probs, cls), cls
    return _unit_value(raw, unit), tf.fill(tf.shape(raw)[:1], unit)


class GradCam:
    """Grad-CAM from one 4-D layer; call with a batch and class indices (or a unit)."""

    def __init__(self, graph: Graph, layer: str, output: int = 0) -> None:
        entries = graph.entries
        if layer not in entries:
            raise AttributionError(
                f"Grad-CAM needs a computed layer; {layer!r} is a model input or unknown; "
                f"allowed: {graph.spatial_layers()}"
            )
        target = entries[layer].tensor
        spatial = graph.spatial_layers()
        if len(target.shape) != 4 or layer not in spatial:
            raise AttributionError(
                f"Grad-CAM needs a layer with a (batch, height, width, channels) output "
                f"computed from an image input; {layer!r} outputs {tuple(target.shape)}; "
                f"allowed: {spatial}"
            )
        self.layer = layer
        self.output = output
        spec = graph.outputs[output]
        self.spec = spec
        images = [
            i
            for i in sorted(_ancestor_inputs(target, graph.flat.inputs))
            if graph.inputs[i].get("kind") == "image"
        ]
        self.image_input = images[0]
        in_hw = tuple(graph.inputs[self.image_input]["shape"][:2])
        out_tensor = graph.output_tensor(output)
        head = entries[graph.flat.outputs[output]].layer
        head_in = _input_tensor_of(out_tensor)
        use_logits = (
            classification(spec)
            and isinstance(head, keras.layers.Dense)
            and model_spec.activation_name(head) in ("softmax", "sigmoid")
            and head_in is not None
        )
        sub = keras.Model(
            graph.flat.inputs, [target, out_tensor, *([head_in] if use_logits else [])]
        )
        binary = spec.get("task") == "binary_classification"
        floats = [i for i, s in enumerate(graph.inputs) if is_float(s)]
        is_class = classification(spec)

        @tf.function(
            input_signature=[
                graph.signature(),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((), tf.float32),
                tf.TensorSpec((), tf.int32),
            ],
            reduce_retracing=True,
        )
        def run(xs, class_index, threshold, unit):
            xs = list(xs)
            with tf.GradientTape() as tape:
                for i in floats:
                    tape.watch(xs[i])
                got = _run_graph(sub, xs)
                feats, raw = got[0], got[1]
                if is_class:
                    probs = tf.cast(raw, tf.float32)
                    cls = _resolve_class(probs, class_index, threshold)
                    if use_logits:
                        logits = tf.matmul(got[2], head.kernel)
                        if head.use_bias:
                            logits = logits + head.bias
                        if binary:
                            score = tf.where(cls == 1, logits[:, 0], -logits[:, 0])
                        else:
                            score = tf.gather(logits, cls, axis=1, batch_dims=1)
                    else:
                        score = tf.math.log(_class_prob(probs, cls) + 1e-12)
                else:
                    score = _unit_value(raw, unit)
                    cls = tf.fill(tf.shape(score), unit)
            grads = tape.gradient(score, feats, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * feats, axis=-1))
            peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
            cam = tf.math.divide_no_nan(cam, peak)
            up = tf.image.resize(cam[..., None], in_hw, method="bilinear")[..., 0]
            return cam, up, cls, tf.cast(raw, tf.float32)

        self._run = run
        self._graph = graph

    def __call__(self, x, class_index: np.ndarray, threshold: float = 0.5, unit: int = 0) -> dict:
        """{"cam": (n,h,w) in [0,1], "cam_input": (n,H,W) at the image input's size,
        "class", "probs" (the explained output's raw values)}."""
        xs = _arrays(self._graph, x)
        cam, up, cls, raw = self._run(
            [tf.convert_to_tensor(a) for a in xs],
            tf.convert_to_tensor(class_index, tf.int32),
            tf.constant(threshold, tf.float32),
            tf.constant(unit, tf.int32),
        )
        return {
            "cam": cam.numpy(),
            "cam_input": up.numpy(),
            "class": cls.numpy(),
            "probs": raw.numpy(),
        }


def _arrays(graph: Graph, x) -> list[np.ndarray]:
    """A batch (array, dict by input name, or list) as one array per input, in order."""
    if isinstance(x, dict):
        xs = [x[s["name"]] for s in graph.inputs]
    elif isinstance(x, (list, tuple)):
        xs = list(x)
    else:
        xs = [x]
    return [
        np.asarray(a, dtype=model_spec.DTYPES.get(s["dtype"], np.float32))
        for a, s in zip(xs, graph.inputs, strict=True)
    ]


@dataclass
class PathVariable:
    """One variable integrated gradients run along: a float input or an embedding output."""

    name: str  # the input name, or the embedding layer's name
    input: int  # the model input it comes from
    kind: str  # "input" or "embedding"
    tensor: object  # symbolic tensor in the flattened graph


def path_variables(graph: Graph) -> list[PathVariable]:
    """Every float input, and the Embedding outputs fed by each integer input."""
    out: list[PathVariable] = []
    for i, (spec, t) in enumerate(zip(graph.inputs, graph.flat.inputs, strict=True)):
        if is_float(spec):
            out.append(PathVariable(spec["name"], i, "input", t))
            continue
        for e in graph.flat.entries:
            if type(e.layer).__name__ not in EMBEDDING_TYPES or e.derived or e.output_index:
                continue
            _, node = _history(e.tensor)
            feeds = node is not None and any(id(x) == id(t) for x in node.input_tensors)
            if feeds or (node is not None and _ancestor_inputs(e.tensor, graph.flat.inputs) == {i}):
                out.append(PathVariable(e.name, i, "embedding", e.tensor))
    return out


class IntegratedGradients:
    """Integrated gradients of one output's explained value (see the module docstring)."""

    def __init__(self, graph: Graph, output: int = 0) -> None:
        self.variables = path_variables(graph)
        if not self.variables:
            kinds = ", ".join(f"{s['name']} ({s['dtype']})" for s in graph.inputs)
            raise AttributionError(
                "integrated gradients need a float input or an integer input feeding an "
                f"Embedding layer; this model's inputs are {kinds}"
            )
        self.output = output
        self.spec = spec = graph.outputs[output]
        self._graph = graph
        out_tensor = graph.output_tensor(output)
        embeds = [v for v in self.variables if v.kind == "embedding"]
        floats = {v.input: k for k, v in enumerate(self.variables) if v.kind == "input"}
        sub = keras.Model(graph.flat.inputs, [out_tensor, *(v.tensor for v in embeds)])
        n_in = len(graph.inputs)
        self.input_shape = tuple(graph.inputs[0]["shape"])

        def forward(xs, overrides=None):
            got = _run_graph(sub, xs, overrides)
            return got[0], got[1:]

        @tf.function(reduce_retracing=True)
        def run(xs, bxs, alphas, class_index, threshold, unit, embed_baseline):
            xs, bxs = list(xs), list(bxs)
            raw_x, emb_x = forward(xs)
            score_x, cls = _explained(spec, raw_x, class_index, threshold, unit)
            if embeds and embed_baseline:  # the embeddings of the baseline's tokens
                emb_b = forward([bxs[i] if i not in floats else xs[i] for i in range(n_in)])[1]
            else:
                emb_b = [tf.zeros_like(e) for e in emb_x]
            values_x, values_b, e = [], [], 0
            for v in self.variables:
                if v.kind == "input":
                    values_x.append(tf.cast(xs[v.input], tf.float32))
                    values_b.append(tf.cast(bxs[v.input], tf.float32))
                else:
                    values_x.append(emb_x[e])
                    values_b.append(emb_b[e])
                    e += 1
            m1, n = tf.shape(alphas)[0], tf.shape(raw_x)[0]
            diffs = [vx - vb for vx, vb in zip(values_x, values_b, strict=True)]
            paths = []
            for vb, d in zip(values_b, diffs, strict=True):
                ones = tf.ones([tf.rank(d)], tf.int32)
                a = tf.reshape(alphas, tf.concat([[m1], ones], 0))
                p = vb[None] + a * d[None]  # (m + 1, n, ...)
                paths.append(tf.reshape(p, tf.concat([[m1 * n], tf.shape(d)[1:]], 0)))
            tiled = [
                tf.tile(x, tf.concat([[m1], tf.ones([tf.rank(x) - 1], tf.int32)], 0)) for x in xs
            ]
            with tf.GradientTape() as tape:
                for p in paths:
                    tape.watch(p)
                path_xs = list(tiled)
                overrides = {}
                for k, v in enumerate(self.variables):
                    if v.kind == "input":
                        path_xs[v.input] = tf.cast(paths[k], xs[v.input].dtype)
                    else:
                        overrides[id(v.tensor)] = paths[k]
                raw_path, _ = forward(path_xs, overrides)
                score, _ = _explained(spec, raw_path, tf.tile(cls, [m1]), threshold, unit)
            grads = tape.gradient(score, paths, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            attributions = []
            for g, d in zip(grads, diffs, strict=True):
                g = tf.reshape(g, tf.concat([[m1], tf.shape(d)], 0))
                avg = tf.reduce_mean((g[:-1] + g[1:]) / 2.0, axis=0)
                attributions.append(d * avg)
            f_b = score[:n]
            return attributions, cls, tf.cast(raw_x, tf.float32), score_x, f_b

        self._run = run

    def __call__(
        self,
        x,
        baseline,
        class_index: np.ndarray,
        steps: int = 64,
        threshold: float = 0.5,
        unit: int = 0,
        embed_baseline: bool = False,
    ) -> dict:
        """Attributions per path variable plus the completeness check per instance.

        ``baseline``: one instance (array, or a dict / list per input) broadcast to the
        batch; integer inputs' baselines are token ids, used (``embed_baseline``) as the
        embeddings of those tokens, else the embedding baseline is zeros. For a model with
        one path variable ``attributions`` is its array (the old single-input shape);
        ``per_variable`` always holds every variable's array (embeddings: per token)."""
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}]; received {steps}")
        xs = _arrays(self._graph, x)
        n = len(xs[0])
        bases = _arrays(
            self._graph,
            baseline
            if isinstance(baseline, (dict, list, tuple)) and len(self._graph.inputs) > 1
            else [baseline],
        )
        bxs = []
        for b, a in zip(bases, xs, strict=True):
            b = np.asarray(b, dtype=a.dtype)
            if b.shape == a.shape[1:]:
                b = np.broadcast_to(b, a.shape)
            if b.shape != a.shape:
                raise AttributionError(
                    f"the baseline has shape {list(b.shape)}; expected one instance of shape "
                    f"{list(a.shape[1:])} (or the batch's {list(a.shape)})"
                )
            bxs.append(np.ascontiguousarray(b))
        alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
        attrs, cls, probs, f_x, f_b = self._run(
            [tf.convert_to_tensor(a) for a in xs],
            [tf.convert_to_tensor(b) for b in bxs],
            tf.convert_to_tensor(alphas),
            tf.convert_to_tensor(np.broadcast_to(class_index, (n,)), tf.int32),
            tf.constant(threshold, tf.float32),
            tf.constant(unit, tf.int32),
            bool(embed_baseline),
        )
        attrs = [a.numpy() for a in attrs]
        cls, probs, f_x, f_b = cls.numpy(), probs.numpy(), f_x.numpy(), f_b.numpy()
        per_variable = {}
        total = np.zeros(n, np.float64)
        for v, a in zip(self.variables, attrs, strict=True):
            value = a.sum(axis=-1) if v.kind == "embedding" else a
            per_variable[v.name] = value
            total += value.reshape(n, -1).sum(axis=1, dtype=np.float64)
        delta = f_x.astype(np.float64) - f_b.astype(np.float64)
        abs_err = np.abs(total - delta)
        rel_err = abs_err / np.maximum(np.abs(delta), 1e-6)
        return {
            "attributions": attrs[0] if len(attrs) == 1 else None,
            "per_variable": per_variable,
            "variables": self.variables,
            "class": cls,
            "probs": probs,
            "f_x": f_x,
            "f_baseline": f_b,
            "sum": total,
            "delta": delta,
            "absolute_error": abs_err,
            "relative_error": rel_err,
        }


class Explainers:
    """The compiled attribution functions of one loaded model, each built on first use.

    Built from a runtime (its flattened graph and description) or a plain Keras model
    (flattened here). Hold one per loaded version (the service keys it weakly by runtime);
    it references only the graph, so an unloaded version is freed with its functions."""

    def __init__(self, model_or_runtime) -> None:
        self.graph = Graph.of(model_or_runtime)
        self._lock = threading.Lock()
        self._gradcam: dict[tuple[str, int], GradCam] = {}
        self._ig: dict[int, IntegratedGradients] = {}

    def spatial_layers(self) -> list[str]:
        return self.graph.spatial_layers()

    def gradcam(self, layer: str | None = None, output: int = 0) -> GradCam:
        """Grad-CAM for ``layer`` (default: the last convolutional layer over an image)."""
        layer = layer or self.graph.last_conv_layer()
        with self._lock:
            key = (layer, output)
            if key not in self._gradcam:
                self._gradcam[key] = GradCam(self.graph, layer, output)
            return self._gradcam[key]

    def integrated_gradients(self, output: int = 0) -> IntegratedGradients:
        with self._lock:
            if output not in self._ig:
                self._ig[output] = IntegratedGradients(self.graph, output)
            return self._ig[output]


def spatial_layers(model) -> list[str]:
    """Names of the layers with a 4-D output computed from an image input, in order."""
    return Graph.of(model).spatial_layers()


def last_conv_layer(model) -> str:
    """Name of the last convolutional layer over an image input; ValueError when none."""
    return Graph.of(model).last_conv_layer()
