"""Bearer-token checks for the admin API and the optional introspection token.

Tokens come from ``LAYERSCOPE_ADMIN_TOKEN`` / ``LAYERSCOPE_INTROSPECTION_TOKEN`` (pydantic
``SecretStr``, so they never appear in a repr or a log line) and are compared in constant
time. No header (or not ``Bearer``) is a 401 with ``WWW-Authenticate``; a wrong token a 403.

With an introspection token set, every endpoint that reveals model internals requires it:
the introspection blueprint (layer tables, activations, statistics, attributions, pictures,
reference samples; the ``/ui`` page itself stays public and asks for the token), V2
``outputs`` naming a hidden layer and TF Serving ``output_layers``. Model metadata
(``GET /models/{name}``, ``GET /v2/models/{name}``) then lists hidden layers only to
requests carrying the token; others see the model's input and final output."""

from __future__ import annotations

import hmac

from flask import Flask, Response, current_app, request

from service.errors import LayerscopeError

# introspection endpoints that stay public: the explorer page and its static files
PUBLIC_INTROSPECT = {"introspect.ui", "introspect.ui_static"}


class Unauthorized(LayerscopeError):
    status = 401


class Forbidden(LayerscopeError):
    status = 403


def _secret(value) -> str | None:
    """The token's text, or None when unset or empty (an empty token would match '')."""
    text = value.get_secret_value() if value is not None else ""
    return text or None


def check_bearer(expected: str, what: str) -> None:
    """401 without ``Authorization: Bearer <token>``, 403 when the token differs."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        got = f"a {scheme!r} scheme" if header else "no Authorization header"
        raise Unauthorized(
            f"{what} requires 'Authorization: Bearer <token>'; the request had {got}"
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Forbidden(f"the bearer token is not valid for {what}")


def introspection_token() -> str | None:
    return _secret(current_app.extensions["layerscope"].settings.introspection_token)


def admin_token() -> str | None:
    return _secret(current_app.extensions["layerscope"].settings.admin_token)


def introspection_allowed() -> bool:
    """True when no introspection token is set, or the request carries the right one.
    For metadata that only *lists* hidden layers: it is trimmed, not refused."""
    try:
        require_introspection()
    except (Unauthorized, Forbidden):
        return False
    return True


def require_introspection() -> None:
    """Call before revealing hidden layers (a no-op when no token is configured)."""
    token = introspection_token()
    if token is not None:
        check_bearer(token, "introspection (LAYERSCOPE_INTROSPECTION_TOKEN is set)")


def _guard_introspection() -> None:
    endpoint = request.endpoint or ""
    if endpoint.startswith(("introspect.", "understand.")) and endpoint not in PUBLIC_INTROSPECT:
        require_introspection()


def _challenge(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="layerscope"'
    return response


def init_app(app: Flask) -> None:
    app.before_request(_guard_introspection)
    app.after_request(_challenge)
