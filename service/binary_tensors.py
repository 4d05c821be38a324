"""The Open Inference Protocol's binary tensor data extension (as in Triton and KServe).

A body is a JSON object of ``Inference-Header-Content-Length`` bytes followed by the raw
data of every tensor whose entry carries ``"parameters": {"binary_data_size": k}``, in the
order the tensors are listed: row-major, little-endian, no padding; BOOL one byte; BYTES
elements each prefixed by a 4-byte little-endian unsigned length. Requests list tensors in
``inputs`` and responses in ``outputs``; the layout is the same, so one codec serves the
server (``parse_request``, ``encode_response``) and its clients (``encode_request``,
``decode_response``, used by the tests and ``bench/``).

Pure numpy + orjson (no Flask, no TensorFlow): every malformed body raises
``BinaryTensorError`` (a ``ValueError``) whose message quotes what was received; the
server turns it into a 400."""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

HEADER = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"

# datatype -> little-endian numpy dtype (BYTES is handled apart: variable-length elements)
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in {
        "BOOL": np.bool_,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
    }.items()
}
SUPPORTED = [*DATATYPES, "BYTES"]
_BY_KIND = {(d.kind, d.itemsize): name for name, d in DATATYPES.items()}
_LENGTH = struct.Struct("<I")
# ASCII only: re's \s and \d also match characters int() refuses (e.g. "\x1f" after a digit
# made int() raise a ValueError: a 500); HTTP allows spaces and tabs around a value.
_INTEGER = re.compile(r"[ \t]*-?[0-9]{1,19}[ \t]*")

Tensor = np.ndarray | list  # numeric array, or BYTES elements (list of bytes)


class BinaryTensorError(ValueError):
    """A body that does not follow the extension; the message says what was received."""


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- reading -----------------------------------------------------------------------------------
def parse_request(body: bytes, header_length: str | int) -> tuple[dict, dict[str, Tensor]]:
    """Server side: a binary request body -> (the JSON request, {input name: values}).
    Numeric inputs are read-only ``np.frombuffer`` views shaped like their ``shape``
    (no copy); BYTES inputs are the flat list of their elements. Inputs sent as JSON
    ``data`` stay in the JSON request."""
    return _decode(body, header_length, "inputs")


def decode_response(body: bytes, headers: Mapping[str, str]) -> tuple[dict, dict[str, Any]]:
    """Client side: a response (binary or plain JSON) -> (the JSON response, {output name:
    np.ndarray}). Outputs returned as JSON ``data`` are converted too, so a caller need
    not care which way each output came; BYTES outputs are object arrays of bytes."""
    length = _header(headers, HEADER)
    if length is None:
        obj, arrays = _load_json(body, "the response body"), {}
    else:
        obj, arrays = _decode(body, length, "outputs")
    for entry in obj.get("outputs") or []:
        name = entry.get("name")
        if name in arrays:
            value = arrays[name]
            if isinstance(value, list):  # BYTES
                value = _object_array(value, entry["shape"])
            arrays[name] = value
        elif "data" in entry:
            arrays[name] = _json_data(entry)
    return obj, arrays


def _decode(body: bytes, header_length: str | int, key: str) -> tuple[dict, dict[str, Tensor]]:
    length = _json_length(header_length, len(body))
    what = f"the JSON part (the first {length} bytes, per {HEADER})"
    obj = _load_json(memoryview(body)[:length], what)
    specs = _binary_specs(obj, key)
    rest = len(body) - length
    total = sum(size for _, _, size in specs)
    if total != rest:
        what = "too few" if rest < total else "too many"
        raise BinaryTensorError(
            f"the body has {rest} bytes after the {length}-byte JSON part but the {key}' "
            f"binary_data_size add up to {total} ({what} bytes)"
        )
    tensors, offset = {}, length
    for where, entry, size in specs:
        tensors[entry["name"]] = _read_tensor(body, offset, size, entry, where)
        offset += size
    return obj, tensors


def _json_length(value: str | int, body_size: int) -> int:
    """The header's value: the byte length of the JSON part, within the body."""
    text = str(value)
    if isinstance(value, bool) or not _INTEGER.fullmatch(text):
        raise BinaryTensorError(
            f"{HEADER} is {_preview(text)}; expected the byte length of the JSON part at the "
            "start of the body, a non-negative integer"
        )
    length = int(text)
    if length < 0:
        raise BinaryTensorError(f"{HEADER} is {length}; expected a non-negative integer")
    if length > body_size:
        raise BinaryTensorError(
            f"{HEADER} is {length} but the body has only {body_size} bytes; it must be the "
            "byte length of the JSON part at the start of the body"
        )
    return length


def _load_json(raw, what: str) -> dict:
    """orjson, then Python's json so that NaN in a JSON ``data`` is reported as NaN (by the
    JSON decoding downstream) rather than as malformed JSON."""
    if not len(raw):
        raise BinaryTensorError(f"{what} is empty; expected a JSON object")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as first:
        try:
            obj = json.loads(bytes(raw))
        except (ValueError, RecursionError):
            raise BinaryTensorError(f"{what} is not valid JSON: {first}") from None
    if not isinstance(obj, dict):
        raise BinaryTensorError(f"{what} is JSON {type(obj).__name__}; expected an object")
    return obj


def _binary_specs(obj: dict, key: str) -> list[tuple[str, dict, int]]:
    """(where, entry, binary_data_size) of each tensor sent as binary, in listed order."""
    entries = obj.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise BinaryTensorError(f"{key!r} is {_preview(entries)}; expected a list of tensors")
    specs, names = [], set()
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        size = _binary_size(entry, where)
        if size is None:
            continue
        _check_entry(entry, where, size)
        if entry["name"] in names:
            raise BinaryTensorError(f"{where}: two binary tensors are named {entry['name']!r}")
        names.add(entry["name"])
        specs.append((where, entry, size))
    return specs


def _binary_size(entry: Any, where: str) -> int | None:
    """The entry's binary_data_size, or None when it is sent as JSON."""
    if not isinstance(entry, dict):
        return None
    params = entry.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise BinaryTensorError(f"{where}.parameters is {_preview(params)}; expected an object")
    if "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BinaryTensorError(
            f"{where}.parameters.binary_data_size is {_preview(size)}; expected a non-negative "
            "integer (the tensor's size in bytes)"
        )
    return size


def _check_entry(entry: dict, where: str, size: int) -> None:
    """Name, datatype and shape present and consistent with ``size``."""
    if "data" in entry:
        raise BinaryTensorError(
            f"{where} has both 'data' and parameters.binary_data_size ({size}); send its "
            "values either as JSON data or as binary data, not both"
        )
    name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
    if not isinstance(name, str):
        raise BinaryTensorError(f"{where}.name is {_preview(name)}; expected a string")
    if datatype not in SUPPORTED:
        raise BinaryTensorError(
            f"{where}.datatype is {_preview(datatype)}; binary data supports {', '.join(SUPPORTED)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BinaryTensorError(
            f"{where}.shape is {_preview(shape)}; expected a list of non-negative integers"
        )
    if datatype != "BYTES":
        count, itemsize = math.prod(shape), DATATYPES[datatype].itemsize
        if size != count * itemsize:
            raise BinaryTensorError(
                f"{where} ({name!r}): binary_data_size is {size} but shape {shape} of "
                f"{datatype} needs {count * itemsize} bytes ({count} elements x {itemsize})"
            )


def _read_tensor(body: bytes, offset: int, size: int, entry: dict, where: str) -> Tensor:
    shape, datatype = entry["shape"], entry["datatype"]
    if datatype == "BYTES":
        return _read_bytes(memoryview(body)[offset : offset + size], math.prod(shape), where)
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype)
    if datatype == "BOOL":
        raw = np.frombuffer(body, np.uint8, count, offset)
        if raw.max() > 1:
            bad = int(np.argmax(raw > 1))
            raise BinaryTensorError(
                f"{where}: BOOL element {bad} is byte {int(raw[bad])}; expected 0 or 1"
            )
        return raw.view(np.bool_).reshape(shape)
    return np.frombuffer(body, dtype, count, offset).reshape(shape)


def _read_bytes(view: memoryview, count: int, where: str) -> list[bytes]:
    """``count`` length-prefixed elements filling ``view`` exactly."""
    elements, pos, end = [], 0, len(view)
    for i in range(count):
        if pos + 4 > end:
            raise BinaryTensorError(
                f"{where}: BYTES element {i} of {count} needs a 4-byte length but only "
                f"{end - pos} of its binary_data_size ({end}) bytes remain"
            )
        (n,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise BinaryTensorError(
                f"{where}: BYTES element {i} declares {n} bytes but only {end - pos} of its "
                f"binary_data_size ({end}) bytes remain"
            )
        elements.append(bytes(view[pos : pos + n]))
        pos += n
    if pos != end:
        raise BinaryTensorError(
            f"{where}: its {count} BYTES elements take {pos} bytes but binary_data_size is {end}"
        )
    return elements


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def _object_array(elements: list, shape: Sequence[int]) -> np.ndarray:
    out = np.empty(len(elements), dtype=object)
    out[:] = elements
    return out.reshape(shape)


def _json_data(entry: dict) -> np.ndarray:
    datatype, shape = entry.get("datatype"), entry.get("shape")
    if datatype == "BYTES":
        return _object_array(list(_flatten(entry["data"])), shape)
    dtype = DATATYPES.get(datatype, np.dtype(np.float64))
    return np.asarray(entry["data"], dtype=dtype).reshape(shape)


def _flatten(value):
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


# -- writing -----------------------------------------------------------------------------------
def encode_request(json_obj: dict, arrays: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Client side: (body, headers) of a binary request. ``arrays`` maps input names to
    numpy arrays or nested lists (BYTES: flat lists of bytes / str, or object arrays, for
    other shapes); an input listed in
    ``json_obj`` keeps its datatype and shape (values are cast to that datatype), one that
    is not is appended with the array's datatype and shape. ``json_obj`` is not modified."""
    return _encode(json_obj, "inputs", arrays)


def encode_response(json_obj: dict, arrays: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Server side: (body, headers) of a response whose ``arrays`` outputs are binary."""
    return _encode(json_obj, "outputs", arrays)


def _encode(json_obj: dict, key: str, arrays: Mapping[str, Any]) -> tuple[bytes, dict]:
    obj = dict(json_obj)
    entries = [dict(e) for e in obj.get(key) or []]
    listed = {e.get("name") for e in entries}
    entries += [{"name": n} for n in arrays if n not in listed]
    chunks = []
    for entry in entries:
        if entry.get("name") not in arrays:
            continue  # sent as JSON
        chunk, datatype, shape = tensor_bytes(arrays[entry["name"]], entry.get("datatype"))
        entry.setdefault("datatype", datatype)
        entry.setdefault("shape", shape)
        entry.pop("data", None)
        entry["parameters"] = {**(entry.get("parameters") or {}), "binary_data_size": len(chunk)}
        chunks.append(chunk)
    obj[key] = entries
    head = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {HEADER: str(len(head)), "Content-Type": OCTET_STREAM}
    return b"".join([head, *chunks]), headers


def tensor_bytes(value: Any, datatype: str | None = None) -> tuple[Any, str, list[int]]:
    """(raw bytes-like, datatype, shape) of one tensor in the extension's layout."""
    if datatype == "BYTES" or (datatype is None and _is_bytes(value)):
        return _bytes_elements(value)
    arr = np.asarray(value)
    if datatype is None:
        datatype = _BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
        if datatype is None:
            raise BinaryTensorError(f"numpy dtype {arr.dtype} has no V2 datatype")
    elif datatype not in DATATYPES:
        raise BinaryTensorError(f"datatype {datatype!r} is not one of {', '.join(SUPPORTED)}")
    out = arr.astype(DATATYPES[datatype], order="C", copy=False)
    data = memoryview(out.reshape(-1)).cast("B") if out.size else b""  # no copy
    return data, datatype, list(out.shape)


def _is_bytes(value: Any) -> bool:
    """Object / string arrays, and lists whose elements are all bytes or str."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "OSU"
    if isinstance(value, list | tuple):
        return all(isinstance(v, bytes | bytearray | memoryview | str) for v in _flatten(value))
    return False


def _bytes_elements(value: Any) -> tuple[bytes, str, list[int]]:
    if isinstance(value, np.ndarray):
        shape, items = list(value.shape), value.reshape(-1).tolist()
    else:
        items = list(_flatten(list(value)))
        shape = [len(items)]
    parts = []
    for i, item in enumerate(items):
        data = item.encode() if isinstance(item, str) else item
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BinaryTensorError(f"BYTES element {i} is {type(item).__name__}; expected bytes")
        if len(data) > 0xFFFFFFFF:
            raise BinaryTensorError(f"BYTES element {i} is {len(data)} bytes; the limit is 4 GiB")
        parts += [_LENGTH.pack(len(data)), bytes(data)]
    return b"".join(parts), "BYTES", shape
