"""Authentication of API requests: the caller from this request's headers, every time, and the
project's request budget."""

from __future__ import annotations

from functools import wraps

from flask import request

from ..extension import get_state
from ..phone import is_e164_shaped
from ..tenancy import AUTH_HEADER, CONNECTOR_HEADER, Tenant, authenticate


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
    """Authenticate before the view (401, 400, 404 or 403, in that order), count the request against
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
