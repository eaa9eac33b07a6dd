"""Session lifecycle: creation, activity, the 24 h warning, the 10 min grace and the close.

The deadline lives on the session in the Store, with ``wake_at``, the time it must be looked at
next; a scheduled job only wakes sessions up and re-reads them. Wake-up jobs are shared: one per
second of wake-up time (``wake-<second>``) wakes every session whose ``wake_at`` has come, so a
thousand sessions opened in one second cost one scheduled job, and a process that scheduled a slot
does not schedule it again. A message that only moves the deadline later schedules nothing: the
wake-up already waiting comes at the old time, sees the later deadline and sleeps again. Every
transition is a compare-and-set on the session's version, so two workers waking the same session
make one transition.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .clock import utcnow
from .metrics import count
from .records import (
    ACTIVE,
    CLOSED,
    END_INACTIVITY,
    END_UNENGAGED,
    INBOUND,
    PROCESSING,
    QUEUED,
    RECEIVED,
    SENDING,
    TIMER_GRACE,
    TIMER_IDLE,
    WARNED,
    Session,
    new_id,
)
from .store import StaleVersion
from .units import unit_of_work

if TYPE_CHECKING:
    from .extension import PolySMSState

log = logging.getLogger("flask_polysms.lifecycle")

MAX_CAS_TRIES = 20
SWEEP_BATCH = 50  # timers fired per transaction by the sweep


def new_session(
    state: PolySMSState,
    project_id: str,
    environment: str,
    user_number: str,
    agent_number: str,
    metadata: dict[str, Any] | None = None,
) -> Session:
    """Open a session with its idle deadline, and schedule its wake-up."""
    now = utcnow()
    deadline = now + state.settings.idle_timeout
    session = state.store.create_session(
        Session(
            id=new_id("conv_"),
            project_id=project_id,
            environment=environment,
            user_number=user_number,
            agent_number=agent_number,
            created_at=now,
            last_activity_at=now,
            deadline_at=deadline,
            timer_kind=TIMER_IDLE,
            wake_at=deadline,
            metadata=metadata or {},
        )
    )
    _schedule_wake(state, deadline)
    count(state, project_id, environment, "conversations")
    return session


def _schedule_wake(state: PolySMSState, when: datetime) -> None:
    # The slot is the next whole second: its job wakes every session due by then. Its id names
    # the second, so the same slot scheduled twice (two sessions, two processes) is one job (RQ
    # replaces by id), and a slot scheduled from inside a running wake-up is always a later one.
    slot = math.ceil(when.timestamp())
    at = datetime.fromtimestamp(slot, timezone.utc)
    state.scheduler.enqueue_at(at, "wake", job_id=f"wake-{slot}")


def _closed(now: datetime, reason: str, **extra: Any) -> dict[str, Any]:
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
    """Apply ``change(session) -> fields`` with compare-and-set, re-reading on conflict.

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
            return state.store.update_session(session_id, session.version, **fields), True
        except StaleVersion:
            session = None
    raise RuntimeError(f"session {session_id} kept changing under {MAX_CAS_TRIES} updates")


def note_activity(
    state: PolySMSState, session_id: str, *, user_reply: bool, session: Session | None = None
) -> Session | None:
    """A message went either way: restart the idle deadline; a user reply also engages the session
    and brings a warned session back to ``active``. ``session``: the session as just read, if the
    caller has it (saves a read)."""
    now = utcnow()
    deadline = now + state.settings.idle_timeout

    def change(session: Session) -> dict[str, Any] | None:
        if session.state == CLOSED:
            return None
        fields: dict[str, Any] = {
            "last_activity_at": now,
            "deadline_at": deadline,
            "timer_kind": TIMER_IDLE,
        }
        if user_reply:
            fields["engaged"] = True
            fields["state"] = ACTIVE
        if session.wake_at is None or session.wake_at > deadline:
            fields["wake_at"] = deadline
        return fields

    session, changed = update_with_retry(state, session_id, change, session)
    if changed and session is not None and session.wake_at == deadline:
        _schedule_wake(state, deadline)
    return session


def timer_job(state: PolySMSState, session_id: str, session: Session | None = None) -> bool:
    """Wake a session: fire its deadline if due, else sleep until it. True when it fired.

    One transaction for the transition and the message it queues; the jobs leave after it.
    ``session``: the session as just read, if the caller has it (the sweep does).
    """
    return unit_of_work(state, lambda: _wake(state, session_id, session))


def _wake(state: PolySMSState, session_id: str, current: Session | None) -> bool:
    now = utcnow()
    fired: dict[str, Any] = {}
    checked: list[bool] = []

    def is_superseded(session: Session) -> bool:
        # Asked only when the deadline is due, once: is a newer session of the same user and
        # number open?
        if not checked:
            newest = state.store.find_open_session(
                session.project_id, session.user_number, session.agent_number
            )
            checked.append(newest is not None and newest.id != session_id)
        return checked[0]

    def change(session: Session) -> dict[str, Any] | None:
        fired.clear()
        if session.state == CLOSED or session.deadline_at is None:
            return None
        if session.deadline_at > now:
            # Woken early (the deadline moved): sleep until the new deadline, unless a job for
            # it is already waiting.
            if session.wake_at == session.deadline_at and session.wake_at > now:
                return None
            fired["sleep"] = session.deadline_at
            return {"wake_at": session.deadline_at}
        if is_superseded(session):
            # A newer session of the same user and number carries the conversation now: this one
            # ends quietly instead of warning a user who is talking in the other.
            fired["close"] = session
            return _closed(
                now,
                END_INACTIVITY if session.engaged else END_UNENGAGED,
                metadata={**session.metadata, "superseded": True},
            )
        if session.timer_kind == TIMER_IDLE and session.engaged:
            grace_end = now + state.settings.grace_period
            fired["warn"] = session
            return {
                "state": WARNED,
                "timer_kind": TIMER_GRACE,
                "deadline_at": grace_end,
                "wake_at": grace_end,
            }
        fired["close"] = session
        return _closed(now, END_INACTIVITY if session.timer_kind == TIMER_GRACE else END_UNENGAGED)

    session, changed = update_with_retry(state, session_id, change, current)
    if not changed or session is None:
        return False
    superseded = bool(checked and checked[0])
    if "sleep" in fired:
        _schedule_wake(state, fired["sleep"])
        return False
    from .sending import queue_message

    def tell_user(kind: str, body: str) -> None:
        # Warnings and closings go to the user from the session's own number.
        queue_message(
            state,
            project_id=session.project_id,
            environment=session.environment,
            session=session,
            kind=kind,
            body=body,
            to=session.user_number,
            sender=session.agent_number,
        )

    if "warn" in fired:
        _schedule_wake(state, session.deadline_at)
        tell_user("warning", state.settings.warning_message)
        return True
    if session.end_reason == END_INACTIVITY and not superseded:
        tell_user("closing", state.settings.closing_message)
    return True


def end_session(state: PolySMSState, session_id: str, reason: str) -> Session | None:
    """Close a session now (the agent's ``conv.end()``); a closed session stays closed."""
    now = utcnow()

    def change(session: Session) -> dict[str, Any] | None:
        if session.state == CLOSED:
            return None
        return _closed(now, reason)

    session, _ = update_with_retry(state, session_id, change)
    return session


def reap_stuck_messages(state: PolySMSState) -> int:
    """Re-queue messages left ``queued`` or ``sending`` (a lost job, a killed worker)."""
    older_than = utcnow() - state.settings.stuck_after
    requeued = 0
    now = utcnow()
    for message in state.store.stuck_messages(older_than):
        if message.status == QUEUED and message.attempts > 0:
            # Waiting for a retry: stuck only once its backoff has also run out.
            from .sending import retry_delay

            due = message.updated_at + retry_delay(state, message.attempts)
            if due + state.settings.stuck_after > now:
                continue
        if message.direction == INBOUND:
            # The agent's turn was lost (a Redis flush, a killed worker): run it again.
            if message.status == PROCESSING and (
                state.store.update_message(
                    message.id, expected_status=PROCESSING, status=RECEIVED, updated_at=utcnow()
                )
                is None
            ):
                continue
            if message.status == RECEIVED:
                state.store.update_message(message.id, expected_status=RECEIVED, updated_at=now)
            if message.session_id:
                state.scheduler.enqueue("agent", message.session_id, message.id)
                requeued += 1
            continue
        if message.status == SENDING:
            # The worker died mid-send; at-least-once: send again rather than lose the message.
            if (
                state.store.update_message(
                    message.id, expected_status=SENDING, status=QUEUED, updated_at=utcnow()
                )
                is None
            ):
                continue
        else:
            state.store.update_message(message.id, expected_status=QUEUED, updated_at=utcnow())
        state.scheduler.enqueue("send", message.id)
        requeued += 1
    return requeued


# At most this many other due timers are fired by one wake-up job, so a job stays short.
WAKE_DRAIN_LIMIT = 500


def wake_job(state: PolySMSState, session_id: str) -> int:
    """A scheduled wake-up: fire this session's timer; when it was due, also fire the other
    timers due by now, in batches (returns how many fired).

    Wake-ups come due in crowds (24 h after a campaign): the first one drains the crowd at batch
    speed, and the others then find their session fired already and end at once.
    """
    if not timer_job(state, session_id):
        return 0
    return 1 + _fire_due(state, limit=WAKE_DRAIN_LIMIT)


# What one shared wake-up job looks at, at most; the rest go on in a new job.
WAKE_JOB_LIMIT = 5000


def wake_due_job(state: PolySMSState) -> int:
    """A shared wake-up: every session whose wake-up time has come is woken (its timer fired when
    due, else put to sleep until its later deadline), in batches; returns how many fired."""
    fired = 0
    seen: set[str] = set()
    while len(seen) < WAKE_JOB_LIMIT:
        waking = [s for s in state.store.waking_sessions(utcnow(), limit=500) if s.id not in seen]
        if not waking:
            return fired
        for start in range(0, len(waking), SWEEP_BATCH):
            batch = waking[start : start + SWEEP_BATCH]
            seen.update(s.id for s in batch)
            # A batch in one transaction and one Redis round trip (each timer_job joins the unit).
            fired += unit_of_work(
                state, lambda batch=batch: sum(timer_job(state, s.id, s) for s in batch)
            )
    state.scheduler.enqueue("wake")  # a crowd bigger than one job's share: the rest, next
    return fired


def _fire_due(state: PolySMSState, limit: int = 500) -> int:
    fired = 0
    due = state.store.due_sessions(utcnow(), limit=limit)
    for start in range(0, len(due), SWEEP_BATCH):
        batch = due[start : start + SWEEP_BATCH]
        # A batch of timers in one transaction and one Redis round trip (each timer_job joins
        # the unit): a backlog of due timers is fired several times faster than one by one.
        fired += unit_of_work(
            state, lambda batch=batch: sum(timer_job(state, s.id, s) for s in batch)
        )
    return fired


def sweep(state: PolySMSState) -> int:
    """Fire every overdue deadline and re-queue stuck messages; returns the timers fired.

    Safe to run anywhere, any time, as often as wanted: timers are compare-and-set transitions.
    """
    fired = _fire_due(state)
    reap_stuck_messages(state)
    return fired


def run_due_timers(state: PolySMSState) -> int:
    """Run the scheduler's due jobs, then sweep the Store; returns the timers fired."""
    fired = state.scheduler.run_due(utcnow())
    return fired + sweep(state)
