"""What Keras itself computes for a served layer name, independently of service.model_spec.

``model_spec`` re-calls every layer on fresh symbolic inputs to build one function. This
module does not: it takes the ORIGINAL model's own symbolic tensors (found through each
tensor's ``_keras_history``, the way Keras records who produced it) and evaluates them
with ``keras.Model(model.inputs, those tensors)`` called eagerly:

* ``dense`` -> the layer's output tensor in the model's graph;
* ``name@k`` -> the output of the layer's k-th call in this model's graph;
* ``name:k`` -> its k-th output tensor;
* ``outer/inner`` -> the nested model's input at that call is computed first (a
  ``keras.Model`` up to the tensors fed to it), then ``inner`` is evaluated inside the
  nested model on that value, recursively;
* ``rnn:sequence`` -> the recurrent layer's input sequence is computed, then its cell
  is stepped by hand from zero states, one time step at a time (what "the hidden state at
  every step" means), never through the layer itself."""

from __future__ import annotations

import re

import keras
import numpy as np

_NAME = re.compile(r"^(?P<base>[^@:]+)(?:@(?P<call>\d+))?(?::(?P<extra>\d+|sequence))?$")


def _graph_nodes(model) -> set[int]:
    """ids of the nodes of ``model``'s own graph, walking back from its outputs."""
    seen: set[int] = set()
    stack = list(keras.tree.flatten(model.outputs))
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            continue
        op, node_index, _ = history
        node = op._inbound_nodes[node_index]
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(node.input_tensors)
    return seen


def _node(model, base: str, call: int):
    layer = model.get_layer(base)
    members = _graph_nodes(model)
    calls = [n for n in layer._inbound_nodes if id(n) in members]
    if call >= len(calls):
        raise KeyError(f"{base!r} is called {len(calls)} times in {model.name!r}, not {call + 1}")
    return layer, calls[call]


def _evaluate(model, xs: list, tensors: list) -> list[np.ndarray]:
    """``tensors`` of ``model``'s graph, for the input values ``xs``."""
    sub = keras.Model(model.inputs, tensors)
    out = sub(list(xs), training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in out]


def _step_cell(layer, sequence: np.ndarray) -> np.ndarray:
    """(batch, time, units): the layer's cell stepped by hand from zero states."""
    cell = layer.cell
    batch = sequence.shape[0]
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    states = [keras.ops.zeros((batch, int(s))) for s in sizes]
    steps = range(sequence.shape[1])
    if getattr(layer, "go_backwards", False):
        steps = reversed(steps)
    outs = []
    for t in steps:
        h, states = cell(keras.ops.convert_to_tensor(sequence[:, t]), states, training=False)
        states = states if isinstance(states, (list, tuple)) else [states]
        outs.append(np.asarray(keras.ops.convert_to_numpy(h)))
    return np.stack(outs, axis=1)


def activation(model, xs: list, name: str) -> np.ndarray:
    """Keras' own value of the served layer ``name`` for inputs ``xs`` (model.inputs order)."""
    head, _, rest = name.partition("/")
    match = _NAME.match(head)
    if match is None:
        raise KeyError(name)
    base, call = match["base"], int(match["call"] or 0)
    extra = match["extra"]
    for i, t in enumerate(model.inputs):
        layer = t._keras_history[0]
        if not rest and base in (t.name, layer.name):
            return np.asarray(xs[i])
    layer, node = _node(model, base, call)
    if rest:  # a nested model: its input at this call, then the inner name inside it
        inner_xs = _evaluate(model, xs, list(node.input_tensors))
        return activation(layer, inner_xs, rest)
    if extra == "sequence":
        (sequence,) = _evaluate(model, xs, [node.input_tensors[0]])
        return _step_cell(layer, sequence)
    index = int(extra) if extra else 0
    (value,) = _evaluate(model, xs, [keras.tree.flatten(node.outputs)[index]])
    return value


def close(got: np.ndarray, want: np.ndarray) -> tuple[bool, float]:
    """Within 1e-5 x max(1, |value|) elementwise; (ok, worst ratio of error to bound)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False, float("inf")
    bound = 1e-5 * np.maximum(1.0, np.abs(want))
    ratio = np.abs(got - want) / bound
    worst = float(ratio.max()) if ratio.size else 0.0
    return worst <= 1.0, worst


def layer_names(model, prefix: str = "") -> list[str]:
    """Every name the service should list for ``model``, from Keras' own bookkeeping:
    ``model.layers`` (nested models recursed into as ``outer/inner``), each further call
    of a layer in this graph as ``name@k``, extra output tensors as ``name:k``, and
    ``name:sequence`` for a recurrent layer that returns only its last step."""
    members = _graph_nodes(model)
    # the inputs, by their InputLayer's name (what a loaded model calls them; a Sequential
    # does not list its InputLayer in model.layers)
    names = [t._keras_history[0].name for t in model.inputs] if not prefix else []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        calls = [n for n in layer._inbound_nodes if id(n) in members]
        for k, node in enumerate(calls):
            name = prefix + layer.name + (f"@{k}" if k else "")
            if isinstance(layer, keras.Model):
                names.extend(layer_names(layer, name + "/"))
            names.append(name)
            outputs = keras.tree.flatten(node.outputs)
            names.extend(f"{name}:{j}" for j in range(1, len(outputs)))
            rnn = type(layer).__name__ in ("LSTM", "GRU", "SimpleRNN")
            if rnn and not layer.return_sequences:
                names.append(f"{name}:sequence")
    return names


def activations(model, xs: list, names: list[str]) -> dict[str, np.ndarray]:
    """``activation`` for many names, the plain layers of one level in one evaluation."""
    out: dict[str, np.ndarray] = {}
    plain: list[tuple[str, object]] = []
    for name in names:
        head, _, rest = name.partition("/")
        match = _NAME.match(head)
        inputs = {t.name for t in model.inputs} | {t._keras_history[0].name for t in model.inputs}
        if rest or match is None or match["extra"] == "sequence" or name in inputs:
            out[name] = activation(model, xs, name)
            continue
        _, node = _node(model, match["base"], int(match["call"] or 0))
        plain.append((name, keras.tree.flatten(node.outputs)[int(match["extra"] or 0)]))
    if plain:
        values = _evaluate(model, xs, [t for _, t in plain])
        out.update({name: v for (name, _), v in zip(plain, values, strict=True)})
    return {name: out[name] for name in names}
