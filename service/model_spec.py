"""What a loaded Keras model serves: its inputs, outputs, task and every layer.

This is the one place that turns a ``keras.Model`` into the service's description of it.
Everything else (protocols, introspection, metrics, the explorer page) reads the result.

``flatten(model)`` walks the model's graph once and re-calls every layer on fresh
symbolic inputs, descending into nested models (a functional backbone inside a
Sequential, a ``keras.applications`` network inside a head): the tensors it collects
become the outputs of ONE functional model, so any set of layers, nested or not, comes
out of one forward pass. Names:

* a layer of the outer model keeps its own name (``dense_1``);
* a layer of a nested model is ``outer/inner`` (Keras forbids ``/`` in layer names, so
  this is unambiguous), nested as deep as the model goes;
* the k-th call (k >= 1) of a layer called more than once is ``name@k`` (the first call
  is plain ``name``);
* a layer with several output tensors (an LSTM with ``return_state``) names the extra
  ones ``name:1``, ``name:2``, ...;
* a recurrent layer without ``return_sequences`` also offers its hidden-state sequence,
  ``name:sequence`` (batch, time, units): the layer's "memory" at every step, computed by
  a copy of the layer that returns sequences; its last step is the layer's output.

``describe(model, ...)`` derives the served description: every input (name, shape,
dtype, kind), every output (name, shape, activation, task, classes), the task, and the
full layer table. What cannot be derived (class names, a threshold, which inputs are
images, feature names) comes from the version's published metadata or the per-model
``serving.yaml`` (``service/model_file.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PREPROCESSING_TYPES = {
    "Normalization",
    "Rescaling",
    "Resizing",
    "CenterCrop",
    "TextVectorization",
    "StringLookup",
    "IntegerLookup",
}
RECURRENT_TYPES = {"LSTM", "GRU", "SimpleRNN"}
# served input dtypes; strings (TextVectorization inputs) are refused at load
DTYPES = {
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
    "bfloat16": np.float32,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}
TASKS = ("binary_classification", "multiclass_classification", "regression")


class ModelDescriptionError(ValueError):
    """The model cannot be served as described (unsupported input dtype, bad override)."""


@dataclass
class Entry:
    """One served layer output in the flattened graph."""

    name: str
    layer: Any  # the Keras layer (or nested model) that produced it
    tensor: Any  # its symbolic tensor in the flattened graph
    parent: str | None = None  # path of the enclosing nested model, None at the top
    call: int = 0  # which call of a shared layer
    derived: str | None = None  # "sequence": an RNN's hidden states at every step
    output_index: int = 0  # which output tensor of a multi-output layer


@dataclass
class Flat:
    """The model's graph flattened: fresh inputs, every layer output, the model outputs."""

    inputs: list  # symbolic inputs, in model.inputs order
    entries: list[Entry] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # entry names of the model outputs

    def model(self):
        """One functional model over every entry (the activations function)."""
        import keras

        single = self.inputs[0] if len(self.inputs) == 1 else list(self.inputs)
        return keras.Model(single, [e.tensor for e in self.entries], name="layerscope_all")


def has_graph(model) -> bool:
    """A static graph to walk: a Functional model or a built Sequential."""
    import keras

    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None) is not None
    return bool(getattr(model, "_nodes_by_depth", None)) and bool(getattr(model, "inputs", None))


def _graph(model):
    import keras

    return model._functional if isinstance(model, keras.Sequential) else model


def flatten(model) -> Flat:
    """Walk ``model`` (see the module docstring); raises ValueError without a graph."""
    import keras

    if not has_graph(model):
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) has no static graph (a subclassed "
            "model): its layers cannot be addressed"
        )
    inputs = [
        keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=_input_name(t, i))
        for i, t in enumerate(_graph(model).inputs)
    ]
    flat = Flat(inputs)
    outputs = _walk(model, inputs, "", None, flat)
    by_id = {id(e.tensor): e.name for e in flat.entries}
    flat.outputs = [by_id[id(t)] for t in outputs]
    return flat


def _input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return str(name)


def _walk(model, tensors: list, prefix: str, parent: str | None, flat: Flat) -> list:
    """Re-call every node of ``model``'s graph on ``tensors``; returns its outputs."""
    import keras

    graph = _graph(model)
    known = {id(x): t for x, t in zip(graph.inputs, tensors, strict=True)}
    nodes = [
        n for d in sorted(graph._nodes_by_depth, reverse=True) for n in graph._nodes_by_depth[d]
    ]
    members = {id(n) for n in nodes}
    for node in nodes:
        op = node.operation
        if node.is_input or op is None:
            continue
        if any(id(x) not in known for x in node.input_tensors):
            continue  # not reachable from the inputs (cannot happen in a built model)
        args, kwargs = node.arguments.fill_in(known)
        calls = [n for n in op._inbound_nodes if id(n) in members]
        call = next((i for i, n in enumerate(calls) if n is node), 0)
        name = prefix + op.name + (f"@{call}" if call else "")
        if isinstance(op, keras.Model) and has_graph(op):
            sub_in = keras.tree.flatten(args[0] if len(args) == 1 else list(args))
            outs = _walk(op, sub_in, name + "/", name, flat)
            result = outs[0] if len(outs) == 1 else outs
        else:
            result = op(*args, **kwargs)
        outs = keras.tree.flatten(result)
        for k, tensor in enumerate(outs):
            if dtype_name(tensor.dtype) == "bool":
                continue  # a mask computed by the graph (Embedding(mask_zero=True)), not a layer
            flat.entries.append(
                Entry(
                    name if k == 0 else f"{name}:{k}",
                    op,
                    tensor,
                    parent=parent,
                    call=call,
                    output_index=k,
                )
            )
        sequence = _hidden_sequence(op, args, kwargs)
        if sequence is not None:
            flat.entries.append(
                Entry(
                    f"{name}:sequence", op, sequence, parent=parent, call=call, derived="sequence"
                )
            )
        for x, y in zip(node.outputs, outs, strict=False):
            known[id(x)] = y
    return [known[id(x)] for x in graph.outputs]


def _hidden_sequence(op, args, kwargs):
    """For an LSTM / GRU / SimpleRNN without return_sequences: the same cell over the same
    inputs, returning every step (weights copied from the layer)."""
    if type(op).__name__ not in RECURRENT_TYPES or getattr(op, "return_sequences", True):
        return None
    config = {**op.get_config(), "return_sequences": True, "return_state": False}
    config["name"] = f"{op.name}_sequence"
    twin = type(op).from_config(config)
    out = twin(*args, **kwargs)
    twin.set_weights(op.get_weights())
    return out


# -- description ---------------------------------------------------------------------------
def activation_name(layer) -> str | None:
    """The activation a layer applies last (Dense/Conv ``activation``, an Activation or
    Softmax layer), or None."""
    kind = type(layer).__name__
    if kind == "Softmax":
        return "softmax"
    if kind == "ReLU":
        return "relu"
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", None)
    if name is None and isinstance(act, str):
        name = act
    return name


def output_task(activation: str | None, shape: tuple) -> str:
    """binary (one sigmoid unit), multiclass (a softmax vector), else regression."""
    if activation == "sigmoid" and len(shape) == 1 and shape[0] == 1:
        return "binary_classification"
    if activation == "softmax" and len(shape) == 1 and (shape[0] or 0) >= 2:
        return "multiclass_classification"
    return "regression"


def _dims(shape) -> list[int | None]:
    return [None if d is None else int(d) for d in shape]


def dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    return name.replace("tf.", "")


def input_kind(shape: list, dtype: str) -> str:
    """image (H x W x 1|3 floats or uint8), tabular (a float vector), sequence (a vector
    of integer ids), else tensor."""
    known = all(d is not None for d in shape)
    integer = dtype.startswith(("int", "uint"))
    if len(shape) == 3 and known and shape[2] in (1, 3) and shape[0] >= 8 and shape[1] >= 8:
        return "image"
    if len(shape) == 1 and integer:
        return "sequence"
    if len(shape) == 1 and known and not integer:
        return "tabular"
    return "tensor"


def _spec_inputs(model, flat: Flat | None) -> list[tuple[str, list, str]]:
    """(name, shape without batch, dtype) of every model input."""
    if flat is not None:
        return [(t.name, _dims(t.shape[1:]), dtype_name(t.dtype)) for t in flat.inputs]
    shape = None
    try:
        shape = (model.get_build_config() or {}).get("input_shape")
    except Exception:  # a model that was never built
        shape = None
    if shape is None:
        raise ModelDescriptionError(
            f"model {model.name!r} has neither a static graph nor a recorded input shape; "
            "build it (call it once, or model.build(shape)) before saving"
        )
    if isinstance(shape, dict) or (shape and isinstance(shape[0], (list, tuple))):
        raise ModelDescriptionError(
            f"subclassed model {model.name!r} takes several inputs ({shape}); only a "
            "single-input subclassed model can be served"
        )
    return [("input", _dims(shape[1:]), "float32")]


def describe(
    model, flat: Flat | None, stored: dict | None = None, file: dict | None = None
) -> dict:
    """The served description of ``model``: ``inputs``, ``outputs``, ``task``, ``layers``.

    ``stored``: a published version's metadata (its task, class names, threshold, input
    kind / features / value range and layer roles win over what is derived); ``file``:
    the per-model ``serving.yaml`` as validated by ``service.model_file``."""
    stored = stored or {}
    file = file or {}
    overrides = file.get("inputs") or {}
    stored_inputs = {
        s["name"]: s for s in stored.get("inputs") or [] if isinstance(s, dict) and "name" in s
    }
    inputs = []
    for index, (name, shape, dtype) in enumerate(_spec_inputs(model, flat)):
        if dtype not in DTYPES:
            raise ModelDescriptionError(
                f"input {name!r} has dtype {dtype}; served inputs are numbers (float, int, "
                "uint, bool). String inputs (TextVectorization, StringLookup) are not "
                "supported: serve the model after its text preprocessing"
            )
        spec: dict[str, Any] = {"name": name, "shape": shape, "dtype": dtype}
        spec["kind"] = input_kind(shape, dtype)
        recorded = stored_inputs.get(name)  # an imported version records every input
        if recorded is None and index == 0 and isinstance(stored.get("input"), dict):
            recorded = stored["input"]  # a published version: its one input
        for key in ("kind", "features", "value_range"):
            if (recorded or {}).get(key) is not None:
                spec[key] = recorded[key]
        extra = overrides.get(name) or {}
        for key in ("kind", "features", "value_range"):
            if extra.get(key) is not None:
                spec[key] = extra[key]
        if spec["kind"] == "image" and not _image_shape_ok(shape):
            raise ModelDescriptionError(
                f"input {name!r} is declared an image but has shape {shape}; an image "
                "input is (height, width, 1 or 3)"
            )
        if spec["kind"] == "tabular":
            if len(shape) != 1 or shape[0] is None:
                raise ModelDescriptionError(
                    f"input {name!r} is declared tabular but has shape {shape}; a tabular "
                    "input is a vector of known length"
                )
            features = spec.get("features") or [f"x{i}" for i in range(shape[0])]
            if len(features) != shape[0]:
                raise ModelDescriptionError(
                    f"input {name!r} has {shape[0]} values but {len(features)} feature names "
                    f"were given. Received: features={features!r}"
                )
            spec["features"] = list(features)
        inputs.append(spec)
    outputs = _outputs(model, flat, stored, file)
    tasks = [o["task"] for o in outputs]
    return {
        "inputs": inputs,
        "outputs": outputs,
        "task": tasks[0] if len(tasks) == 1 else "multi_output",
        "layers": layer_table(flat, stored, outputs) if flat is not None else [],
    }


def _image_shape_ok(shape: list) -> bool:
    return len(shape) == 3 and all(d is not None for d in shape) and shape[2] in (1, 3)


def _outputs(model, flat: Flat | None, stored: dict, file: dict) -> list[dict]:
    import keras

    if flat is not None:
        by_name = {e.name: e for e in flat.entries}
        pairs = [
            (name, _dims(by_name[name].tensor.shape[1:]), activation_name(by_name[name].layer))
            for name in flat.outputs
        ]
    else:  # subclassed: the output's shape from a symbolic call, its activation unknown
        spec = model.compute_output_spec(
            keras.KerasTensor((None, *_spec_inputs(model, None)[0][1]))
        )
        specs = keras.tree.flatten(spec)
        pairs = [
            (f"output_{i}" if len(specs) > 1 else "output", _dims(s.shape[1:]), None)
            for i, s in enumerate(specs)
        ]
    per_output = file.get("outputs") or {}
    recorded = {  # an imported version records every output's task, classes, threshold
        o["name"]: o for o in stored.get("outputs") or [] if isinstance(o, dict) and "name" in o
    }
    outputs = []
    for index, (name, shape, activation) in enumerate(pairs):
        out: dict[str, Any] = {"name": name, "shape": shape, "activation": activation}
        out["task"] = output_task(activation, tuple(shape))
        extra = dict(per_output.get(name) or {})
        for key in ("task", "class_names", "threshold"):
            if (recorded.get(name) or {}).get(key) is not None and key not in extra:
                extra[key] = recorded[name][key]
        if index == 0 and len(pairs) == 1:
            # model-level keys of a published version / the file apply to a sole output
            for key in ("task", "class_names", "threshold"):
                for source in (stored, file):
                    if source.get(key) is not None and key not in extra:
                        extra[key] = source[key]
        if extra.get("task") is not None:
            out["task"] = extra["task"]
        classes = None
        if out["task"] == "binary_classification":
            classes = extra.get("class_names") or ["negative", "positive"]
            out["threshold"] = extra.get("threshold")
        elif out["task"] == "multiclass_classification":
            n = shape[-1] if shape else None
            classes = extra.get("class_names") or [str(i) for i in range(n or 0)]
            if n is not None and len(classes) != n:
                raise ModelDescriptionError(
                    f"output {name!r} has {n} classes but {len(classes)} class names were "
                    f"given. Received: class_names={classes!r}"
                )
        out["class_names"] = [str(c) for c in classes] if classes is not None else None
        outputs.append(out)
    return outputs


def layer_table(flat: Flat, stored: dict, outputs: list[dict]) -> list[dict]:
    """Every served layer: inputs first, then the flattened graph in execution order."""
    roles = {e.get("name"): e.get("role") for e in stored.get("layers") or [] if "name" in e}
    output_names = {o["name"] for o in outputs}
    rows: list[dict] = []
    for t in flat.inputs:
        rows.append(
            {
                "index": len(rows),
                "name": t.name,
                "type": "InputLayer",
                "role": "input",
                "hidden": False,
                "output_shape": [None, *_dims(t.shape[1:])],
                "activation": None,
                "units": None,
                "filters": None,
                "params": 0,
                "parent": None,
            }
        )
    for e in flat.entries:
        layer = e.layer
        kind = type(layer).__name__
        if e.name in output_names:
            role = "output"
        elif roles.get(e.name):
            role = roles[e.name]
        elif kind in PREPROCESSING_TYPES:
            role = "preprocessing"
        else:
            role = "hidden"
        config = _config(layer)
        counted = e.call == 0 and e.output_index == 0 and e.derived is None
        rows.append(
            {
                "index": len(rows),
                "name": e.name,
                "type": kind,
                "role": role,
                "hidden": role == "hidden",
                "output_shape": [None, *_dims(e.tensor.shape[1:])],
                "activation": activation_name(layer),
                "units": config.get("units"),
                "filters": config.get("filters"),
                "params": int(layer.count_params())
                if counted and getattr(layer, "built", False)
                else 0,
                "parent": e.parent,
                **({"call": e.call} if e.call else {}),
                **({"derived": e.derived} if e.derived else {}),
            }
        )
    return rows


def _config(layer) -> dict:
    try:
        config = layer.get_config()
    except Exception:  # a custom layer without get_config
        return {}
    return config if isinstance(config, dict) else {}
