"""What a person does with a conversation: take it over from the agent (handoff), write to the
user, give it back (resume) or end it; and closing a session on demand (``conv.end()``).

While a conversation is handed off, the user's messages are recorded but never given to the
agent (:mod:`.inbound` marks them handled; a turn already waiting finds the handoff and passes),
and the session has no inactivity deadline: no warning, no close. Resuming starts the idle
timer again from that moment. The handoff is kept in the session's ``metadata`` as
``{"reason", "since"}`` (:attr:`~flask_polysms.records.Session.handoff`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import signals
from ..clock import utcnow
from ..errors import ConflictError, NotFoundError
from ..records import ACTIVE, CLOSED, END_API, Message, Session
from . import events
from .lifecycle import note_activity
from .outbound import count_outbound
from .sending import queue_message
from .session_writes import closed_fields, update_with_retry
from .units import unit_of_work

if TYPE_CHECKING:
    from .state import PolySMSState

HANDOFF = "handoff"  # the key of ``Session.metadata`` that holds it
HUMAN = "human"  # the kind of a message a person wrote


def _refuse_closed(session: Session) -> None:
    if session.state == CLOSED:
        raise ConflictError("the conversation is closed")


def _found(session: Session | None) -> Session:
    if session is None:
        raise NotFoundError("conversation not found")
    return session


def hand_off(state: PolySMSState, session_id: str, reason: str | None = None) -> Session:
    """Pause the agent on this conversation (``handoff_requested`` is sent); returns the session.

    Raises ConflictError (409) when it is closed. A conversation already handed off stays as it
    is (its first reason and time are kept; no second signal)."""
    now = utcnow()

    def change(session: Session) -> dict[str, Any] | None:
        _refuse_closed(session)
        if session.handoff:
            return None
        handoff = {"reason": reason, "since": now.isoformat()}
        # No deadline while a person answers; a warned session is no longer waiting to close.
        return {
            "metadata": {**session.metadata, HANDOFF: handoff},
            "state": ACTIVE,
            "deadline_at": None,
            "timer_kind": None,
            "wake_at": None,
        }

    def work() -> Session:
        session, changed = update_with_retry(state, session_id, change)
        session = _found(session)
        if changed:
            events.emit(
                state,
                signals.handoff_requested,
                session.project_id,
                conversation=events.conversation_arg(session.id),
            )
        return session

    return unit_of_work(state, work)


def resume(state: PolySMSState, session_id: str) -> Session:
    """Give the conversation back to the agent: it answers the next user message, and the idle
    timer starts again now. Raises ConflictError (409) when it is closed; a conversation that
    is not handed off is returned as it is."""

    def change(session: Session) -> dict[str, Any] | None:
        _refuse_closed(session)
        if not session.handoff:
            return None
        return {"metadata": {k: v for k, v in session.metadata.items() if k != HANDOFF}}

    def work() -> Session:
        session, changed = update_with_retry(state, session_id, change)
        session = _found(session)
        if changed:
            session = _found(note_activity(state, session_id, user_reply=False, session=session))
        return session

    return unit_of_work(state, work)


def end_session(state: PolySMSState, session_id: str, reason: str) -> Session | None:
    """Close a session now, without a closing text (the agent's ``conv.end()``); a closed
    session stays closed."""
    now = utcnow()

    def change(session: Session) -> dict[str, Any] | None:
        if session.state == CLOSED:
            return None
        return closed_fields(now, reason)

    session, _ = update_with_retry(state, session_id, change)
    return session


def end_by_operator(state: PolySMSState, session_id: str) -> Session:
    """Close the conversation now (``end_reason`` ``api``, no closing text). Raises
    ConflictError (409) when it is already closed."""
    now = utcnow()

    def change(session: Session) -> dict[str, Any] | None:
        _refuse_closed(session)
        return closed_fields(now, END_API)

    return unit_of_work(state, lambda: _found(update_with_retry(state, session_id, change)[0]))


def send_human_message(
    state: PolySMSState, session: Session, text: str, media_urls: list[str] | None = None
) -> Message:
    """Send a person's message (kind ``human``) to the conversation's user from its agent
    number, through the one send path; with or without a handoff.

    Counts against the project's ``POLYSMS_RATE_LIMIT`` (RateLimited, 429). Recorded
    ``suppressed`` at once when the user opted out of that number. Raises ConflictError (409)
    when the conversation is closed, also when it closed since the caller read it.
    """
    _refuse_closed(session)
    count_outbound(state, session.project_id)

    def work() -> Message:
        current = _found(state.store.get_session(session.id))
        _refuse_closed(current)
        message = queue_message(
            state,
            project_id=current.project_id,
            environment=current.environment,
            session=current,
            kind=HUMAN,
            body=text,
            to=current.user_number,
            sender=current.agent_number,
            suppressed=state.store.is_opted_out(current.user_number, current.agent_number),
            media_urls=media_urls,
        )
        note_activity(state, current.id, user_reply=False, session=current)
        return message

    message = unit_of_work(state, work)
    if state.scheduler.inline:  # the send job has run already: answer with its outcome
        message = state.store.get_message(message.id) or message
    return message
