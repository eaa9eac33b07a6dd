"""The parts of the Store port added after 0.1.0, each a base of
:class:`~flask_polysms.ports.store.Store` with a default, so that a backend written for 0.1.0
keeps loading: a default either does the work through the 0.1 methods or refuses it.

The defaults call the Store's own methods (``list_messages``, ``stuck_messages``,
``due_sessions``). The built-in backends implement every method here; the contract suite runs
them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..authorisation import authorises
from ..records import (
    INBOUND,
    OUTBOUND,
    QUEUED,
    RECEIVED,
    SENDING,
    ApiKey,
    Connector,
    IdempotentRequest,
    Message,
    Project,
    Sender,
    WebhookDelivery,
    WebhookSubscription,
)
from .store_errors import NotFound


@dataclass
class DashboardSignIn:
    """One sign-in to the dashboard, kept server-side so that ending it ends it everywhere.

    The browser holds only a random secret; ``id`` is its SHA-256 (hex), so the stored rows
    cannot be replayed as cookies and a lookup compares no secret in Python.
    """

    id: str
    api_key_id: str
    connector_id: str
    created_at: datetime
    last_seen_at: datetime
    ended_at: datetime | None = None
    #: Why it ended: ``signed_out``, ``idle``, ``expired`` (absolute timeout), ``revoked``.
    end_reason: str | None = None


class OutboundReads:
    """What an outbound request reads before it writes, together."""

    def get_credentials_and_senders(
        self, key_hash: str, connector_id: str | None, user_number: str
    ) -> tuple[
        ApiKey | None,
        Connector | None,
        Project | None,
        tuple[list[Sender], str | None, frozenset[str]] | None,
    ]:
        """``get_credentials`` and, only when those credentials authorise, what
        ``senders_for_outbound`` answers for the connector's environment and ``user_number``
        (None otherwise). A backend may answer in one round trip; this default asks both."""
        key, connector, project = self.get_credentials(key_hash, connector_id)
        if not authorises(key, connector, project):
            return key, connector, project, None
        senders = self.senders_for_outbound(project.id, connector.environment, user_number)
        return key, connector, project, senders


class ProjectSettingsChanges:
    """Changing a project's settings from what they are when the change runs."""

    def change_project_settings(
        self, project_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> Project:
        """Set the project's settings to ``change(settings as stored)`` and return the project;
        an exception from ``change`` writes nothing. Two changes at once run one after the
        other, the second from what the first wrote (across processes on the database
        backends). NotFound for an unknown project. This default, for backends written before
        it, reads and writes without holding anything."""
        project = self.get_project(project_id)
        if project is None:
            raise NotFound(f"no project {project_id}")
        return self.update_project(project_id, settings=change(dict(project.settings)))


class TurnClaims:
    """Agent turns one at a time per session."""

    def claim_turn(self, session_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """Take the session's turn for ``owner`` until ``until``, atomically: True when nobody
        held it, ``owner`` held it already (the claim is extended), or the holder's claim ran out
        before ``now`` (a crashed worker's claim is taken over); False when another owner holds
        it. Across processes for the database backends. This default, for third-party backends
        written before turns were claimed, always answers True (turns are then not serialised)."""
        return True

    def release_turn(self, session_id: str, owner: str) -> bool:
        """Give the turn back if ``owner`` holds it; False (nothing changed) otherwise."""
        return True

    def waiting_turn_messages(self, session_id: str, limit: int = 100) -> list[Message]:
        """The session's inbound messages still ``received`` (their agent turn not started), in
        the order they were recorded, at most ``limit``. The built-in backends answer with one
        indexed query; this default filters :meth:`list_messages`."""
        waiting = [
            m
            for m in self.list_messages(session_id)
            if m.direction == INBOUND and m.status == RECEIVED
        ]
        return waiting[:limit]


class OperationsFigures:
    """What the Prometheus endpoint reads."""

    def metric_totals(self, names: Sequence[str]) -> dict[str, int]:
        """Each daily counter of ``names`` summed over every project, environment and day (0 for
        a name never counted): cumulative figures, the same whichever process asks. No method of
        the contract lists every project, so there is no default: a backend that does not
        implement it raises NotImplementedError, and the endpoint leaves these figures out."""
        raise NotImplementedError(f"{type(self).__name__} cannot total every project's counters")

    def oldest_unsent_at(self, now: datetime) -> datetime | None:
        """When the oldest outbound message still waiting to go out (``queued`` or ``sending``,
        retries included) was recorded; None when none waits. This default looks among the 500
        waiting messages :meth:`stuck_messages` returns first (least recently updated), so with
        more waiting it may miss an older one; the built-in backends ask for the minimum."""
        waiting = [
            m.created_at
            for m in self.stuck_messages(now)
            if m.direction == OUTBOUND and m.status in (QUEUED, SENDING)
        ]
        return min(waiting, default=None)

    def count_due_sessions(self, now: datetime, cap: int = 10_000) -> int:
        """How many sessions not closed have a deadline at or before ``now`` (timers due and not
        fired yet), counting up to ``cap``. This default counts :meth:`due_sessions`; the
        built-in backends count in the database."""
        return len(self.due_sessions(now, limit=cap))


class DashboardSignIns:
    """Dashboard sign-ins kept server-side (the default refuses: no dashboard)."""

    def add_dashboard_sign_in(self, sign_in: DashboardSignIn) -> DashboardSignIn:
        """Record a new sign-in (its ``id`` is fresh: a digest of a random secret)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep dashboard sign-ins")

    def get_dashboard_sign_in(self, sign_in_id: str) -> DashboardSignIn | None:
        """The sign-in with this id (ended ones too), None when unknown."""
        raise NotImplementedError(f"{type(self).__name__} does not keep dashboard sign-ins")

    def touch_dashboard_sign_in(self, sign_in_id: str, at: datetime) -> bool:
        """Set ``last_seen_at`` of a sign-in that has not ended; False (nothing changed) when it
        is unknown or ended."""
        raise NotImplementedError(f"{type(self).__name__} does not keep dashboard sign-ins")

    def end_dashboard_sign_in(self, sign_in_id: str, at: datetime, reason: str) -> bool:
        """End a sign-in, atomically: True for the one caller that ended it, False when it is
        unknown or ended already (its first end time and reason stay)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep dashboard sign-ins")


class IdempotencyKeys:
    """Requests made with an ``Idempotency-Key`` (the default refuses: keyed requests fail)."""

    def claim_idempotent_request(
        self, request: IdempotentRequest, abandoned_before: datetime
    ) -> IdempotentRequest:
        """Hold ``request.id`` for ``request``, atomically (of concurrent claims one wins), and
        return what now holds it: ``request`` itself when the id was free, expired (``expires_at``
        not after ``request.created_at``) or held without a response since before
        ``abandoned_before``; otherwise the record holding it, unchanged."""
        raise NotImplementedError(f"{type(self).__name__} does not keep idempotency keys")

    def finish_idempotent_request(self, request_id: str, token: str, response: dict) -> bool:
        """Record the response of the try ``token``; False (nothing changed) when that try no
        longer holds the id. Joins the caller's transaction."""
        raise NotImplementedError(f"{type(self).__name__} does not keep idempotency keys")

    def release_idempotent_request(self, request_id: str, token: str) -> bool:
        """Forget the id if the try ``token`` holds it (its request did nothing)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep idempotency keys")

    def purge_idempotent_requests(self, now: datetime, limit: int = 100) -> int:
        """Delete up to ``limit`` records expired by ``now``; how many went."""
        raise NotImplementedError(f"{type(self).__name__} does not keep idempotency keys")


class EventWebhookRecords:
    """Webhook subscriptions and their delivery log. The defaults, for backends written before
    them, keep none: no event is delivered, and subscribing fails."""

    def add_webhook_subscription(self, subscription: WebhookSubscription) -> WebhookSubscription:
        """Record a subscription and set the project's ``webhook_events`` to the event types of
        all its subscriptions, in one transaction that serialises with the other changes of the
        project's subscriptions. Raises NotFound for an unknown project."""
        raise NotImplementedError(f"{type(self).__name__} does not keep webhook subscriptions")

    def list_webhook_subscriptions(
        self, project_id: str, event_type: str | None = None
    ) -> list[WebhookSubscription]:
        """The project's subscriptions (those listening to ``event_type`` when given), oldest
        first."""
        return []

    def get_webhook_subscription(
        self, project_id: str, subscription_id: str
    ) -> WebhookSubscription | None:
        """The project's subscription with this id; None when unknown or another project's."""
        return None

    def delete_webhook_subscription(self, project_id: str, subscription_id: str) -> bool:
        """Delete the project's subscription and its delivery log and set the project's
        ``webhook_events`` again, in one transaction; False when the project has no such
        subscription."""
        return False

    def list_encrypted_webhook_secrets(self) -> list[tuple[str, str]]:
        """``(subscription id, encrypted secret)`` of every subscription of every project: what
        ``flask polysms rotate-keys`` re-encrypts."""
        return []

    def replace_webhook_secret(self, subscription_id: str, old: str, new: str) -> bool:
        """Compare-and-set a subscription's encrypted secret: ``new`` only if it is still
        ``old``; False (nothing changed) otherwise."""
        return False

    def add_webhook_delivery(self, delivery: WebhookDelivery) -> WebhookDelivery:
        """Record one delivery attempt."""
        raise NotImplementedError(f"{type(self).__name__} does not keep webhook deliveries")

    def list_webhook_deliveries(
        self, project_id: str, subscription_id: str, limit: int = 100
    ) -> list[WebhookDelivery]:
        """The subscription's delivery attempts, newest first, at most ``limit``."""
        return []


def webhook_events_of(event_lists: Iterable[Sequence[str]]) -> str | None:
    """A project's ``webhook_events`` from its subscriptions' ``events``: the event types they
    listen to, sorted and comma-separated; None without any."""
    types = sorted({event for events in event_lists for event in events})
    return ",".join(types) or None
