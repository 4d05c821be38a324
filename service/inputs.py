"""Request decoding: JSON bodies, tabular and image instances, base64 and multipart
images, and Open Inference Protocol tensors, all into one float32 batch shaped
``(n, *metadata.input.shape)``.

Every rejection is an ``InvalidInput`` (400), ``PayloadTooLarge`` (413) or
``UnsupportedMediaType`` (415) whose message says what was received and what was
expected, so a client can fix its request without reading the server's code."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from flask import Request
from werkzeug.wsgi import get_content_length

from service import numeric_json
from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

JSON_TYPES = ("application/json",)
IMAGE_FORMATS = {"PNG", "JPEG"}

V2_DATATYPES = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}


# -- bodies ------------------------------------------------------------------------------
def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        dict: "an object",
        list: "an array",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def mimetype(request: Request) -> str:
    """``request.mimetype``. The usual exact ``application/json`` header is returned as is:
    the options parser behind ``mimetype`` would give the same string, slower."""
    value = request.environ.get("CONTENT_TYPE")
    if value == "application/json":
        return value
    return request.mimetype


def content_length(request: Request) -> int | None:
    """``request.content_length``: the same werkzeug function on the same two WSGI
    variables, without the header-name translation behind ``request.headers``."""
    return get_content_length(request.environ)


def is_json(request: Request) -> bool:
    return _is_json_type(mimetype(request) or "")


def _is_json_type(mimetype: str) -> bool:
    return mimetype in JSON_TYPES or mimetype.endswith("+json")


def is_multipart(request: Request) -> bool:
    return (mimetype(request) or "") == "multipart/form-data"


def check_size(request: Request, max_bytes: int) -> None:
    length = content_length(request)
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(
            f"request body is {length} bytes; the limit is {max_bytes} bytes "
            "(LAYERSCOPE_MAX_BODY_BYTES): send fewer instances per request"
        )


def read_json(request: Request, max_bytes: int, allow_multipart: bool = False) -> dict:
    """The body as a JSON object. A missing Content-Type is accepted (curl -d with -H
    forgotten is common); any other non-JSON type is a 415."""
    return parse_json(read_body(request, max_bytes, allow_multipart))


def read_body(request: Request, max_bytes: int, allow_multipart: bool = False) -> bytes:
    """The raw bytes of a JSON request, after the size and media-type checks."""
    check_size(request, max_bytes)
    received = mimetype(request) or ""
    if received and not _is_json_type(received):
        expected = "application/json"
        if allow_multipart:
            expected += " (or multipart/form-data with an 'image' file)"
        raise UnsupportedMediaType(
            f"Content-Type {received!r} is not supported; expected {expected}"
        )
    return request.get_data(cache=True)


def parse_json(raw: bytes) -> dict:
    if not raw.strip():
        raise InvalidInput("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as first:
        # Python's json accepts NaN / Infinity (what json.dumps emits): parse them so the
        # client is told "NaN is not allowed" rather than "malformed JSON".
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidInput(f"malformed JSON: {first}") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"expected a JSON object at the top level; got {_type_name(body)}")
    return body


# Below this size the ordinary path is as fast or faster (`python -m bench.decode`: one
# fraud row, 630 bytes, 5.0 µs against 8.7; one 28 x 28 image, 3.2 KB, 30 µs against 21).
FAST_INSTANCES_MIN_BYTES = 2048


def fast_instances(
    raw: bytes, runtime, max_batch: int, accept=None, min_bytes: int = FAST_INSTANCES_MIN_BYTES
) -> np.ndarray | None:
    """The model's float32 batch read straight from a body ``{"instances": [numbers]}``
    of at least ``min_bytes`` (service/numeric_json.py), or None: then ``parse_json`` and
    ``decode_for_model`` read the body and word any error. ``accept(name, value)`` vets
    the body's other (scalar) members; by default they are ignored, as ``get_instances``
    ignores them."""
    if len(raw) < min_bytes:
        return None
    found = numeric_json.instances_array(raw)
    if found is None:
        return None
    arr, members = found
    if accept is not None and not all(accept(k, v) for k, v in members.items()):
        return None
    if len(arr) > max_batch:  # (never empty: numeric_json refuses empty arrays)
        return None
    if len(runtime.inputs) != 1:
        return None
    spec = runtime.inputs[0]
    if spec.get("dtype", "float32") != "float32" or spec.get("kind") not in ("image", "tabular"):
        return None
    value_range = None
    if spec.get("kind") == "image":
        shape = tuple(int(d) for d in spec["shape"])
        if not _image_rows(arr.shape[1:], shape):
            return None
        value_range = spec.get("value_range")
    else:
        shape = (len(_features(spec)),)
        if arr.shape[1:] != shape:
            return None
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        return None
    if value_range is not None and (
        float(out.min()) < float(value_range[0]) or float(out.max()) > float(value_range[1])
    ):
        return None
    return out.reshape((len(arr), *shape))


def get_instances(body: dict, key: str = "instances", max_batch: int = 256) -> list:
    if key not in body:
        raise InvalidInput(
            f"missing {key!r}: expected {{{key!r}: [instance, ...]}}; got keys {sorted(body)}"
        )
    instances = body[key]
    if not isinstance(instances, list):
        raise InvalidInput(f"{key!r} must be an array of instances; got {_type_name(instances)}")
    check_batch(len(instances), max_batch)
    return instances


def check_batch(n: int, max_batch: int) -> None:
    if n == 0:
        raise InvalidInput("the batch is empty; expected at least one instance")
    if n > max_batch:
        raise InvalidInput(
            f"batch of {n} instances exceeds the maximum of {max_batch} "
            "(LAYERSCOPE_MAX_BATCH_SIZE); split the request"
        )


# -- numbers -----------------------------------------------------------------------------
def _first_bad(value: Any, path: str) -> tuple[str, Any] | None:
    """Locate the first element that is not a finite number, for the error message."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_bad(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return path, value
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    return None


def _numeric_error(value: Any, where: str, shape_text: str) -> InvalidInput:
    bad = _first_bad(value, where)
    if bad is not None:
        path, item = bad
        if isinstance(item, float):
            return InvalidInput(f"{path} is {item}; NaN and Infinity are not allowed")
        if isinstance(item, int) and not isinstance(item, bool):
            return InvalidInput(f"{path} is {item}, out of the float32 range")
        return InvalidInput(f"{path} is {_preview(item)} ({_type_name(item)}); expected a number")
    return InvalidInput(f"{where} is not {shape_text}; got {describe_shape(value)}")


def describe_shape(value: Any) -> str:
    """A readable shape of nested JSON arrays, e.g. 'an array of shape [28, 27]'."""
    if not isinstance(value, list):
        return _type_name(value)
    dims, cur = [], value
    while isinstance(cur, list):
        dims.append(len(cur))
        if not cur:
            break
        lengths = {len(c) if isinstance(c, list) else -1 for c in cur}
        if len(lengths) > 1:
            return f"a ragged array (rows of lengths {sorted(lengths)}) after shape {dims}"
        cur = cur[0]
    return f"an array of shape {dims}"


def to_float32(value: Any, where: str, shape_text: str) -> np.ndarray:
    """Nested JSON numbers -> float32 array; strings, booleans, null, NaN/Inf and values
    beyond float32 are rejected with the path of the first offending element."""
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):
        raise _numeric_error(value, where, shape_text) from None
    if arr.dtype.kind not in "iuf":
        raise _numeric_error(value, where, shape_text)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        original = arr[idx]
        path = where + "".join(f"[{i}]" for i in idx)
        if isinstance(original, np.floating) and not np.isfinite(original):
            raise InvalidInput(f"{path} is {float(original)}; NaN and Infinity are not allowed")
        raise InvalidInput(f"{path} is {original.item()!r}, out of the float32 range")
    return out


# -- tabular -------------------------------------------------------------------------------
def decode_tabular(instances: Sequence[Any], features: Sequence[str], where: str) -> np.ndarray:
    n_features = len(features)
    if all(isinstance(i, list) for i in instances):
        try:
            arr = np.asarray(instances)
            fast = arr.dtype.kind in "iuf" and arr.shape == (len(instances), n_features)
        except (ValueError, OverflowError):
            fast = False
        if fast:
            return to_float32(arr, where, "")
    rows = [
        decode_tabular_instance(inst, features, f"{where}[{i}]") for i, inst in enumerate(instances)
    ]
    return np.stack(rows)


def decode_tabular_instance(instance: Any, features: Sequence[str], where: str) -> np.ndarray:
    n = len(features)
    if isinstance(instance, dict):
        unknown = [k for k in instance if k not in features]
        missing = [f for f in features if f not in instance]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown features {unknown}")
            if missing:
                parts.append(f"missing features {missing}")
            raise InvalidInput(
                f"{where}: {'; '.join(parts)}; expected exactly the {n} features {list(features)}"
            )
        values = [instance[f] for f in features]
        for f, v in zip(features, values, strict=True):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InvalidInput(
                    f"{where}: feature {f!r} is {_preview(v)} ({_type_name(v)}); expected a number"
                )
        return to_float32(values, where, f"{n} numbers")
    if isinstance(instance, list):
        if len(instance) != n or any(isinstance(v, list) for v in instance):
            raise InvalidInput(
                f"{where} is {describe_shape(instance)}; expected an array of {n} numbers "
                f"in the order {list(features)} or an object keyed by feature name"
            )
        return to_float32(instance, where, f"{n} numbers")
    raise InvalidInput(
        f"{where} is {_type_name(instance)}; expected an object of the {n} named features "
        f"or an array of {n} numbers in feature order"
    )


# -- images --------------------------------------------------------------------------------
def _image_rows(got: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether instances of shape ``got`` are raw pixels for ``shape`` (H x W x 1 images
    may also come as H x W)."""
    height, width, channels = _image_layout(shape)
    return got == shape or (channels == 1 and got == (height, width))


def _image_layout(shape: Sequence[int]) -> tuple[int, int, int]:
    height, width = int(shape[0]), int(shape[1])
    channels = int(shape[2]) if len(shape) > 2 else 1
    return height, width, channels


def decode_image_bytes(
    data: bytes, shape: Sequence[int], where: str, max_pixels: int
) -> np.ndarray:
    """PNG/JPEG bytes -> raw 0..255 pixels shaped like the model input. No resizing: a
    silently resized picture would give a confident, meaningless prediction."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = _image_layout(shape)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if fmt not in IMAGE_FORMATS:
                raise InvalidInput(f"{where} is a {fmt} image; expected PNG or JPEG")
            w, h = img.size
            if w * h > max_pixels or (w, h) != (width, height):
                raise InvalidInput(
                    f"{where} is a {w}x{h} image; expected exactly {width}x{height} pixels "
                    "(width x height), no resizing is done"
                )
            img = img.convert("L" if channels == 1 else "RGB")
            pixels = np.asarray(img, dtype=np.float32)
    except InvalidInput:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InvalidInput(
            f"{where} could not be decoded as an image ({len(data)} bytes); expected a PNG "
            "or JPEG file"
        ) from None
    return pixels.reshape(tuple(int(d) for d in shape))


def decode_b64_image(value: Any, shape: Sequence[int], where: str, max_pixels: int) -> np.ndarray:
    if not isinstance(value, str):
        raise InvalidInput(f"{where}.b64 is {_type_name(value)}; expected a base64 string")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    data = b""
    for altchars in (None, b"-_"):  # standard, then URL-safe alphabet
        try:
            data = base64.b64decode(text, altchars=altchars, validate=True)
            break
        except (binascii.Error, ValueError):
            continue
    if not data:
        raise InvalidInput(
            f"{where}.b64 is not valid base64 ({len(value)} characters); expected "
            "standard base64 of a PNG or JPEG file"
        )
    return decode_image_bytes(data, shape, f"{where}.b64", max_pixels)


def decode_images(
    instances: Sequence[Any], shape: Sequence[int], where: str, max_pixels: int, value_range=None
) -> np.ndarray:
    """Nested raw pixels (HxW or HxWxC) or {"b64": ...} per instance."""
    shape = tuple(int(d) for d in shape)
    height, width, channels = _image_layout(shape)
    if all(isinstance(i, list) for i in instances):
        try:
            arr = np.asarray(instances)
            if arr.dtype.kind in "iuf" and _image_rows(arr.shape[1:], shape):
                batch = to_float32(arr, where, "").reshape((len(instances), *shape))
                return check_range(batch, where, value_range)
        except (ValueError, OverflowError):
            pass
    rows = []
    for i, inst in enumerate(instances):
        w = f"{where}[{i}]"
        if isinstance(inst, dict):
            if set(inst) != {"b64"}:
                raise InvalidInput(
                    f"{w} is an object with keys {sorted(inst)}; expected {{'b64': '<base64 "
                    "PNG or JPEG>'}"
                )
            rows.append(decode_b64_image(inst["b64"], shape, w, max_pixels))
            continue
        accepted = [height, width] if channels == 1 else []
        expected = f"{list(shape)}" + (f" or {accepted}" if accepted else "")
        if not isinstance(inst, list):
            raise InvalidInput(
                f"{w} is {_type_name(inst)}; expected raw pixels as a nested array of shape "
                f"{expected} or {{'b64': '<base64 PNG or JPEG>'}}"
            )
        arr = to_float32(inst, w, f"an array of shape {expected}")
        if arr.shape == (height, width) and channels == 1:
            arr = arr.reshape(shape)
        if arr.shape != shape:
            raise InvalidInput(
                f"{w} has shape {list(arr.shape)}; expected raw pixels of shape {expected}"
            )
        rows.append(check_range(arr, w, value_range))
    return np.stack(rows)


def check_range(arr: np.ndarray, where: str, value_range) -> np.ndarray:
    """Raw pixels outside the model's declared value range are refused, not clipped."""
    if value_range is None:
        return arr
    lo, hi = float(value_range[0]), float(value_range[1])
    low, high = float(arr.min()), float(arr.max())
    if low < lo or high > hi:
        raise InvalidInput(
            f"{where} has pixel values in [{low:g}, {high:g}]; expected raw pixels in "
            f"[{lo:g}, {hi:g}]"
        )
    return arr


# -- any tensor ------------------------------------------------------------------------------
def _np_dtype(spec: dict):
    from service.model_spec import DTYPES

    return DTYPES.get(spec.get("dtype", "float32"), np.float32)


def is_integer(spec: dict) -> bool:
    return str(spec.get("dtype", "float32")).startswith(("int", "uint"))


def shape_text(spec: dict) -> str:
    return "[n, " + ", ".join("any" if d is None else str(d) for d in spec["shape"]) + "]"


def shape_fits(got: Sequence[int], spec: dict) -> bool:
    """Whether an instance shape fits the input's shape (None: any length)."""
    want = spec["shape"]
    return len(got) == len(want) and all(
        w is None or w == g for w, g in zip(want, got, strict=True)
    )


def to_integers(value: Any, where: str, spec: dict) -> np.ndarray:
    """Nested JSON integers -> the input's integer dtype; fractions, booleans, strings and
    values outside the dtype's range are refused with the first offending element."""
    dtype = _np_dtype(spec)
    info = np.iinfo(dtype)
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):
        arr = None
    if (
        arr is None
        or arr.dtype.kind not in "iuf"
        or (arr.dtype.kind == "f" and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()))
    ):
        bad = _first_not_integer(value, where)
        if bad is not None:
            path, item = bad
            raise InvalidInput(
                f"{path} is {_preview(item)} ({_type_name(item)}); expected an integer id "
                f"({spec['dtype']})"
            )
        pad = "; pad every instance to one length" if None in spec["shape"] else ""
        raise InvalidInput(
            f"{where} is not {shape_text(spec)} for input {spec['name']!r}; got "
            f"{describe_shape(value)}{pad}"
        )
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise InvalidInput(
            f"{where} has values in [{arr.min()}, {arr.max()}]; input {spec['name']!r} takes "
            f"{spec['dtype']} in [{info.min}, {info.max}]"
        )
    return arr.astype(dtype)


def _first_not_integer(value: Any, path: str) -> tuple[str, Any] | None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_not_integer(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return path, value
    if isinstance(value, float) and (not math.isfinite(value) or value != round(value)):
        return path, value
    return None


def decode_tensor(instances: Sequence[Any], spec: dict, where: str) -> np.ndarray:
    """A list of instances of any numeric tensor input (sequences of token ids, arrays of
    any rank) -> one array of the input's dtype, shape checked against the spec."""
    if is_integer(spec):
        arr = to_integers(list(instances), where, spec)
    else:
        arr = to_float32(list(instances), where, f"an array of shape {shape_text(spec)}")
        arr = arr.astype(_np_dtype(spec), copy=False)
    if arr.ndim != len(spec["shape"]) + 1 or not shape_fits(arr.shape[1:], spec):
        hint = ""
        if any(d is None for d in spec["shape"]) and arr.dtype == object:
            hint = "; pad every instance to one length"
        raise InvalidInput(
            f"{where} has shape {list(arr.shape)}; input {spec['name']!r} expects "
            f"{shape_text(spec)}{hint}"
        )
    return arr


def decode_input(instances: Sequence[Any], spec: dict, where: str, max_pixels: int) -> np.ndarray:
    """Instances of one model input -> its batch, by the input's kind."""
    kind = spec.get("kind")
    if kind == "image":
        return decode_images(instances, spec["shape"], where, max_pixels, spec.get("value_range"))
    if kind == "tabular" and not is_integer(spec):
        return decode_tabular(instances, _features(spec), where)
    return decode_tensor(instances, spec, where)


# -- model-aware entry points ---------------------------------------------------------------
def decode_instances(instances: Sequence[Any], runtime, max_pixels: int, where="instances"):
    """A JSON instance list -> the batch ``runtime`` takes: one array for a single-input
    model, ``{input name: array}`` when the model has several inputs (each instance then
    an object keyed by input name)."""
    specs = runtime.inputs
    if len(specs) == 1:
        return decode_input(instances, specs[0], where, max_pixels)
    names = [s["name"] for s in specs]
    columns: dict[str, list] = {n: [] for n in names}
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise InvalidInput(
                f"{where}[{i}] is {_type_name(inst)}; model {runtime.name!r} has "
                f"{len(names)} inputs: expected an object keyed by input name {names}"
            )
        unknown = [k for k in inst if k not in columns]
        missing = [n for n in names if n not in inst]
        if unknown or missing:
            parts = ([f"unknown inputs {unknown}"] if unknown else []) + (
                [f"missing inputs {missing}"] if missing else []
            )
            raise InvalidInput(f"{where}[{i}]: {'; '.join(parts)}; expected exactly {names}")
        for n in names:
            columns[n].append(inst[n])
    return decode_columns(columns, runtime, max_pixels, where)


def decode_columns(columns: dict, runtime, max_pixels: int, where: str) -> dict:
    """``{input name: [instances]}`` (TF Serving's columnar format) -> the batch dict."""
    names = [s["name"] for s in runtime.inputs]
    unknown = [k for k in columns if k not in names]
    missing = [n for n in names if n not in columns]
    if unknown or missing:
        parts = ([f"unknown inputs {unknown}"] if unknown else []) + (
            [f"missing inputs {missing}"] if missing else []
        )
        raise InvalidInput(f"{where}: {'; '.join(parts)}; model {runtime.name!r} takes {names}")
    out = {}
    for spec in runtime.inputs:
        values = columns[spec["name"]]
        label = f"{where}.{spec['name']}" if where != "instances" else f"{where}[*].{spec['name']}"
        if not isinstance(values, list):
            raise InvalidInput(f"{label} is {_type_name(values)}; expected an array of instances")
        out[spec["name"]] = decode_input(values, spec, label, max_pixels)
    check_batch_sizes(out, where)
    return out


def check_batch_sizes(batch: dict, where: str) -> None:
    """Every input of a multi-input batch has the same number of rows."""
    sizes = {k: len(v) for k, v in batch.items()}
    if len(set(sizes.values())) > 1:
        raise InvalidInput(
            f"{where}: the inputs have different batch sizes {sizes}; expected one row per "
            "instance in each"
        )


def pack_batch(batch: dict, where: str = "inputs"):
    """``{input name: array}`` decoded per input -> what the runtime takes: the one array
    of a single-input model, else the dict (rows checked equal)."""
    if len(batch) == 1:
        return next(iter(batch.values()))
    check_batch_sizes(batch, where)
    return batch


def batch_rows(x) -> int:
    """Rows of a batch (an array, or a dict of arrays)."""
    if isinstance(x, dict):
        return len(next(iter(x.values()))) if x else 0
    return int(x.shape[0])


def decode_for_model(instances: Sequence[Any], runtime, max_pixels: int, where="instances"):
    """``decode_instances`` (the name the protocols first used)."""
    return decode_instances(instances, runtime, max_pixels, where)


def _features(spec: dict) -> list[str]:
    """A tabular model's feature names (x0, x1, ... when its metadata names none)."""
    return spec.get("features") or [f"x{i}" for i in range(int(spec["shape"][0]))]


def image_input(runtime) -> dict | None:
    """The model's only input when it is an image (multipart uploads go there)."""
    if len(runtime.inputs) == 1 and runtime.inputs[0].get("kind") == "image":
        return runtime.inputs[0]
    return None


def read_multipart_images(request: Request, runtime, max_batch: int, max_pixels: int):
    """``curl -F image=@shoe.png``: one or several files in the ``image`` field."""
    spec = image_input(runtime)
    if spec is None:
        kinds = ", ".join(f"{s['name']} ({s.get('kind')})" for s in runtime.inputs)
        raise UnsupportedMediaType(
            f"multipart/form-data is only accepted by image models (one image input); model "
            f"{runtime.name!r} takes {kinds}: send application/json {{'instances': [...]}}"
        )
    files = request.files.getlist("image")
    if not files:
        raise InvalidInput(
            f"multipart body has no file field 'image' (got fields "
            f"{sorted(set(request.files) | set(request.form))}); expected -F image=@file.png"
        )
    check_batch(len(files), max_batch)
    rows = [
        decode_image_bytes(f.read(), spec["shape"], f"image[{i}] ({f.filename!r})", max_pixels)
        for i, f in enumerate(files)
    ]
    return np.stack(rows)


def decode_v2_tensor(
    tensor: Any,
    runtime,
    max_batch: int,
    max_pixels: int,
    spec: dict | None = None,
    where: str = "inputs[0]",
) -> np.ndarray:
    """One Open Inference Protocol input tensor -> the batch of the model input ``spec``
    (default: the only one). The first dimension of ``shape`` is the batch; ``data`` may
    be flat or nested (row-major)."""
    spec = spec or runtime.inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidInput(f"{where} is {_type_name(tensor)}; expected a tensor object")
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise InvalidInput(f"{where} lacks {missing}; expected name, shape, datatype and data")
    shape, datatype, data = tensor["shape"], tensor["datatype"], tensor["data"]
    check_v2_shape_list(shape, spec, where)
    batch = shape[0]
    check_batch(batch, max_batch)
    if not isinstance(datatype, str):
        raise InvalidInput(f"{where}.datatype is {_preview(datatype)}; expected e.g. 'FP32'")
    if not isinstance(data, list):
        raise InvalidInput(f"{where}.data is {_type_name(data)}; expected an array")
    if datatype == "BYTES":
        if spec.get("kind") != "image":
            raise InvalidInput(
                f"{where}.datatype BYTES is only accepted for image models (image inputs: "
                f"base64 PNG or JPEG); input {spec['name']!r} of model {runtime.name!r} expects "
                f"{v2_datatype(spec)} numbers"
            )
        flat = list(_flatten(data))
        if len(flat) != batch:
            raise InvalidInput(
                f"{where} has {len(flat)} BYTES elements for shape {shape}; expected one "
                "base64 image per batch row"
            )
        return np.stack(
            [
                decode_b64_image(v, spec["shape"], f"{where}.data[{i}]", max_pixels)
                for i, v in enumerate(flat)
            ]
        )
    dtype = V2_DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"{where}.datatype {datatype!r} is not supported; expected one of "
            f"{', '.join(V2_DATATYPES)} (or BYTES with base64 images)"
        )
    check_v2_shape(shape, spec, where)
    if is_integer(spec):
        if not np.issubdtype(dtype, np.integer):
            raise InvalidInput(
                f"{where}.datatype is {datatype}; input {spec['name']!r} takes integer ids: "
                f"send {v2_datatype(spec)} (or another INT type)"
            )
        arr = to_integers(data, f"{where}.data", spec)
    else:
        arr = to_float32(data, f"{where}.data", "numbers")
    count = int(np.prod(shape))
    if arr.size != count:
        raise InvalidInput(f"{where}.data has {arr.size} elements; shape {shape} needs {count}")
    if np.issubdtype(dtype, np.integer):
        raw = np.asarray(arr, dtype=np.float64)
        info = np.iinfo(dtype)
        if (raw != np.round(raw)).any() or raw.min() < info.min or raw.max() > info.max:
            raise InvalidInput(
                f"{where}.data does not fit datatype {datatype} (integers in "
                f"[{info.min}, {info.max}]); got values in [{raw.min():g}, {raw.max():g}]"
            )
    batch_arr = arr.reshape(v2_batch_shape(shape, spec))
    if spec.get("kind") == "image":
        batch_arr = check_range(batch_arr, f"{where}.data", spec.get("value_range"))
    if not is_integer(spec):
        batch_arr = batch_arr.astype(_np_dtype(spec), copy=False)
    return batch_arr


def v2_datatype(spec: dict) -> str:
    """The Open Inference Protocol datatype of a model input (FP32, INT32, ...)."""
    names = {np.dtype(v).name: k for k, v in V2_DATATYPES.items()}
    return names.get(np.dtype(_np_dtype(spec)).name, "FP32")


def check_v2_shape_list(shape: Any, spec: dict, where: str = "inputs[0]") -> None:
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput(
            f"{where}.shape is {_preview(shape)}; expected a list of non-negative integers "
            f"like {shape_text(spec)}"
        )


def v2_batch_shape(shape: Sequence[int], spec: dict) -> tuple[int, ...]:
    """[n, H, W] of a one-channel image becomes [n, H, W, 1]; anything else as sent."""
    if spec.get("kind") == "image" and len(shape) == len(spec["shape"]):
        return (shape[0], *spec["shape"])
    return tuple(shape)


def check_v2_shape(shape: Sequence[int], spec: dict, where: str = "inputs[0]") -> None:
    """An OIP tensor shape: [n, *input shape] (free dimensions any length), or [n, H, W]
    for a one-channel image."""
    dims = list(spec["shape"])
    if shape_fits(tuple(shape[1:]), spec):
        return
    if spec.get("kind") == "image" and len(dims) == 3 and dims[2] == 1:
        if tuple(shape[1:]) == tuple(dims[:2]):
            return
        accepted = f"{shape_text(spec)} or [n, {dims[0]}, {dims[1]}]"
    else:
        accepted = shape_text(spec)
    raise InvalidInput(f"{where}.shape is {list(shape)}; expected {accepted}")


def _flatten(value):
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value
