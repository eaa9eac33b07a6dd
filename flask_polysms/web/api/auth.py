"""Authentication of API requests: the caller from this request's headers, every time, and the
project's request budget."""

from __future__ import annotations

from functools import wraps

from flask import request

from ...services.state import get_state
from ...services.tenancy import AUTH_HEADER, CONNECTOR_HEADER, Tenant, authenticate


def current_tenant() -> Tenant:
    """The authenticated caller of this request, resolved from this request's own headers.

    Never cached: an app context (and its ``g``) can outlive a request — pytest-flask pushes one
    per test, some hosts one for the whole process — and a cached tenant would answer the next
    request, whatever its headers, as the first caller.
    """
    return authenticate(
        get_state().store,
        request.headers.get(AUTH_HEADER),
        request.headers.get(CONNECTOR_HEADER),
    )


def authenticated(view):
    """Authenticate before the view from the request's headers alone (401, 400, 404 or 403, in
    that order), count the request against the project's ``POLYSMS_READ_RATE_LIMIT`` (429 with
    ``Retry-After`` when over it), and pass the Tenant."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        tenant = current_tenant()
        # Counted after authentication, on the project: nobody else can spend its budget.
        get_state().read_limiter.hit(tenant.project_id)
        return view(*args, tenant=tenant, **kwargs)

    wrapper._apidoc = getattr(view, "_apidoc", {})  # keep flask-smorest's docs on the wrapper
    return wrapper


AUTH_PARAMETERS = [
    {"in": "header", "name": AUTH_HEADER, "required": True, "schema": {"type": "string"}},
    {"in": "header", "name": CONNECTOR_HEADER, "required": True, "schema": {"type": "string"}},
]
