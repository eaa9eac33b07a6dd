"""Writing a session: opening one (with its idle timer, or ``scheduled`` without one) and
changing one with a compare-and-set on its version, re-read on a conflict.

The signals of these writes are sent from here, so every path that opens or closes a session
sends ``conversation_opened`` or ``conversation_closed`` once: opening sends the first, and a
change that closes the session sends the second (a session already closed is never closed
again, so it cannot be sent twice).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..clock import utcnow
from ..ports.store import StaleVersion
from ..records import ACTIVE, CLOSED, SCHEDULED, TIMER_IDLE, Session, new_id
from . import events
from .metrics import count
from .wakeups import schedule_wake

if TYPE_CHECKING:
    from .state import PolySMSState

MAX_CAS_TRIES = 20


def new_session(
    state: PolySMSState,
    project_id: str,
    environment: str,
    user_number: str,
    agent_number: str,
    metadata: dict[str, Any] | None = None,
    *,
    join_open: bool = False,
    scheduled: bool = False,
) -> Session:
    """Open a session with its idle deadline, and schedule its wake-up; with ``join_open``, the
    triple's open session instead when it has one (a message racing this one opened it).

    With ``scheduled``, the session waits for a greeting scheduled for later: state
    ``scheduled`` and no timer (they start when the greeting is released). Either way it is
    opened now, so ``conversation_opened`` is sent now (after the commit), once.
    """
    now = utcnow()
    deadline = None if scheduled else now + state.settings.idle_timeout
    session = Session(
        id=new_id("conv_"),
        project_id=project_id,
        environment=environment,
        user_number=user_number,
        agent_number=agent_number,
        created_at=now,
        last_activity_at=now,
        state=SCHEDULED if scheduled else ACTIVE,
        deadline_at=deadline,
        timer_kind=None if scheduled else TIMER_IDLE,
        wake_at=deadline,
        metadata=metadata or {},
    )
    if join_open:
        session, created = state.store.open_session(session)
        if not created:
            return session
    else:
        session = state.store.create_session(session)
    if deadline is not None:
        schedule_wake(state, deadline)
    count(state, project_id, environment, "conversations")
    events.opened(state, session)
    return session


def closed_fields(now: datetime, reason: str, **extra: Any) -> dict[str, Any]:
    """The fields of a session closing now: no deadline, no wake-up left."""
    return {
        "state": CLOSED,
        "closed_at": now,
        "end_reason": reason,
        "deadline_at": None,
        "timer_kind": None,
        "wake_at": None,
        **extra,
    }


def update_with_retry(
    state: PolySMSState,
    session_id: str,
    change: Callable[[Session], dict[str, Any] | None],
    session: Session | None = None,
) -> tuple[Session | None, bool]:
    """Apply ``change(session) -> fields`` with compare-and-set, re-reading on conflict; a change
    that closes the session sends ``conversation_closed``.

    ``change`` returns None to do nothing. Returns (the session as it ends, whether we changed it).
    A ``session`` the caller has just read saves the first read; a stale one only costs a retry.
    """
    for _ in range(MAX_CAS_TRIES):
        if session is None or session.id != session_id:
            session = state.store.get_session(session_id)
        if session is None:
            return None, False
        fields = change(session)
        if fields is None:
            return session, False
        try:
            updated = state.store.update_session(session_id, session.version, **fields)
            if fields.get("state") == CLOSED:
                events.closed(state, updated)
            return updated, True
        except StaleVersion:
            session = None
    raise RuntimeError(f"session {session_id} kept changing under {MAX_CAS_TRIES} updates")
