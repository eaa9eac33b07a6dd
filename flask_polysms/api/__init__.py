"""The HTTP API: flask-smorest blueprints, one error shape, authentication and the rate limit.

Blueprints only parse, authenticate and call the services. Every error of every route answers
``{"detail": ..., "errors"?: {field: [messages]}}``; invalid input is 400, never 422.
"""

from __future__ import annotations

import logging
from functools import wraps
from typing import TYPE_CHECKING

from apispec import BasePlugin
from flask import request
from flask_smorest import Api
from flask_smorest import Blueprint as SmorestBlueprint
from webargs.flaskparser import FlaskParser

from ..errors import InvalidInput, PolySMSError
from ..extension import get_state
from ..phone import is_e164_shaped
from ..rate_limits import ProjectRateLimit
from ..tenancy import AUTH_HEADER, CONNECTOR_HEADER, Tenant, authenticate
from .errors import ErrorSchema, register_handlers, register_routing_errors

if TYPE_CHECKING:
    from flask import Flask

    from ..extension import PolySMSState

log = logging.getLogger("flask_polysms.api")

API_CONFIG_PREFIX = "POLYSMS_"


class Parser(FlaskParser):
    """webargs parser answering 400 (the product's API reference), not webargs' 422."""

    DEFAULT_VALIDATION_STATUS = 400

    def load_json(self, req, schema):
        """The JSON body; a body sent as anything but JSON is a 400 that says so.

        webargs reads a non-JSON body as "no body", which would answer a form-encoded request
        with "field missing" for every required field.
        """
        # content_length first: a form body may have been read (and its stream consumed) already.
        if not req.is_json and (req.content_length or req.get_data(cache=True)):
            raise InvalidInput(
                f"the request body must be JSON, sent with Content-Type: application/json "
                f"(got {req.mimetype or 'no Content-Type'})"
            )
        try:
            return super().load_json(req, schema)
        except RecursionError as exc:  # parsed again here, deeper in the stack than at the edge
            raise InvalidInput("invalid JSON body: nested too deeply") from exc


class Blueprint(SmorestBlueprint):
    """A flask-smorest blueprint with our parser and our error handlers."""

    ARGUMENTS_PARSER = Parser()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        register_handlers(self)
        self.before_request(_check_request)


class PolySMSApi(Api):
    """flask-smorest's Api without its app-wide error handler: the host app keeps its own error
    pages; our blueprints carry ours."""

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        return None


def _check_request() -> None:
    """Every API request, before its view: one hook (Flask pays a dispatch per hook)."""
    state = get_state()
    _limit_body_size(state)
    _refuse_unstorable_input()


def _limit_body_size(state: PolySMSState) -> None:
    # Per request, so the host app's own MAX_CONTENT_LENGTH is left alone.
    request.max_content_length = state.settings.max_content_length
    if request.content_length is not None and request.content_length > request.max_content_length:
        raise PolySMSError(f"request body over {request.max_content_length} bytes", status=413)


NUL_MESSAGE = "must not contain NUL (0x00) characters"
SURROGATE_MESSAGE = "must be valid Unicode text (no lone surrogates)"
# Deeper JSON is refused at the edge: webargs parses the body again, further down the stack, and
# no field of the API nests more than a few levels.
MAX_JSON_DEPTH = 100


def _unstorable_fields(value, name: str, found: dict[str, str]) -> None:
    """Add to ``found`` the name of every string in ``value`` (JSON-like) that no backend can
    store, with why: a NUL character, or a lone surrogate (text that is not Unicode scalar
    values: it cannot be encoded as UTF-8). Raises for containers nested over MAX_JSON_DEPTH.

    Iterative: a JSON body nested a few hundred levels deep must not exhaust Python's stack.
    """
    stack = [(value, name, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if where in found:
                continue
            if "\x00" in item:
                found[where] = NUL_MESSAGE
            elif not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    found[where] = SURROGATE_MESSAGE
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise PolySMSError("invalid JSON body: nested too deeply", status=400)
            if isinstance(item, dict):
                for key, sub in item.items():
                    stack.append((key, where or str(key), depth + 1))
                    stack.append((sub, f"{where}.{key}" if where else str(key), depth + 1))
            else:
                stack.extend((sub, where or "_body", depth + 1) for sub in item)


def _refuse_unstorable_input() -> None:
    """A 400 for input no backend can store or parse safely, before any view reads it.

    Text holding NUL characters (PostgreSQL refuses them, so a lookup or an insert would fail with
    a 500) or lone surrogates (no database driver can encode them) in the path, the query, the
    form, the JSON body or the auth headers; JSON nested so deep that decoding it exhausts the
    stack, or deeper than MAX_JSON_DEPTH.
    """
    found: dict[str, str] = {}
    _unstorable_fields(request.view_args or {}, "", found)
    for key, value in request.args.items(multi=True):
        _unstorable_fields([key, value], key, found)
    for header in (AUTH_HEADER, CONNECTOR_HEADER):
        _unstorable_fields(request.headers.get(header), header, found)
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for key, value in request.form.items(multi=True):
            _unstorable_fields([key, value], key, found)
    elif request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError as exc:
            raise PolySMSError("invalid JSON body: nested too deeply", status=400) from exc
        _unstorable_fields(body, "", found)
    if found:
        errors = {}
        for name, message in found.items():
            # The name may hold the bad character itself: escaped, so that any client reads it.
            shown = name.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode()
            errors[shown or "_body"] = [message]
        reasons = set(found.values())
        detail = reasons.pop() if len(reasons) == 1 else "that cannot be stored: see errors"
        raise PolySMSError(f"invalid request: text {detail}", status=400, errors=errors)


def current_tenant(senders_for_user: str | None = None) -> Tenant:
    """The authenticated caller of this request, resolved from this request's own headers.

    Never cached: an app context (and its ``g``) can outlive a request — pytest-flask pushes one
    per test, some hosts one for the whole process — and a cached tenant would answer the next
    request, whatever its headers, as the first caller.

    ``senders_for_user``: a user number whose senders the view will read, fetched with the
    credentials (see :func:`flask_polysms.tenancy.authenticate`).
    """
    return authenticate(
        get_state().store,
        request.headers.get(AUTH_HEADER),
        request.headers.get(CONNECTOR_HEADER),
        senders_for_user,
    )


def _body_number(field: str) -> str | None:
    """The JSON body's ``field`` when it looks like an E.164 number (checked in full later, by the
    view's schema), else None."""
    body = request.get_json(silent=True) if request.is_json else None
    value = body.get(field) if isinstance(body, dict) else None
    return value if is_e164_shaped(value) else None


def authenticated(view=None, *, senders_for_body_field: str | None = None):
    """Authenticate before the view (401/403/404 per DESIGN §3.1), count the request against
    the project's ``POLYSMS_READ_RATE_LIMIT`` (429 with ``Retry-After`` when over it), and pass
    the Tenant.

    ``@authenticated(senders_for_body_field="user_number")``: the view will choose a sender for
    the number in that JSON body field; the senders are read with the credentials, in the same
    round trip, and reach the view in ``tenant.senders_for``.
    """
    if view is None:
        return lambda view: authenticated(view, senders_for_body_field=senders_for_body_field)

    @wraps(view)
    def wrapper(*args, **kwargs):
        user = _body_number(senders_for_body_field) if senders_for_body_field else None
        tenant = current_tenant(user)
        # Counted after authentication, on the project: nobody else can spend its budget.
        get_state().read_limiter.hit(tenant.project_id)
        return view(*args, tenant=tenant, **kwargs)

    wrapper._apidoc = getattr(view, "_apidoc", {})  # keep flask-smorest's docs on the wrapper
    return wrapper


AUTH_PARAMETERS = [
    {"in": "header", "name": AUTH_HEADER, "required": True, "schema": {"type": "string"}},
    {"in": "header", "name": CONNECTOR_HEADER, "required": True, "schema": {"type": "string"}},
]


class CommonErrorResponses(BasePlugin):
    """Document, on every operation, the errors every route can answer, where the route's own
    decorators did not: so a client (or a fuzzer) finds each status it can get in the document.

    Every route: 400 (e.g. NUL characters), 413 (body cap), 503 (database unavailable).
    Authenticated routes: 401, 403 and 404 (the API key and connector rules of DESIGN section 3.1)
    and 429 (the project's request budget).
    """

    EVERY_ROUTE = {
        "400": "invalid input",
        "413": "request body over the size cap",
        "503": "the database is unavailable; retry (see Retry-After)",
    }
    AUTHENTICATED = {
        "401": "missing or invalid API key",
        "403": "the API key's account is not the connector's",
        "404": "unknown connector, or no such resource in this project",
        "429": "the project's request budget is spent (POLYSMS_READ_RATE_LIMIT); see Retry-After",
    }

    _path_parameters: frozenset = frozenset()

    def path_helper(self, path=None, operations=None, parameters=None, **kwargs) -> None:
        # Called just before operation_helper for the same path: its parameters (the auth
        # headers of routes declaring them with ``@blp.route(parameters=...)``) apply to each
        # operation of the path.
        self._path_parameters = frozenset(
            p.get("name") for p in (parameters or []) if isinstance(p, dict)
        )

    def operation_helper(self, path=None, operations=None, **kwargs) -> None:
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for operation in (operations or {}).values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            names = {p.get("name") for p in operation.get("parameters", []) if isinstance(p, dict)}
            names |= self._path_parameters
            extra = dict(self.EVERY_ROUTE)
            if AUTH_HEADER in names:
                extra.update(self.AUTHENTICATED)
            for status, description in extra.items():
                operation["responses"].setdefault(
                    status, {"description": description, "content": error}
                )


def register_api(app: Flask, state: PolySMSState) -> None:
    """Mount every blueprint on ``app`` and serve the OpenAPI document and its browsable view."""
    from . import (
        conversations,
        docs,
        health,
        metrics,
        outbound,
        prometheus,
        senders,
        templates,
        webhooks,
    )

    prefix = state.settings.url_prefix
    config = app.config
    config.setdefault("POLYSMS_API_TITLE", "flask-polysms")
    config.setdefault("POLYSMS_API_VERSION", "v1")
    config.setdefault("POLYSMS_OPENAPI_VERSION", "3.0.3")
    config.setdefault("POLYSMS_OPENAPI_URL_PREFIX", f"{prefix}/v1")
    config.setdefault("POLYSMS_OPENAPI_JSON_PATH", "openapi.json")
    api = PolySMSApi(
        app,
        config_prefix=API_CONFIG_PREFIX,
        spec_kwargs={
            "components": {
                "securitySchemes": {
                    "ApiKey": {"type": "apiKey", "in": "header", "name": AUTH_HEADER},
                    "Connector": {"type": "apiKey", "in": "header", "name": CONNECTOR_HEADER},
                }
            },
            "extra_plugins": [CommonErrorResponses()],
        },
    )
    state.limiter = ProjectRateLimit(
        state.settings.rate_limit, state.settings.rate_limit_storage_url
    )
    state.read_limiter = ProjectRateLimit(
        state.settings.read_rate_limit,
        storage=state.limiter.storage,
        namespace="requests",
        what="request budget",
        fail_open=True,
    )
    for module in (outbound, conversations, metrics, senders, templates, webhooks):
        api.register_blueprint(module.blp, url_prefix=prefix + module.URL_PREFIX)
    # The browsable reference, from installed packages only (flask-smorest's loads a CDN).
    app.register_blueprint(docs.bp, url_prefix=f"{prefix}/v1")
    if state.settings.health_routes:
        app.register_blueprint(health.bp, url_prefix=prefix or None)
    prometheus.register_metrics(app, state)  # POLYSMS_METRICS_ENDPOINT; times the webhooks
    register_routing_errors(app, prefix + "/v1")
