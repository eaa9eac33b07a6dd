"""Delivering the project's events to its webhook subscriptions, as the Standard Webhooks
specification says, in jobs.

An event (a signal of :mod:`flask_polysms.signals`) of a project whose record lists its type in
``webhook_events`` gets its ``webhook-id`` and time when it is sent, and is handed to the
scheduler as one small job (with the request's other jobs): its data as JSON, except a
conversation, which that job reads (with its messages) outside the request. The job builds the
body ``{"type", "timestamp", "data"}`` once, finds the subscriptions that want the event and
enqueues one delivery job each, in the scheduler's deliveries lane (a receiver that hangs holds
up no send). A delivery POSTs the body, signed with ``standardwebhooks`` at the time of the
attempt (the ``webhook-id`` is the event's, the same on every attempt), records the attempt, and
on anything but a 2xx answer tries again after 5 s, 10 s, 20 s... (at most 2 h apart) until 24 h
after the event. The request that caused the event never waits for a receiver.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import requests
from blinker import Signal
from standardwebhooks import Webhook

from .. import signals
from ..clock import utcnow
from ..ports.schedulers.base import DELIVERIES_LANE
from ..records import WebhookDelivery, new_id
from .events import conversation_payload, forwardable, known_project, remember_project

if TYPE_CHECKING:
    from .state import PolySMSState

log = logging.getLogger("flask_polysms.webhooks")

#: The event type each signal is delivered as.
EVENT_TYPES: dict[Signal, str] = {
    signals.message_received: "message.received",
    signals.message_status_changed: "message.status",
    signals.opted_out: "opt_out.created",
    signals.opted_in: "opt_out.removed",
    signals.conversation_opened: "conversation.opened",
    signals.conversation_closed: "conversation.closed",
    signals.handoff_requested: "conversation.handoff",
}

#: Job names (see flask_polysms.jobs): the fan-out of one event, and one delivery attempt.
EVENT_JOB = "webhook-event"
DELIVERY_JOB = "webhook-delivery"

FIRST_RETRY = timedelta(seconds=5)
LONGEST_WAIT = timedelta(hours=2)
#: No attempt starts later than this after the event.
RETRY_FOR = timedelta(hours=24)
#: Seconds to connect and to wait for the answer: a receiver that hangs holds a worker this long.
CONNECT_TIMEOUT, READ_TIMEOUT = 5, 10
USER_AGENT = "flask-polysms-webhooks"


def event_job_id(webhook_id: str) -> str:
    """The id of the job that hands one event to its subscriptions."""
    return f"webhook-{webhook_id}"


def delivery_job_id(webhook_id: str, subscription_id: str, attempt: int) -> str:
    """The id of the job that makes delivery attempt ``attempt`` (1 the first)."""
    return f"webhook-{webhook_id}-{subscription_id}-{attempt}"


def retry_delay(attempt: int) -> timedelta:
    """How long after failed attempt ``attempt`` (1 the first) the next one starts."""
    return min(FIRST_RETRY * 2 ** min(attempt - 1, 20), LONGEST_WAIT)


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()  # as the API's marshmallow DateTime writes it
    raise TypeError(f"{type(value).__name__} is not JSON")


class WebhookForwarder:
    """The app's :class:`~flask_polysms.services.events.EventForwarder`: events to webhook
    subscriptions."""

    def wants(self, state: PolySMSState, signal: Signal, project_id: str) -> bool:
        """Whether the project subscribes to the event's type, from the record of the project
        the caller read (:func:`~flask_polysms.services.events.about_project`), else from the
        Store."""
        event_type = EVENT_TYPES.get(signal)
        if event_type is None:
            return False
        project = known_project(project_id)
        if project is None:
            project = state.store.get_project(project_id)
            if project is None:
                return False
            remember_project(project)
        return bool(project.webhook_events) and event_type in project.webhook_events.split(",")

    def forward(
        self, state: PolySMSState, signal: Signal, project_id: str, kwargs: dict[str, Any]
    ) -> None:
        """Enqueue the event's job with its ``webhook-id`` and time, fixed here, and its data:
        what is in hand as JSON, a conversation by its id (the job reads it)."""
        arguments, conversations = forwardable(state, kwargs)
        now = utcnow()
        webhook_id = new_id("evt_")
        state.scheduler.enqueue(
            EVENT_JOB,
            project_id,
            EVENT_TYPES[signal],
            webhook_id,
            now.isoformat(),
            _json({"project_id": project_id, **arguments}),
            conversations.get("conversation", ""),
            job_id=event_job_id(webhook_id),
        )


def _json(value: Any) -> str:
    return json.dumps(value, default=_json_value, separators=(",", ":"))


def event_job(
    state: PolySMSState,
    project_id: str,
    event_type: str,
    webhook_id: str,
    event_at: str,
    data: str,
    conversation_id: str = "",
) -> int:
    """Build the event's body (reading its conversation, if any, now) and enqueue its first
    delivery to each subscription that wants it; how many."""
    wanted = state.store.list_webhook_subscriptions(project_id, event_type)
    if not wanted:
        return 0
    payload = json.loads(data)
    if conversation_id:
        payload["conversation"] = conversation_payload(state, conversation_id)
    body = _json({"type": event_type, "timestamp": event_at, "data": payload})
    with state.scheduler.holding():  # one hand-over (RQ: one round trip) for all of them
        for subscription in wanted:
            state.scheduler.enqueue(
                DELIVERY_JOB,
                project_id,
                subscription.id,
                event_type,
                webhook_id,
                body,
                event_at,
                1,
                job_id=delivery_job_id(webhook_id, subscription.id, 1),
                lane=DELIVERIES_LANE,
            )
    return len(wanted)


def delivery_job(
    state: PolySMSState,
    project_id: str,
    subscription_id: str,
    event_type: str,
    webhook_id: str,
    body: str,
    event_at: str,
    attempt: int,
) -> bool:
    """Make delivery attempt ``attempt`` and record it; on failure schedule the next one while
    it starts within 24 h of the event. True when the receiver answered 2xx; False otherwise,
    and when the subscription is gone (deleted: no attempt, nothing scheduled)."""
    subscription = state.store.get_webhook_subscription(project_id, subscription_id)
    if subscription is None:
        return False
    now = utcnow()
    status_code, error = None, None
    try:
        secret = state.cipher.decrypt(subscription.secret_encrypted)
    except ValueError:
        # The encryption keys changed: the secret cannot sign until they are put back.
        error = "the subscription's secret cannot be decrypted with the app's keys"
    else:
        status_code, error = _post(subscription.url, webhook_id, now, body, secret)
    state.store.add_webhook_delivery(
        WebhookDelivery(
            id=new_id("whd_"),
            project_id=project_id,
            subscription_id=subscription_id,
            event_type=event_type,
            webhook_id=webhook_id,
            attempt=attempt,
            status_code=status_code,
            error=error,
            created_at=now,
        )
    )
    if status_code is not None and 200 <= status_code < 300:
        return True
    retry_at = now + retry_delay(attempt)
    if retry_at > datetime.fromisoformat(event_at) + RETRY_FOR:
        log.warning(
            "webhook %s to subscription %s given up after %d attempts",
            webhook_id,
            subscription_id,
            attempt,
        )
        return False
    state.scheduler.enqueue_at(
        retry_at,
        DELIVERY_JOB,
        project_id,
        subscription_id,
        event_type,
        webhook_id,
        body,
        event_at,
        attempt + 1,
        job_id=delivery_job_id(webhook_id, subscription_id, attempt + 1),
        lane=DELIVERIES_LANE,
    )
    return False


def _post(
    url: str, webhook_id: str, now: datetime, body: str, secret: str
) -> tuple[int | None, str | None]:
    """POST the signed body; (status code or None, error text or None)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
    }
    try:
        # A redirect is an answer, not a 2xx: the receiver's URL is the one subscribed.
        response = requests.post(
            url,
            data=body.encode(),
            headers=headers,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            allow_redirects=False,
            stream=True,  # the answer's body is never read
        )
    except requests.Timeout:
        return None, "timed out"
    except requests.ConnectionError:
        return None, "could not connect"
    except requests.RequestException as exc:
        return None, f"request failed ({type(exc).__name__})"
    with response:
        code = response.status_code
    return code, None if 200 <= code < 300 else f"answered {code}"
