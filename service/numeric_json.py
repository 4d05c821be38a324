"""Numeric arrays straight out of a JSON body, without a Python object per number.

A 64-image request carries 50,176 numbers. ``orjson.loads`` builds a Python int for each
(0.8 ms) and ``np.asarray`` walks them all again to find the shape and dtype (1.1 ms);
simdjson parses the body once and copies a homogeneous array into one buffer (0.5 ms with
the checks below; bench figures in docs/benchmarks.md).

This is a shortcut beside the ordinary path (``orjson`` and service/inputs.py), not a
replacement: it answers an array only for a plain, valid body and ``None`` for anything
unusual, and the ordinary path then decodes the body and words any error. It may refuse
freely, but must never accept a body the ordinary path would read differently
(tests/service/test_numeric_json.py holds it to that on generated bodies).
"""

from __future__ import annotations

import math
import threading
from itertools import chain, repeat

import numpy as np
import simdjson

# Integers beyond 2**53 lose digits as doubles; the ordinary path converts int64 to
# float32 in one rounding, this one would round twice. Such bodies take the ordinary path.
_EXACT_INTEGERS = 2.0**53

_local = threading.local()  # a simdjson.Parser is not thread-safe: one per thread


def instances_array(
    raw: bytes, key: str = "instances"
) -> tuple[np.ndarray, dict[str, object]] | None:
    """(the float64 array under ``key``, the other members) when ``raw`` is a JSON object
    whose ``key`` holds a rectangular nested array of numbers (at least 2-D: a list of rows)
    and whose other members are scalars; else None."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        return _instances_array(parser, raw, key)
    except Exception:  # malformed JSON, NaN, huge integers, a wrong type: the ordinary path
        # A parser refuses to parse again while a proxy of its last document is alive; the
        # proxies die with the frame above, but a fresh parser costs nothing to be sure.
        _local.parser = None
        return None


def _instances_array(parser, raw: bytes, key: str):
    doc = parser.parse(raw)
    if not isinstance(doc, simdjson.Object):
        return None
    members = _plain_members(doc, key)
    if members is None:
        return None
    rows = doc[key]
    shape = _shape(rows)
    if shape is None:
        return None
    # Every array is now accounted for above the leaves; one more '[' anywhere in the body
    # would be an array among the numbers (as_buffer flattens those silently).
    if raw.count(b"[") != _array_count(shape):
        return None
    values = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
    if values.size != math.prod(shape) or not (np.abs(values) < _EXACT_INTEGERS).all():
        return None
    return values.reshape(shape), members


def _plain_members(doc, key: str) -> dict[str, object] | None:
    """The members other than ``key`` when ``key`` appears once and every other member is
    a scalar with no '[' in it or in its name (so that the body's '[' are all the
    array's); else None."""
    names = list(doc.keys())
    if key not in names or len(set(names)) != len(names):  # duplicates: orjson keeps the last
        return None
    members = {}
    for name in names:
        if "[" in name:
            return None
        if name == key:
            continue
        value = doc[name]
        if isinstance(value, (simdjson.Array, simdjson.Object)):
            return None
        if isinstance(value, str) and "[" in value:
            return None
        members[name] = value
    return members


def _shape(rows) -> tuple[int, ...] | None:
    """The shape of a rectangular nested array (lengths read along the first elements, then
    every array above the leaves checked against them), or None."""
    shape, cur = [], rows
    while isinstance(cur, simdjson.Array):
        if len(cur) == 0:
            return None
        shape.append(len(cur))
        cur = cur[0]
    if len(shape) < 2:
        return None
    # Every array above the numbers, depth by depth, in C-level loops (a 64-image request
    # has 1,857 of them).
    level = [rows]
    for depth, length in enumerate(shape):
        if list(map(len, level)).count(length) != len(level):
            return None
        if depth == len(shape) - 1:
            break
        level = list(chain.from_iterable(level))
        if not all(map(isinstance, level, repeat(simdjson.Array))):
            return None
    return tuple(shape)


def _array_count(shape: tuple[int, ...]) -> int:
    """Arrays in a rectangular nested array: 1 + d0 + d0*d1 + ... (the leaves excluded)."""
    total, width = 1, 1
    for length in shape[:-1]:
        width *= length
        total += width
    return total
