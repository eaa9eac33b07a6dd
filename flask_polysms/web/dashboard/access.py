"""Who is signed in to the dashboard, and the CSRF token of every form.

A sign-in is a server-side record (:class:`~flask_polysms.ports.store.DashboardSignIn`: created,
last
seen, ended). The browser holds only a random secret, in a cookie of the dashboard's own
(:data:`COOKIE_NAME`: ``HttpOnly``, ``SameSite=Lax``, ``Secure`` when the request came over https,
its path the dashboard's), and the record's id is the secret's SHA-256: the store is searched by
digest and a stolen table holds nothing to replay. Signing out ends the record, so a copy of the
cookie stops working too; a sign-in also ends after ``POLYSMS_DASHBOARD_IDLE_TIMEOUT`` without a
request and ``POLYSMS_DASHBOARD_ABSOLUTE_TIMEOUT`` after it began. Each request rebuilds the
:class:`~flask_polysms.services.tenancy.Tenant` from the store, so a revoked key or a connector
moved out of
the key's account ends the sign-in at the next click. The host app's session cookie and its
settings are left as they are.

CSRF uses flask-wtf's ``generate_csrf``/``validate_csrf`` (a random token in the host app's Flask
session, signed with the app's key in the form) under our own session key, without turning on
flask-wtf's app-wide ``CSRFProtect``: the host app keeps its own choices.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from flask import Response, g, request, session
from flask_wtf.csrf import generate_csrf, validate_csrf
from wtforms import ValidationError

from ...authorisation import authorises
from ...clock import utcnow
from ...errors import InvalidInput
from ...ports.store import DashboardSignIn, Store
from ...services.tenancy import Tenant, authenticate

if TYPE_CHECKING:
    from ...services.state import PolySMSState

#: The dashboard's own cookie: the sign-in's random secret, nothing else.
COOKIE_NAME = "polysms_dashboard"
#: Session keys, namespaced so they never meet the host app's own.
CSRF_SESSION_KEY = "polysms_dashboard_csrf"
#: Where 0.1 kept the signed-in ids in the Flask session: removed when seen, never trusted.
LEGACY_SESSION_KEYS = ("polysms_dashboard_key_id", "polysms_dashboard_connector_id")
#: The form field (and, for the live preview's fetch, the header) that carries the token.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
#: ``last_seen_at`` is written at most this often: a page and its preview fetches would otherwise
#: each write the row, and the idle timeout is minutes long.
TOUCH_EVERY = timedelta(seconds=30)

#: Where this request's tenant (and the cookie to send back) are kept: the WSGI environ lives
#: exactly as long as the request, unlike ``g``, which belongs to an app context that may serve
#: many requests.
_REQUEST_TENANT = "polysms.dashboard_tenant"
_REQUEST_COOKIE = "polysms.dashboard_cookie"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def sign_in(state: PolySMSState, api_key: str, connector_id: str) -> Tenant:
    """Authenticate as the API does (401, 403, 404 as PolySMSError) and open a sign-in record;
    its secret goes out in the dashboard's cookie (see :func:`apply_cookie`).

    Any earlier sign-in of this browser ends first, and the CSRF token is renewed, so a token
    seen before signing in is worthless after.
    """
    sign_out(state)  # a failed attempt must not leave an earlier sign-in in place
    tenant = authenticate(state.store, api_key, connector_id)
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    state.store.add_dashboard_sign_in(
        DashboardSignIn(
            id=_digest(secret),
            api_key_id=tenant.api_key_id,
            connector_id=tenant.connector.id,
            created_at=now,
            last_seen_at=now,
        )
    )
    request.environ[_REQUEST_COOKIE] = secret
    return tenant


def sign_out(state: PolySMSState) -> None:
    """End this browser's sign-in record (every copy of its cookie with it) and drop the cookie;
    the host app's own session keys stay."""
    secret = request.cookies.get(COOKIE_NAME)
    if secret:
        state.store.end_dashboard_sign_in(_digest(secret), utcnow(), "signed_out")
    _forget(session_too=True)


def _forget(*, session_too: bool) -> None:
    request.environ[_REQUEST_COOKIE] = None  # deleted on the response
    request.environ.pop(_REQUEST_TENANT, None)
    for key in LEGACY_SESSION_KEYS:
        session.pop(key, None)
    if session_too:
        session.pop(CSRF_SESSION_KEY, None)
        forget_cached_csrf()


def signed_in_tenant(state: PolySMSState) -> Tenant | None:
    """The tenant of this request's sign-in, checked against the store now; None when there is
    none or it is no longer valid (signed out, idle or too old, key revoked or gone, connector
    gone or of another account). An invalid sign-in is ended and its cookie dropped."""
    if _REQUEST_TENANT in request.environ:
        return request.environ[_REQUEST_TENANT]
    tenant = _current_tenant(state)
    request.environ[_REQUEST_TENANT] = tenant
    return tenant


def _current_tenant(state: PolySMSState) -> Tenant | None:
    secret = request.cookies.get(COOKIE_NAME)
    if not secret:
        return None
    store, settings = state.store, state.settings
    sign_in_id = _digest(secret)
    record = store.get_dashboard_sign_in(sign_in_id)
    if record is None or record.ended_at is not None:
        _forget(session_too=False)
        return None
    now = utcnow()
    tenant = None
    if now - record.created_at >= settings.dashboard_absolute_timeout:
        reason = "expired"
    elif now - record.last_seen_at >= settings.dashboard_idle_timeout:
        reason = "idle"
    else:
        tenant = _load_tenant(store, record.api_key_id, record.connector_id)
        reason = None if tenant is not None else "revoked"
    if reason is not None:
        store.end_dashboard_sign_in(sign_in_id, now, reason)
        _forget(session_too=False)
        return None
    if now - record.last_seen_at >= TOUCH_EVERY:
        store.touch_dashboard_sign_in(sign_in_id, now)
    return tenant


def apply_cookie(response: Response, path: str) -> Response:
    """Set or delete the dashboard's cookie on ``response`` when this request signed in or out
    (or found its sign-in ended). Its flags are set here, whatever the host app's session cookie
    settings are: the host's cookie is not ours to change."""
    if _REQUEST_COOKIE not in request.environ:
        return response
    secret = request.environ[_REQUEST_COOKIE]
    flags = {"path": path, "secure": request.is_secure, "httponly": True, "samesite": "Lax"}
    if secret:
        # No Max-Age: the cookie ends with the browser; the record's timeouts end it sooner.
        response.set_cookie(COOKIE_NAME, secret, **flags)
    else:
        response.delete_cookie(COOKIE_NAME, **flags)
    return response


def forget_cached_csrf() -> None:
    """Drop the signed CSRF token flask-wtf caches on ``g``: ``g`` can outlive the request (an app
    context pushed around several requests), and the token must come from this request's
    session, never from an earlier caller's."""
    g.pop(CSRF_SESSION_KEY, None)


def _load_tenant(store: Store, key_id: object, connector_id: object) -> Tenant | None:
    """The sign-in's tenant, when the API's own rule still lets its key and connector in."""
    if not isinstance(key_id, str) or not isinstance(connector_id, str):
        return None
    key = store.get_api_key(key_id)
    connector = store.get_connector(connector_id)
    project = store.get_project(connector.project_id) if connector is not None else None
    if not authorises(key, connector, project):
        return None
    return Tenant.of(key, connector, project)


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
