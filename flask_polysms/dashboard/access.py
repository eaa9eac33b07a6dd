"""Who is signed in to the dashboard, and the CSRF token of every form.

The Flask session (the host app's cookie, signed with its ``SECRET_KEY``) holds the API key's *id*
and the connector's id — never the key, which is a bearer secret and would then sit in a cookie.
Each request rebuilds the :class:`~flask_polysms.tenancy.Tenant` from the store, so a revoked key
or a connector moved out of the key's account ends the sign-in at the next click.

CSRF uses flask-wtf's ``generate_csrf``/``validate_csrf`` (a random token in the session, signed
with the app's key in the form) under our own session key, without turning on flask-wtf's app-wide
``CSRFProtect``: the host app keeps its own choices.
"""

from __future__ import annotations

from flask import g, request, session
from flask_wtf.csrf import generate_csrf, validate_csrf
from wtforms import ValidationError

from ..errors import InvalidInput
from ..store import Store
from ..tenancy import Tenant, authenticate

#: Session keys, namespaced so they never meet the host app's own.
SESSION_KEY_ID = "polysms_dashboard_key_id"
SESSION_CONNECTOR_ID = "polysms_dashboard_connector_id"
CSRF_SESSION_KEY = "polysms_dashboard_csrf"
#: The form field (and, for the live preview's fetch, the header) that carries the token.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

#: Where this request's tenant is kept once loaded: the WSGI environ lives exactly as long as the
#: request, unlike ``g``, which belongs to an app context that may serve many requests.
_REQUEST_TENANT = "polysms.dashboard_tenant"


def sign_in(store: Store, api_key: str, connector_id: str) -> Tenant:
    """Authenticate as the API does (401, 403, 404 as PolySMSError) and remember the ids.

    The CSRF token is renewed too, so a token seen before signing in is worthless after.
    """
    sign_out()  # a failed attempt must not leave an earlier sign-in in place
    tenant = authenticate(store, api_key, connector_id)
    session[SESSION_KEY_ID] = tenant.api_key_id
    session[SESSION_CONNECTOR_ID] = tenant.connector.id
    return tenant


def sign_out() -> None:
    """Forget the dashboard's sign-in; the host app's own session keys stay."""
    for key in (SESSION_KEY_ID, SESSION_CONNECTOR_ID, CSRF_SESSION_KEY):
        session.pop(key, None)
    request.environ.pop(_REQUEST_TENANT, None)
    forget_cached_csrf()


def signed_in_tenant(store: Store) -> Tenant | None:
    """The tenant of this request's sign-in, checked against the store now; None when there is
    none or it is no longer valid (key revoked or gone, connector gone or of another account)."""
    if _REQUEST_TENANT in request.environ:
        return request.environ[_REQUEST_TENANT]
    tenant = _load_tenant(store, session.get(SESSION_KEY_ID), session.get(SESSION_CONNECTOR_ID))
    if tenant is None and (SESSION_KEY_ID in session or SESSION_CONNECTOR_ID in session):
        sign_out()
    request.environ[_REQUEST_TENANT] = tenant
    return tenant


def forget_cached_csrf() -> None:
    """Drop the signed CSRF token flask-wtf caches on ``g``: ``g`` can outlive the request (an app
    context pushed around several requests), and the token must come from this request's
    session, never from an earlier caller's."""
    g.pop(CSRF_SESSION_KEY, None)


def _load_tenant(store: Store, key_id: object, connector_id: object) -> Tenant | None:
    if not isinstance(key_id, str) or not isinstance(connector_id, str):
        return None
    key = store.get_api_key(key_id)
    if key is None or key.revoked_at is not None:
        return None
    connector = store.get_connector(connector_id)
    if connector is None:
        return None
    project = store.get_project(connector.project_id)
    if project is None or project.account_id != key.account_id:
        return None
    return Tenant(
        account_id=key.account_id,
        project=project,
        environment=connector.environment,
        connector=connector,
        api_key_id=key.id,
    )


def csrf_token() -> str:
    """The signed CSRF token to put in a form (one per session, cached for the request)."""
    return generate_csrf(token_key=CSRF_SESSION_KEY)


def check_csrf(submitted: str | None) -> None:
    """Raise InvalidInput (400) unless ``submitted`` is this session's CSRF token."""
    try:
        validate_csrf(submitted, token_key=CSRF_SESSION_KEY)
    except ValidationError as exc:
        reason = exc.args[0] if exc.args else "The CSRF token is invalid."
        raise InvalidInput(f"{reason} Reload the page and try again.") from exc
