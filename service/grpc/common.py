"""What every gRPC method shares with a REST request: the app context ``compute`` and
``resolve`` need, the warm-up hold, the request id, the introspection token, the error ->
status-code mapping, the metrics and the access line.

A method is a plain function ``(request, call) -> response`` wrapped by ``Methods.rpc``;
it raises the service's own errors (``LayerscopeError``), which become the status codes
below with the REST message as the details."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable

import grpc
from flask import g
from google.protobuf import message_factory

from service import logs, metrics, security
from service.binary_tensors import BinaryTensorError
from service.errors import InvalidInput, LayerscopeError

log = logging.getLogger("layerscope.grpc")

REQUEST_ID_KEY = "x-request-id"

# HTTP status of a LayerscopeError -> the gRPC status of the same refusal.
CODE_OF_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # size limits (activation values, batch bytes)
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.FAILED_PRECONDITION,  # a subclassed model has no layers to show
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,  # not loaded yet, batch queue full
}
# ... and back, for the series shared with REST (layerscope_requests{code=~"5.."} alerts)
STATUS_OF_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
}

_access = logging.getLogger(logs.ACCESS_LOGGER)
_ACCESS_HEAD = logs.line_head(0.0, "info", logs.ACCESS_LOGGER, "request", 0)


class Call:
    """One call's metadata (lower-case keys, as gRPC sends them) and request id."""

    __slots__ = ("metadata", "request_id")

    def __init__(self, metadata: dict[str, str], request_id: str):
        self.metadata = metadata
        self.request_id = request_id


class Malformed:
    """What the request deserializer returns for bytes that are not the method's message
    (grpc would answer INTERNAL for its exception): answered INVALID_ARGUMENT."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


def _deserializer(cls):
    name = cls.DESCRIPTOR.full_name

    def parse(data: bytes):
        """(the message, its size in bytes): upb's ByteSize() is slow for raw contents."""
        try:
            return cls.FromString(data), len(data)
        except Exception as exc:  # DecodeError, or anything a hostile payload provokes
            return Malformed(f"the request is not a valid {name} message: {exc}"), len(data)

    return parse


# -- the wire form of an answer ---------------------------------------------------------------
# upb (protobuf 7's Python runtime) is slow with several large values in a repeated bytes
# field: all 12 layers of a Fashion-MNIST CNN as raw_output_contents (280 KB) took ~0.12 ms
# to append, 0.3-1.2 ms to serialize and 0.7 ms to ByteSize() (30x the same bytes as one
# value), more than the forward pass. So ModelInfer's raw outputs never enter the message:
# ``RawAnswer`` carries them beside it and ``encode`` writes each as protobuf would (a tag
# and a length before the value), after the message's other fields: the same message to
# any parser.


class RawAnswer:
    """A response message and the values of one of its repeated bytes fields, kept out of
    the message until it is encoded."""

    __slots__ = ("message", "field", "values")

    def __init__(self, message, field: str, values: list[bytes]):
        self.message = message
        self.field = message.DESCRIPTOR.fields_by_name[field]
        self.values = values

    def to_message(self):
        """The whole message (tests, and anything that wants the protobuf object)."""
        whole = type(self.message)()
        whole.CopyFrom(self.message)
        getattr(whole, self.field.name).extend(self.values)
        return whole


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode(answer) -> bytes:
    """The serialized response: a message, or a ``RawAnswer``'s message and values."""
    if not isinstance(answer, RawAnswer):
        return answer.SerializeToString()
    pieces = [answer.message.SerializeToString()]
    tag = _varint(answer.field.number << 3 | 2)  # wire type 2: length-delimited
    for value in answer.values:
        pieces += (tag, _varint(len(value)), value)
    return b"".join(pieces)


def register(server, service, handlers: dict[str, Callable]) -> str:
    """Serve ``handlers`` (method name -> handler) of the protobuf ``service`` descriptor;
    its other methods answer UNIMPLEMENTED. Returns the service's full name."""
    methods = {}
    for method in service.methods:
        fn = handlers.get(method.name)
        if fn is None:
            continue
        request = message_factory.GetMessageClass(method.input_type)
        methods[method.name] = grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=_deserializer(request),
            response_serializer=None,  # the handler answers with encode()'s bytes
        )
    missing = set(handlers) - set(methods)
    if missing:
        raise ValueError(f"{service.full_name} has no methods {sorted(missing)}")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, methods),)
    )
    server.add_registered_method_handlers(service.full_name, methods)
    return service.full_name


# -- introspection token (LAYERSCOPE_INTROSPECTION_TOKEN) as call metadata --------------------
def require_introspection(call: Call) -> None:
    """``authorization: Bearer <token>`` in the call metadata, as the REST header: none (or
    not Bearer) -> UNAUTHENTICATED, a wrong token -> PERMISSION_DENIED; a no-op without a
    token configured."""
    expected = security.introspection_token()
    if expected is None:
        return
    what = "introspection (LAYERSCOPE_INTROSPECTION_TOKEN is set)"
    value = call.metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        got = f"a {scheme!r} scheme" if value else "no authorization metadata"
        raise security.Unauthorized(
            f"{what} requires the call metadata 'authorization: Bearer <token>'; the call had {got}"
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise security.Forbidden(f"the bearer token is not valid for {what}")


def introspection_allowed(call: Call) -> bool:
    try:
        require_introspection(call)
    except (security.Unauthorized, security.Forbidden):
        return False
    return True


# -- the wrapper ---------------------------------------------------------------------------------
class Methods:
    """Wraps the functions of one servicer: ``rpc(path, name_of)`` makes a gRPC handler
    ``(self, request, context)`` of ``fn(request, call)``. ``name_of(request)`` names the
    model for the labels when no runtime resolved (unknown models: "unknown")."""

    def __init__(self, app):
        self.app = app
        self.state = app.extensions["layerscope"]

    def rpc(self, path: str, fn: Callable, name_of: Callable | None = None, model: bool = True):
        app, state = self.app, self.state

        def handler(received, context):
            start = time.perf_counter()
            request, request_bytes = received
            metadata = dict(context.invocation_metadata())
            rid = logs.request_id_from(metadata.get(REQUEST_ID_KEY))
            call = Call(metadata, rid)
            code, details, response, served = grpc.StatusCode.OK, "", None, None
            metrics.IN_FLIGHT.inc()
            try:
                with app.app_context():
                    ctx = g._get_current_object()
                    ctx.request_id = rid
                    if model:  # a fresh worker holds model calls until its models are warm
                        done = state.repository.initial_load_done
                        if not done.is_set():
                            done.wait(state.settings.timeout / 2)
                    try:
                        if type(request) is Malformed:
                            raise InvalidInput(request.message)
                        response = encode(fn(request, call))
                    finally:
                        served = ctx.get("layerscope_model")
            except LayerscopeError as exc:
                code = CODE_OF_STATUS.get(exc.status) or (
                    grpc.StatusCode.INTERNAL if exc.status >= 500 else grpc.StatusCode.UNKNOWN
                )
                details = exc.message
            except BinaryTensorError as exc:  # raw contents that do not fit their tensor
                code, details = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except Exception:
                log.exception("gRPC %s failed", path, extra={"request_id": rid})
                code = grpc.StatusCode.INTERNAL
                details = f"internal error (request id {rid}); see the server log"
            finally:
                metrics.IN_FLIGHT.dec()
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            elapsed = time.perf_counter() - start
            _record(path, code, elapsed, served, name_of, request, request_bytes, response, rid)
            if code is not grpc.StatusCode.OK:
                context.abort(code, details)
            return response

        handler.__name__ = path.rsplit("/", 1)[-1]
        return handler


def _record(path, code, elapsed, served, name_of, request, request_bytes, response, rid):
    """The request counters shared with REST, the gRPC counter and the access line."""
    try:
        if served is not None:
            model, version = metrics.model_label(str(served[0])), str(served[1])
        else:
            named = name_of(request) if name_of and type(request) is not Malformed else None
            model = metrics.model_label(named)
            version = None
        version = metrics.version_label(model, version)
        status = STATUS_OF_CODE.get(code, 500)
        requests, duration = metrics._request_children(model, version, path, "GRPC", status)
        requests.inc()
        duration.observe(elapsed)
        metrics.child(metrics.GRPC_REQUESTS, model, version, path, code.name).inc()
        if not _access.isEnabledFor(logging.INFO):
            return
        fields = {
            "request_id": rid,
            "method": "GRPC",
            "endpoint": path,
            "path": path,
            "status": status,
            "grpc_status": code.name,
            "duration_ms": round(elapsed * 1e3, 3),
            "request_bytes": request_bytes,
            "response_bytes": len(response) if response is not None else 0,
            "model": model if served is not None or model != metrics.UNKNOWN_MODEL else None,
            "version": None if served is None else served[1],
        }
        handler = logs.direct_access_handler()
        if handler is not None:
            handler.emit_entry({**_ACCESS_HEAD, "ts": time.time(), **fields})
        else:
            _access.handle(
                _access.makeRecord(
                    logs.ACCESS_LOGGER, logging.INFO, "", 0, "request", None, None, extra=fields
                )
            )
    except Exception:  # metrics and logs never break a call
        log.exception("gRPC request metrics failed")
