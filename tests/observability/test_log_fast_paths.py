"""The JSON log line's fast paths give the text of the straightforward code they replace:
``iso_timestamp`` is ``datetime.isoformat`` to the millisecond, ``json_line`` is
``json.dumps(..., default=str)``, and a whole formatted record equals what the former
formatter (datetime + json.dumps, copied below) wrote."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.logs import _RECORD_FIELDS, JsonFormatter, iso_timestamp, json_line


def reference_timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def reference_line(entry: dict) -> str:
    return json.dumps(entry, default=str, separators=(",", ":"))


def reference_format(record: logging.LogRecord) -> str:
    """JsonFormatter.format before the fast paths (outside a request context)."""
    entry = {
        "ts": reference_timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": record.getMessage(),
        "pid": record.process,
    }
    for key, value in record.__dict__.items():
        if key not in _RECORD_FIELDS and not key.startswith("_"):
            entry[key] = value
    if record.exc_info:
        entry["exc_info"] = logging.Formatter().formatException(record.exc_info)
    return reference_line(entry)


def _edges() -> list[float]:
    """Timestamps on and next to millisecond and half-microsecond boundaries, where
    rounding to microseconds then truncating to milliseconds can go either way."""
    out = []
    for second in (0, 1, 59, 1_700_000_000, 1_795_261_712, 4_102_444_799, 99_999_999_999):
        for frac in (0.0, 0.0005, 0.000_000_5, 0.000_999_5, 0.001, 0.123_499_5, 0.999, 0.999_999_5):
            base = second + frac
            out += [base, base - 1e-7, base + 1e-7]
    return [t for t in out if 0 <= t < 1e11]


@pytest.mark.parametrize("created", _edges())
def test_timestamp_edges_match_datetime(created):
    assert iso_timestamp(created) == reference_timestamp(created)


@settings(max_examples=3000, deadline=None)
@given(st.floats(min_value=0, max_value=1e11, exclude_max=True))
def test_timestamp_matches_datetime(created):
    assert iso_timestamp(created) == reference_timestamp(created)


@pytest.mark.parametrize("created", [-1.5, 0, 1_795_261_712, 1e11 + 0.25])
def test_timestamp_outside_the_fast_path_is_datetimes(created):
    assert iso_timestamp(created) == reference_timestamp(created)


class Opaque:
    def __str__(self) -> str:
        return "opaque-object"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN, infinities, 1e-05, 1e+16 ... all included
    st.floats(min_value=1e-4, max_value=1e16),
    st.text(),  # unicode, control characters, DEL
    st.text(alphabet=st.characters(max_codepoint=127)),
    st.just(Opaque()),
    st.sampled_from([logging.INFO, "x" * 300, ""]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
    st.tuples(scalars, scalars),
)


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(st.text(max_size=12), values, max_size=12))
def test_json_line_is_json_dumps(entry):
    assert json_line(entry) == reference_line(entry)


plain = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(),
    st.floats(min_value=-1e16, max_value=1e16),
    st.text(),
    st.text(alphabet=st.characters(max_codepoint=127)),
)


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(st.text(max_size=12), plain, max_size=12))
def test_json_line_of_flat_plain_values_is_json_dumps(entry):
    """The entries the orjson path takes (and those it hands back to json.dumps)."""
    assert json_line(entry) == reference_line(entry)


@pytest.mark.parametrize(
    "value",
    [
        "a\x7fb",
        "tab\tnew\nline\x00\x1f",
        'quote " backslash \\ slash /',
        "ünïcode",
        "\u2028",
        "lone surrogate \ud800",
        2**63,
        2**64,
        -(2**64),
        1e-05,
        1e16,
        -0.0,
        float("nan"),
        float("-inf"),
        0.1 + 0.2,
        123456789012345.67,
        True,
        None,
    ],
)
def test_json_line_values_json_writes_differently_from_orjson(value):
    entry = {"ts": "2026-11-21T11:48:41.825+00:00", "value": value, "after": 1}
    assert json_line(entry) == reference_line(entry)


@settings(max_examples=500, deadline=None)
@given(
    created=st.floats(min_value=0, max_value=5e9),
    message=st.text(max_size=30),
    extras=st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
            lambda k: k not in _RECORD_FIELDS
        ),
        values,
        max_size=8,
    ),
)
def test_formatted_record_is_the_former_formatters(created, message, extras):
    record = logging.LogRecord("layerscope.test", logging.WARNING, "", 0, message, None, None)
    record.created = created
    record.__dict__.update(extras)
    assert JsonFormatter().format(record) == reference_format(record)


def test_access_record_fields_and_order_are_unchanged():
    fields = {
        "request_id": "0" * 32,
        "method": "POST",
        "endpoint": "/models/<name>/predict",
        "path": "/models/fraud/predict",
        "status": 200,
        "duration_ms": 0.312,
        "request_bytes": 612,
        "response_bytes": 301,
        "model": "fraud",
        "version": 1,
    }
    logger = logging.getLogger("layerscope.access")
    record = logger.makeRecord(
        "layerscope.access", logging.INFO, "", 0, "request", None, None, extra=fields
    )
    line = JsonFormatter().format(record)
    assert line == reference_format(record)
    assert list(json.loads(line)) == ["ts", "level", "logger", "message", "pid", *fields]
