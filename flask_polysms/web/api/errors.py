"""One error shape for every route of ours: ``{"detail": ..., "errors"?: {field: [messages]}}``.

Handlers live on our blueprints, so they answer for our views and nothing else, whatever the host
app registers and in whichever order. Routing errors (an unknown path, a wrong method) belong to
no blueprint; one app-wide request hook answers those under our API's root that are ours, and
leaves every other to the host.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import marshmallow as ma
from flask import jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from ...errors import PolySMSError
from ...services.state import get_state
from ..hosting import is_our_endpoint

if TYPE_CHECKING:
    from flask import Flask, Response

log = logging.getLogger("flask_polysms.api")

#: The response header carrying the id logged with an unexpected failure.
REQUEST_ID_HEADER = "X-Request-ID"


class ErrorSchema(ma.Schema):
    """The one error body of every route."""

    detail = ma.fields.String(required=True, metadata={"description": "What went wrong"})
    errors = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.List(ma.fields.String()),
        metadata={"description": "Messages per field at fault"},
    )


def _flatten(messages) -> dict[str, list[str]]:
    """webargs' {location: {field: [msgs]}} as {field: [msgs]}."""
    errors: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for location, fields in messages.items():
            if isinstance(fields, dict):
                for name, msgs in fields.items():
                    if isinstance(msgs, dict):  # nested fields: name.sub
                        for sub, sub_msgs in _flatten({location: msgs}).items():
                            errors[f"{name}.{sub}"] = sub_msgs
                    else:
                        errors[str(name)] = [
                            str(m) for m in (msgs if isinstance(msgs, list) else [msgs])
                        ]
            elif isinstance(fields, list):
                errors.setdefault("_body", []).extend(str(m) for m in fields)
    return errors


def error_response(status: int, detail: str, errors=None, headers=None) -> Response:
    """A JSON error of our shape."""
    body = {"detail": detail}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def handle_polysms_error(error: PolySMSError) -> Response:
    """Our own errors carry their status, detail, field errors and headers."""
    return error_response(error.status, error.detail, error.errors, error.headers)


def handle_http_error(error: HTTPException) -> Response:
    """Werkzeug's and webargs' errors in our shape (webargs' field messages under ``errors``)."""
    data = getattr(error, "data", None) or {}
    status = error.code or 500
    messages = data.get("messages")
    if messages is not None:
        errors = _flatten(messages)
        if "_body" in errors and not any(k != "_body" for k in errors):
            return error_response(400, "; ".join(errors["_body"]) or "invalid request body")
        return error_response(400, "invalid request: see errors", errors)
    if status == 413:
        limit = get_state().settings.max_content_length
        if request.content_length is not None and request.content_length <= limit:
            # Werkzeug's cap on multipart parts (1000) answers 413 for a body within the size cap.
            return error_response(413, "request body with too many form parts")
        return error_response(413, f"request body over {limit} bytes")
    response = error_response(status, error.description or error.name, headers=data.get("headers"))
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def handle_unexpected(error: Exception) -> Response:
    """Anything else raised in one of our views: 503 for a storage outage (the Store names the
    exceptions that mean one), else a 500 whose detail hides the cause and gives the id it was
    logged under."""
    if isinstance(error, HTTPException):
        return handle_http_error(error)
    if isinstance(error, tuple(get_state().store.unavailable_errors)):
        # The class and first line only: a driver's message never carries bound values.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        log.warning(
            "storage unavailable during %s %s: %s: %s",
            request.method,
            request.path,
            type(error).__name__,
            first_line,
        )
        return error_response(
            503,
            "the database is unavailable (connection lost); retry the request",
            headers={"Retry-After": "1"},
        )
    request_id = uuid.uuid4().hex
    log.error(
        "unexpected error in %s %s (request id %s)",
        request.method,
        request.path,
        request_id,
        exc_info=error,
    )
    return error_response(
        500,
        f"internal error: the server logged it with request id {request_id}",
        headers={REQUEST_ID_HEADER: request_id},
    )


def register_handlers(blueprint) -> None:
    """Give one of our blueprints our error handlers (they outrank the host app's for its views)."""
    blueprint.register_error_handler(HTTPException, handle_http_error)
    blueprint.register_error_handler(PolySMSError, handle_polysms_error)
    blueprint.register_error_handler(Exception, handle_unexpected)


def register_routing_errors(app: Flask, api_root: str) -> None:
    """Answer, in our shape, routing errors under ``api_root`` that are ours: a wrong method on
    one of our routes, and an unknown path where the host serves nothing under ``api_root`` (or,
    when it does, an unknown path beside our own routes). Anything else is the host's to answer.

    A request hook rather than an app error handler: a host handler registered for the same code,
    before or after us, then never takes our errors, nor we its.
    """

    def answer_routing_error() -> Response | None:
        error = request.routing_exception
        if error is None:
            return None
        path = request.path
        if path != api_root and not path.startswith(api_root + "/"):
            return None
        if isinstance(error, MethodNotAllowed):
            return handle_http_error(error) if _method_is_ours(app, error) else None
        if isinstance(error, NotFound) and _unknown_path_is_ours(app, api_root, path):
            return handle_http_error(error)
        return None

    app.before_request(answer_routing_error)


def _method_is_ours(app: Flask, error: MethodNotAllowed) -> bool:
    """True when the rule that matched the path, for a method it allows, is one of ours."""
    adapter = app.url_map.bind_to_environ(request.environ)
    for method in error.valid_methods or ():
        try:
            rule, _ = adapter.match(method=method, return_rule=True)
        except HTTPException:
            continue
        return is_our_endpoint(rule.endpoint)
    return False


def _unknown_path_is_ours(app: Flask, api_root: str, path: str) -> bool:
    """No host route under ``api_root``: every unknown path there is ours. Otherwise only one
    whose first segment after the root is the first segment of one of our routes."""
    segment = path[len(api_root) :].lstrip("/").split("/", 1)[0]
    host_shares_root = False
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(api_root + "/"):
            continue
        if not is_our_endpoint(rule.endpoint):
            host_shares_root = True
        elif rule.rule[len(api_root) :].lstrip("/").split("/", 1)[0] == segment:
            return True
    return not host_shares_root
