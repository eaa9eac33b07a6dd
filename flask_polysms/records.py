"""The domain records every Store backend keeps.

Plain dataclasses: the services and blueprints read and build these, the backends translate them to
and from their own storage. Times are aware UTC datetimes (see :mod:`flask_polysms.clock`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ENVIRONMENTS = ("sandbox", "pre-release", "live")
ENVIRONMENT_ALIASES = {"dev": "sandbox"}

# Session states and why a session ended. A session whose greeting waits for its ``send_at``
# is ``scheduled``; its timers start when the greeting goes out.
ACTIVE, WARNED, CLOSED, SCHEDULED = "active", "warned", "closed", "scheduled"
END_INACTIVITY, END_UNENGAGED, END_AGENT, END_OPT_OUT, END_API = (
    "inactivity",
    "unengaged",
    "agent",
    "opt_out",
    "api",
)

# Timer kinds of a session: "idle" waits for 24 h of silence, "grace" for the reply to a warning.
TIMER_IDLE, TIMER_GRACE = "idle", "grace"

# Message statuses. "sending" is held by one send job at a time; the final ones never move back.
QUEUED, SENDING, SENT, DELIVERED, UNDELIVERED, FAILED = (
    "queued",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "failed",
)
SUPPRESSED, RECEIVED, DROPPED = "suppressed", "received", "dropped"
# An outbound message waiting for its ``send_at`` is ``scheduled`` (released to ``queued`` when
# due); ``canceled`` before it went out, it never sends.
CANCELED = "canceled"
# Inbound messages on their way through the agent: received -> processing -> handled. One left
# received/processing (a lost agent job, a killed worker) is found by the sweep and run again.
PROCESSING, HANDLED = "processing", "handled"
FINAL_STATUSES = frozenset({DELIVERED, UNDELIVERED, FAILED, SUPPRESSED, CANCELED})
# Order of Twilio's outbound statuses: a callback never moves a message to a lower rank.
STATUS_RANK = {
    QUEUED: 0,
    SENDING: 1,
    "accepted": 1,
    "scheduled": 1,
    SENT: 2,
    DELIVERED: 3,
    UNDELIVERED: 3,
    FAILED: 3,
}

OUTBOUND, INBOUND = "outbound", "inbound"

# Where an opt-out (or opt-in) came from.
SOURCE_KEYWORD, SOURCE_CARRIER, SOURCE_API, SOURCE_IMPORT = "keyword", "carrier", "api", "import"
OPT_OUT_SOURCES = (SOURCE_KEYWORD, SOURCE_CARRIER, SOURCE_API, SOURCE_IMPORT)


def new_id(prefix: str = "") -> str:
    """A fresh, URL-safe, unguessable identifier."""
    return prefix + uuid.uuid4().hex


def canonical_environment(name: str) -> str | None:
    """The environment a name stands for (``dev`` is ``sandbox``), or None when it names none."""
    name = ENVIRONMENT_ALIASES.get(name, name)
    return name if name in ENVIRONMENTS else None


@dataclass
class Account:
    id: str
    name: str
    created_at: datetime


@dataclass
class ApiKey:
    id: str
    account_id: str
    key_hash: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass
class Project:
    id: str
    account_id: str
    name: str
    created_at: datetime
    twilio_account_sid: str | None = None
    # Encrypted with the app's key (see crypto.py); never the plain token.
    twilio_auth_token_encrypted: str | None = None
    # Per-project options: keyword replies, the sender guard, variant attributes per environment.
    settings: dict[str, Any] = field(default_factory=dict)
    # The event types the project's webhook subscriptions listen to, comma-separated and sorted
    # (None without any): kept by the Store with the subscriptions, so that a path that has read
    # the project knows, without another query, whether an event goes anywhere.
    webhook_events: str | None = None


@dataclass
class Sender:
    """A provisioned sender: an E.164 number or a Messaging Service SID, in one environment."""

    id: str
    project_id: str
    environment: str
    address: str
    created_at: datetime
    kind: str = "number"  # "number" or "messaging_service"
    country: str | None = None  # ISO 3166 alpha-2, None when unknown
    number_type: str | None = None  # long_code, toll_free, short_code, messaging_service, mobile
    registration: str = "unknown"  # unknown, registered, verified, not_registered, not_verified...
    campaign_id: str | None = None
    # The Messaging Service (a sender of the same project) this number belongs to: an opt-out
    # through any member covers the whole service, as on Twilio.
    messaging_service_sid: str | None = None


@dataclass
class Connector:
    id: str
    project_id: str
    environment: str
    created_at: datetime


@dataclass
class Session:
    """A conversation session: the thread between one user number and one agent number."""

    id: str
    project_id: str
    environment: str
    user_number: str
    agent_number: str
    created_at: datetime
    last_activity_at: datetime
    state: str = ACTIVE
    engaged: bool = False
    closed_at: datetime | None = None
    end_reason: str | None = None
    # The one pending timer: when it is due and what it does. The Store is its source of truth.
    deadline_at: datetime | None = None
    timer_kind: str | None = None
    # When the scheduled wake-up job runs; a message that only moves the deadline later needs no
    # new job (the job re-reads the deadline and sleeps again), so it does not touch Redis.
    wake_at: datetime | None = None
    # Optimistic concurrency: every update must name the version it read.
    version: int = 1
    data: dict[str, Any] = field(default_factory=dict)  # conv.state
    entities: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # metadata.sms_sends, warnings
    language: str | None = None

    @property
    def handoff(self) -> dict[str, Any] | None:
        """``{"reason", "since"}`` (``since`` an ISO 8601 text) while a person answers the user
        instead of the agent, else None. Kept in ``metadata`` (the session's bookkeeping)."""
        return self.metadata.get("handoff")


@dataclass
class Message:
    id: str
    project_id: str
    environment: str
    session_id: str | None
    direction: str
    kind: str  # greeting, agent, user, compliance, warning, closing
    body: str
    to: str
    from_: str | None
    created_at: datetime
    updated_at: datetime
    status: str = QUEUED
    messaging_service_sid: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    twilio_sid: str | None = None
    segments: int = 1
    encoding: str = "GSM-7"
    attempts: int = 0
    max_attempts: int = 5
    template: str | None = None
    # Why a message was not sent (outbound: ``opted_out``) or not handed on (inbound:
    # ``opted_out``, ``blocked``, ``duplicate_text``, ``sender_rate_limited``,
    # ``project_rate_limited``); None for every other message.
    drop_reason: str | None = None
    # The last failed send attempt: Twilio's code (None for a timeout or a failure before any
    # call), its text and when. Kept when a later attempt succeeds, unlike ``error_code``,
    # which describes the message's current status.
    last_error_code: int | None = None
    last_error_message: str | None = None
    last_error_at: datetime | None = None
    # Pictures (MMS): ``{"url", "content_type"}`` each, in order; ``content_type`` is None on
    # outbound ones (Twilio finds it when it fetches the URL).
    media: list[dict[str, Any]] = field(default_factory=list)
    # When a scheduled message goes out (None unless scheduled).
    send_at: datetime | None = None

    def __post_init__(self) -> None:
        # Rows written before messages had pictures read back as NULL.
        if self.media is None:
            self.media = []


@dataclass
class StatusEvent:
    twilio_sid: str
    status: str
    received_at: datetime
    error_code: int | None = None


@dataclass
class Template:
    id: str
    project_id: str
    title: str
    body: str
    env_phone_numbers: dict[str, str]
    created_at: datetime
    updated_at: datetime


@dataclass
class OptOutEvent:
    """One change of an opt-out pair, kept forever for record-keeping."""

    project_id: str
    recipient: str
    sender: str
    action: str  # "opt_out" or "opt_in"
    keyword: str | None
    at: datetime
    # Who made the change: "keyword" (the user texted it), "carrier" (Twilio's 21610), "api",
    # "import"; None for changes recorded before sources were kept.
    source: str | None = None
    # The API key (its id, never the key) that made an "api" change; None otherwise.
    api_key_id: str | None = None
    # The event's place in the store's history: what a page of events ends at (a store cursor).
    id: str | None = None


@dataclass
class OptOut:
    """A pair opted out now: since when, by which keyword and from which source."""

    project_id: str
    recipient: str
    sender: str
    keyword: str | None
    source: str | None
    created_at: datetime
    # The pair's place in the store's list: what a page of opt-outs ends at (a store cursor).
    id: str | None = None


@dataclass
class IdempotentRequest:
    """A request made with an ``Idempotency-Key``: held while its first try runs, then its
    response, until ``expires_at``.

    ``id`` is a digest of (project, route, key): the key itself is never stored. ``fingerprint``
    is a digest of what the request asked (method, path, body). ``token`` names the try that
    holds it; ``response`` (``{"status", "body", "headers"}``) is None while that try runs.
    """

    id: str
    project_id: str
    route: str
    fingerprint: str
    token: str
    created_at: datetime
    expires_at: datetime
    response: dict[str, Any] | None = None


# Events delivered to the project's own systems (webhook subscriptions), in the order documented.
WEBHOOK_EVENT_TYPES = (
    "message.received",
    "message.status",
    "opt_out.created",
    "opt_out.removed",
    "conversation.opened",
    "conversation.closed",
    "conversation.handoff",
)


@dataclass
class WebhookSubscription:
    """A project's subscription: events of ``events`` are POSTed to ``url``, signed with the
    secret (kept encrypted; the plain ``whsec_...`` is shown once, at creation)."""

    id: str
    project_id: str
    url: str
    events: list[str]
    secret_encrypted: str
    created_at: datetime


@dataclass
class WebhookDelivery:
    """One attempt to deliver one event to one subscription. ``webhook_id`` names the event
    (the same on every attempt); ``status_code`` is None when the receiver did not answer."""

    id: str
    project_id: str
    subscription_id: str
    event_type: str
    webhook_id: str
    attempt: int
    status_code: int | None
    error: str | None
    created_at: datetime
