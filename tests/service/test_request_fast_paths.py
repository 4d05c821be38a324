"""The request plumbing's shortcuts answer exactly what werkzeug / Flask answer:
``inputs.mimetype`` and ``inputs.content_length`` equal ``request.mimetype`` and
``request.content_length`` for every header shape, the JSON checks built on them give the
same statuses and messages, and the app's cached ``ensure_sync`` returns what Flask's does."""

from __future__ import annotations

import json

import pytest
from flask import Flask, request

from service import LayerscopeFlask, inputs

CONTENT_TYPES = [
    None,
    "",
    "application/json",
    "Application/JSON",
    "application/json; charset=utf-8",
    " application/json",
    "application/json ",
    "application/vnd.api+json",
    "application/problem+JSON; q=1",
    "multipart/form-data",
    "Multipart/Form-Data; boundary=xyz",
    "text/plain",
    "application/x-www-form-urlencoded",
    ";",
    "application/json;",
    "ünïcode/type",
]

CONTENT_LENGTHS = [None, "0", "12", "0012", "-5", "abc", "1e3", " 7", "99999999999999999999", ""]
TRANSFER_ENCODINGS = [None, "chunked", "gzip, chunked", "Chunked", "gzip"]


def _environ(content_type, content_length=None, transfer_encoding=None) -> dict:
    environ = {}
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    if transfer_encoding is not None:
        environ["HTTP_TRANSFER_ENCODING"] = transfer_encoding
    return environ


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_mimetype_is_werkzeugs(app, content_type):
    with app.test_request_context("/", method="POST", environ_overrides=_environ(content_type)):
        if content_type is None:
            request.environ.pop("CONTENT_TYPE", None)
        ours = inputs.mimetype(request)
        assert ours == request.mimetype
        assert inputs.is_json(request) == (
            request.mimetype in inputs.JSON_TYPES or request.mimetype.endswith("+json")
        )
        assert inputs.is_multipart(request) == (request.mimetype == "multipart/form-data")


@pytest.mark.parametrize("transfer_encoding", TRANSFER_ENCODINGS)
@pytest.mark.parametrize("content_length", CONTENT_LENGTHS)
def test_content_length_is_werkzeugs(app, content_length, transfer_encoding):
    environ = _environ("application/json", content_length, transfer_encoding)
    with app.test_request_context("/", method="POST", environ_overrides=environ):
        if content_length is None:
            request.environ.pop("CONTENT_LENGTH", None)
        ours = inputs.content_length(request)  # first: werkzeug caches its own answer
        assert ours == request.content_length


def _slow_read_json_error(content_type: str | None, allow_multipart: bool) -> str | None:
    """What read_json said about a Content-Type before the shortcut (request.mimetype)."""
    mimetype = content_type and Flask(__name__).request_class(
        {"CONTENT_TYPE": content_type, "REQUEST_METHOD": "POST"}
    ).mimetype
    if not mimetype or mimetype in inputs.JSON_TYPES or mimetype.endswith("+json"):
        return None
    expected = "application/json"
    if allow_multipart:
        expected += " (or multipart/form-data with an 'image' file)"
    return f"Content-Type {mimetype!r} is not supported; expected {expected}"


@pytest.mark.parametrize("allow_multipart", [False, True])
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_read_json_media_type_errors_are_unchanged(app, content_type, allow_multipart):
    body = json.dumps({"instances": [[1.0]]}).encode()
    with app.test_request_context("/", method="POST", data=body):
        if content_type is None:
            request.environ.pop("CONTENT_TYPE", None)
        else:
            request.environ["CONTENT_TYPE"] = content_type
        expected = _slow_read_json_error(content_type, allow_multipart)
        if expected is None:
            assert inputs.read_json(request, 10_000, allow_multipart) == {"instances": [[1.0]]}
        else:
            with pytest.raises(inputs.UnsupportedMediaType) as info:
                inputs.read_json(request, 10_000, allow_multipart)
            assert info.value.message == expected


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
@pytest.mark.parametrize("path", ["/models/fraud/predict", "/models/fashion/predict"])
def test_predict_statuses_and_messages_per_content_type(client, path, content_type):
    """End to end through the native endpoint: JSON (or no type) decodes, others are 415."""
    body = json.dumps({"instances": [[0.0] * 3]}).encode()
    response = client.post(path, data=body, content_type=content_type)
    if content_type == "text/plain":
        assert response.status_code == 415
        expected = "application/json"
        if "fashion" in path:
            expected += " (or multipart/form-data with an 'image' file)"
        assert response.get_json() == {
            "error": f"Content-Type 'text/plain' is not supported; expected {expected}"
        }
    else:
        assert response.status_code == 400  # decoded, then the 3-value row is refused


def test_oversized_body_message_is_unchanged(small_app):
    body = json.dumps({"instances": [[0.5] * 30] * 40}).encode()
    response = small_app.test_client().post(
        "/models/fraud/predict", data=body, content_type="application/json"
    )
    assert response.status_code == 413
    assert response.get_json()["error"] == (
        f"request body is {len(body)} bytes; the limit is 4096 bytes "
        "(LAYERSCOPE_MAX_BODY_BYTES): send fewer instances per request"
    )


def _ensure_sync_outcome(app: Flask, func):
    try:
        wrapped = app.ensure_sync(func)
    except Exception as exc:  # Flask without its async extra refuses async views
        return ("error", type(exc), str(exc))
    return ("same" if wrapped is func else "wrapped",)


def plain_view():
    return "ok"


async def async_view():
    return "ok"


class Handler:
    def method(self):
        return "ok"


@pytest.mark.parametrize("func", [plain_view, async_view, Handler().method, len])
def test_ensure_sync_answers_as_flasks(func):
    ours, flasks = LayerscopeFlask(__name__), Flask(__name__)
    for _ in range(3):  # the first call fills the cache, the next ones read it
        assert _ensure_sync_outcome(ours, func) == _ensure_sync_outcome(flasks, func)
    assert (func in ours._sync_functions) == (func is plain_view)


def test_the_app_factory_builds_the_caching_flask(app):
    assert isinstance(app, LayerscopeFlask)
    app.test_client().post("/models/fraud/predict", json={"instances": [[0.0] * 30]})
    assert app.view_functions["native.predict"] in app._sync_functions
