"""Scheduled sends: a message recorded ``scheduled`` with its ``send_at``, released to the one
send path when that time comes, or canceled before.

The Store holds the schedule (status and ``send_at``): the release job enqueued for ``send_at``
only wakes it, and the sweep releases every scheduled message that is due, so a lost job (a Redis
restart) delays a send by one sweep at most. Releasing is a compare-and-set from ``scheduled`` to
``queued`` and canceling one from ``scheduled`` to ``canceled``: of a release and a cancel, one
wins, and a canceled message is never ``queued``, so the send job (which claims only ``queued``
messages) never sends it, even when its job was already waiting.

A scheduled greeting's session is ``scheduled`` too, without timers: they start when the greeting
is released (its inactivity clock runs from the moment it goes out, not from the request).

Signals: the conversation is opened when it is accepted (``conversation_opened`` then, state
``scheduled``, not again when its greeting goes out); a cancel sends ``message_status_changed``
(``canceled``) and, when it closes the conversation, ``conversation_closed``; a greeting whose
conversation closed before it was due sends ``message_status_changed`` when it is canceled. A
release (``scheduled`` to ``queued``) hands the message to its send, which reports ``sent``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..clock import utcnow
from ..errors import ConflictError, NotFoundError
from ..records import ACTIVE, CANCELED, CLOSED, QUEUED, SCHEDULED, TIMER_IDLE, Message, Session
from .events import status_changed
from .job_ids import send_job_id
from .session_writes import closed_fields, update_with_retry
from .units import unit_of_work
from .wakeups import schedule_wake

if TYPE_CHECKING:
    from .state import PolySMSState
    from .tenancy import Tenant

log = logging.getLogger("flask_polysms.scheduled")

#: How far ahead ``send_at`` must be, at least and at most.
MIN_LEAD = timedelta(minutes=1)
MAX_LEAD = timedelta(days=35)
#: The drop reasons of a message that never went out: canceled by the caller, or its
#: conversation closed before it was due.
DROP_CANCELED, DROP_CONVERSATION_CLOSED = "canceled", "conversation_closed"
#: The end reason of a conversation whose scheduled greeting was canceled.
END_CANCELED = "canceled"
RELEASE_PAGE = 500


def send_at_problem(send_at: datetime, now: datetime | None = None) -> str | None:
    """Why ``send_at`` (aware) cannot be a scheduled send's time now, or None when it can."""
    now = utcnow() if now is None else now
    if send_at < now + MIN_LEAD:
        return "must be at least 1 minute ahead"
    if send_at > now + MAX_LEAD:
        return "must be at most 35 days ahead"
    return None


def release(state: PolySMSState, message_id: str, now: datetime | None = None) -> bool:
    """Hand a due scheduled message to the send job; True when this call released it.

    Its session, still ``scheduled``, becomes ``active`` with its timers started now; a session
    closed meanwhile (ended by the agent or an operator) takes its scheduled message with it
    (``canceled``, drop reason ``conversation_closed``). Not due yet, canceled or released
    already: nothing happens.
    """
    now = utcnow() if now is None else now

    def work() -> bool:
        message = state.store.get_message(message_id)
        if message is None or message.status != SCHEDULED:
            return False
        if message.send_at is not None and message.send_at > now:
            return False  # woken early (a job's clock ahead of ours): the sweep releases it
        session = state.store.get_session(message.session_id) if message.session_id else None
        if session is not None and session.state == CLOSED:
            return _cancel(state, message.id, DROP_CONVERSATION_CLOSED, now) is not None
        released = state.store.update_message(
            message.id, expected_status=SCHEDULED, status=QUEUED, updated_at=now
        )
        if released is None:
            return False
        if session is not None:
            _start_session(state, session, now)
        state.scheduler.enqueue("send", message.id, job_id=send_job_id(message.id, 0))
        return True

    return unit_of_work(state, work)


def _start_session(state: PolySMSState, session: Session, now: datetime) -> None:
    """The greeting goes out: a ``scheduled`` session becomes ``active`` and its idle timer
    starts now. A session the user already wrote in (it is ``active``) keeps its own timer."""
    deadline = now + state.settings.idle_timeout
    _, started = update_with_retry(
        state,
        session.id,
        lambda current: (
            {
                "state": ACTIVE,
                "last_activity_at": now,
                "deadline_at": deadline,
                "timer_kind": TIMER_IDLE,
                "wake_at": deadline,
            }
            if current.state == SCHEDULED
            else None
        ),
        session,
    )
    if started:
        schedule_wake(state, deadline)


def release_job(state: PolySMSState, message_id: str) -> bool:
    """The release job (``release``), enqueued for a message's ``send_at``."""
    return release(state, message_id)


def release_due(state: PolySMSState, now: datetime | None = None) -> int:
    """Release every scheduled message due at ``now`` (the sweep's part); how many released."""
    now = utcnow() if now is None else now
    released = 0
    seen: set[str] = set()
    while True:
        page = [
            m
            for m in state.store.due_scheduled_messages(now, limit=RELEASE_PAGE)
            if m.id not in seen
        ]
        if not page:
            return released
        for message in page:
            seen.add(message.id)
            released += release(state, message.id, now)


def in_scope(tenant: Tenant, message: Message | None) -> bool:
    """Whether the caller may see ``message``: its project, and its connector's environment."""
    return (
        message is not None
        and message.project_id == tenant.project_id
        and message.environment == tenant.environment
    )


def find_message(state: PolySMSState, tenant: Tenant, message_id: str) -> Message:
    """The caller's message with this id; NotFoundError (404) when there is none in the
    caller's project and environment (another's is not revealed)."""
    message = state.store.get_message(message_id)
    if not in_scope(tenant, message):
        raise NotFoundError("message not found")
    return message


def _cancel(state: PolySMSState, message_id: str, reason: str, now: datetime) -> Message | None:
    """Move a scheduled message to ``canceled`` (``message_status_changed``); None when it is
    not scheduled any more."""
    canceled = state.store.update_message(
        message_id, expected_status=SCHEDULED, status=CANCELED, drop_reason=reason, updated_at=now
    )
    status_changed(state, canceled)
    return canceled


def cancel(state: PolySMSState, tenant: Tenant, message_id: str) -> Message:
    """Cancel the caller's scheduled message: it never sends. A greeting's conversation, still
    waiting for it, closes (``end_reason`` ``canceled``). Canceling a canceled message answers
    it again; one that went out or is going (``queued``, ``sending`` and after) is a
    ConflictError (409); another project's or environment's, NotFoundError (404)."""
    message = find_message(state, tenant, message_id)
    now = utcnow()

    def work() -> Message | None:
        canceled = _cancel(state, message.id, DROP_CANCELED, now)
        if canceled is not None and canceled.session_id:
            # Only a conversation still waiting for this greeting closes (one the user wrote in
            # goes on); closing it sends conversation_closed.
            update_with_retry(
                state,
                canceled.session_id,
                lambda s: closed_fields(now, END_CANCELED) if s.state == SCHEDULED else None,
            )
        return canceled

    canceled = unit_of_work(state, work)
    if canceled is not None:
        log.info("message %s canceled before its send_at", message.id)
        return canceled
    current = state.store.get_message(message.id) or message
    if current.status == CANCELED:
        return current
    raise ConflictError(
        f"message {message.id} is {current.status}: only a scheduled message can be canceled"
    )
