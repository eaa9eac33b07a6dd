"""The project's webhook subscriptions: what its own systems are sent (see
:mod:`.webhook_delivery`), under a secret shown once.

A subscription names a URL and the event types it wants. Its secret (``whsec_`` and the base64
of 32 random bytes, as the Standard Webhooks specification writes them) is returned when it is
created and never again: the Store keeps it encrypted with the app's key, as Twilio Auth Tokens.
"""

from __future__ import annotations

import base64
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..clock import utcnow
from ..errors import InvalidInput, NotFoundError
from ..records import WEBHOOK_EVENT_TYPES, WebhookDelivery, WebhookSubscription, new_id

if TYPE_CHECKING:
    from .state import PolySMSState

SECRET_PREFIX = "whsec_"
#: A URL longer than this is refused (browsers and proxies cut URLs near there).
MAX_URL_LENGTH = 2048
#: Subscriptions per project: each event is delivered once to each of them.
MAX_SUBSCRIPTIONS = 10


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def url_problem(url: str, *, allow_http: bool) -> str | None:
    """Why ``url`` cannot receive webhooks, or None. Plain ``http://`` only when ``allow_http``
    (an app in debug or testing)."""
    if len(url) > MAX_URL_LENGTH:
        return f"at most {MAX_URL_LENGTH} characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "no spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return "not a valid URL"
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        if parts.scheme == "http" and parts.hostname:
            return "must be an https:// URL (http:// only in debug or testing)"
        return "must be an https:// URL with a host"
    return None


def events_problem(events: list[str]) -> str | None:
    """Why ``events`` is not a list of event types to subscribe to, or None."""
    unknown = sorted({e for e in events if e not in WEBHOOK_EVENT_TYPES})
    if unknown:
        return (
            f"unknown event type(s): {', '.join(unknown)}; known: {', '.join(WEBHOOK_EVENT_TYPES)}"
        )
    if len(set(events)) != len(events):
        return "an event type is given twice"
    if not events:
        return "at least one event type"
    return None


def subscribe(
    state: PolySMSState, project_id: str, url: str, events: list[str]
) -> tuple[WebhookSubscription, str]:
    """Create a subscription; returns it and its secret (shown this once). Raises InvalidInput
    (400, every field at fault, nothing written) for a bad URL or event list, or when the
    project has :data:`MAX_SUBSCRIPTIONS` already."""
    app = state.app
    errors: dict[str, list[str]] = {}
    problem = url_problem(url, allow_http=app.debug or app.testing)
    if problem:
        errors["url"] = [problem]
    problem = events_problem(events)
    if problem:
        errors["events"] = [problem]
    if errors:
        raise InvalidInput("invalid webhook subscription: see errors", errors=errors)
    if len(state.store.list_webhook_subscriptions(project_id)) >= MAX_SUBSCRIPTIONS:
        raise InvalidInput(f"a project has at most {MAX_SUBSCRIPTIONS} webhook subscriptions")
    secret = new_secret()
    subscription = state.store.add_webhook_subscription(
        WebhookSubscription(
            id=new_id("whk_"),
            project_id=project_id,
            url=url,
            events=list(events),
            secret_encrypted=state.cipher.encrypt(secret),
            created_at=utcnow(),
        )
    )
    return subscription, secret


def subscriptions(state: PolySMSState, project_id: str) -> list[WebhookSubscription]:
    """The project's subscriptions, oldest first."""
    return state.store.list_webhook_subscriptions(project_id)


def unsubscribe(state: PolySMSState, project_id: str, subscription_id: str) -> None:
    """Delete the project's subscription and its delivery log; its pending retries then find
    it gone and stop. NotFoundError (404) when the project has no such subscription."""
    if not state.store.delete_webhook_subscription(project_id, subscription_id):
        raise NotFoundError("webhook subscription not found")


def deliveries(
    state: PolySMSState, project_id: str, subscription_id: str, limit: int
) -> list[WebhookDelivery]:
    """The subscription's delivery attempts, newest first. NotFoundError (404) when the project
    has no such subscription."""
    if state.store.get_webhook_subscription(project_id, subscription_id) is None:
        raise NotFoundError("webhook subscription not found")
    return state.store.list_webhook_deliveries(project_id, subscription_id, limit)
