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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from ..clock import utcnow
from ..ports.schedulers import LOST, MISSING, PENDING, RUNNING, UNSURE
from ..records import (
    ACTIVE,
    CLOSED,
    END_INACTIVITY,
    END_UNENGAGED,
    INBOUND,
    OUTBOUND,
    PROCESSING,
    QUEUED,
    RECEIVED,
    SENDING,
    TIMER_GRACE,
    TIMER_IDLE,
    WARNED,
    Message,
    Session,
)
from .job_ids import agent_job_id, send_job_id
from .scheduled import release_due
from .session_writes import closed_fields, update_with_retry
from .units import unit_of_work
from .wakeups import schedule_wake as _schedule_wake

if TYPE_CHECKING:
    from .state import PolySMSState

log = logging.getLogger("flask_polysms.lifecycle")

T = TypeVar("T")

SWEEP_BATCH = 50  # timers fired per transaction by the sweep


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
        fields: dict[str, Any] = {"last_activity_at": now}
        if user_reply:
            fields.update(engaged=True, state=ACTIVE)
        if session.handoff:  # a person answers: no warning, no close until the agent resumes
            return fields
        fields.update(deadline_at=deadline, timer_kind=TIMER_IDLE)
        if session.wake_at is None or session.wake_at > deadline:
            fields["wake_at"] = deadline
        return fields

    session, changed = update_with_retry(state, session_id, change, session)
    if changed and session is not None and session.wake_at == deadline:
        _schedule_wake(state, deadline)
    return session


def _wake(state: PolySMSState, current: Session, now: datetime) -> bool:
    """Wake one session at ``now``: fire its deadline if due, else sleep until it; True when it
    fired. Runs inside the caller's unit of work (the transition, its message and its wake-up
    leave together)."""
    session_id = current.id
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
            return closed_fields(
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
        return closed_fields(
            now, END_INACTIVITY if session.timer_kind == TIMER_GRACE else END_UNENGAGED
        )

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


def _retry_due(state: PolySMSState, message: Message) -> datetime:
    """When a ``queued`` message may be sent: now for a first send, else when the backoff after
    its last failed attempt runs out."""
    if message.attempts == 0:
        return message.updated_at
    from .sending import retry_delay

    failed_at = message.last_error_at or message.updated_at
    return failed_at + retry_delay(state, message.attempts)


def _expected_job(message: Message) -> str | None:
    """The id of the job the Store expects for a message waiting for one (None: no job can
    help, an inbound message outside a session)."""
    if message.direction == INBOUND:
        return agent_job_id(message.id) if message.session_id else None
    if message.status == SENDING:  # the job that claimed it made attempt number `attempts`
        return send_job_id(message.id, max(0, message.attempts - 1))
    return send_job_id(message.id, message.attempts)


def _enqueue_again(
    state: PolySMSState,
    message: Message,
    stale: tuple[str, ...],
    now: datetime,
    at_once: bool = False,
) -> bool:
    """Enqueue the job a message waiting for a job (``queued`` or ``received``) needs, under the
    id the Store expects, discarding ``stale`` jobs of the same work; True when enqueued. A send
    waits for the end of its retry's backoff unless ``at_once`` (taken back from a dead job:
    no error to back off from)."""
    if message.direction == INBOUND:
        return state.scheduler.requeue(
            "agent",
            message.session_id,
            message.id,
            job_id=agent_job_id(message.id),
            stale=stale,
        )
    due = now if at_once else _retry_due(state, message)
    return state.scheduler.requeue(
        "send",
        message.id,
        job_id=send_job_id(message.id, message.attempts),
        when=due if due > now else None,
        stale=stale,
    )


def _take_back(state: PolySMSState, message: Message, now: datetime) -> Message | None:
    """A message whose job died while holding it (``sending``, ``processing``) waits for a job
    again; None when it moved on meanwhile (its job ended after all, or another sweep took it).

    At least once: a send that died after Twilio accepted it is sent again (a message is kept
    rather than lost), and an agent's turn that died runs again.
    """
    waiting = RECEIVED if message.direction == INBOUND else QUEUED
    return state.store.update_message(
        message.id, expected_status=message.status, status=waiting, updated_at=now
    )


# A message waiting for its job this long (seconds) is looked up in the broker: the window
# between a commit and its jobs reaching Redis, with room for a slow Redis.
LOSS_GRACE = timedelta(seconds=3)
# Messages looked up per page, and at most per sweep (the next sweep goes on).
RECOVER_PAGE = 500
RECOVER_LIMIT = 5000


def recover_lost_jobs(state: PolySMSState, report: SweepReport) -> set[str]:
    """Enqueue again the work whose job the broker lost, never had (Redis was down when it was
    accepted), or whose worker died: found by asking the broker about each waiting message's
    job (:meth:`~flask_polysms.ports.schedulers.Scheduler.check_jobs`), so within seconds of the
    loss,
    not after POLYSMS_STUCK_AFTER. Counts in ``report``; returns the ids of the messages whose
    job is waiting or running (the last resort leaves them alone).

    A scheduler that cannot tell (``thread``, ``manual``) leaves everything to the last resort.
    """
    verified: set[str] = set()
    seen: set[str] = set()  # looked at in an earlier page of this sweep
    looked_at = 0
    while looked_at < RECOVER_LIMIT:
        now = utcnow()
        page = [
            m
            for m in state.store.stuck_messages(now - LOSS_GRACE, limit=RECOVER_PAGE)
            if m.id not in seen
        ]
        seen.update(m.id for m in page)
        expected = {m.id: job for m in page if (job := _expected_job(m)) is not None}
        if not expected:
            break
        verdicts = state.scheduler.check_jobs(expected.values())
        if verdicts is None:
            break
        looked_at += len(page)
        recovered = 0
        for message in page:
            job_id = expected.get(message.id)
            verdict = verdicts.get(job_id) if job_id else None
            if verdict in (PENDING, RUNNING):
                verified.add(message.id)
                continue
            holding = message.status in (SENDING, PROCESSING)
            if verdict is None or verdict == UNSURE or (verdict == MISSING and holding):
                # Unsure, or held by a worker that may not have reported since Redis lost its
                # keys: ask again at the next sweep; the last resort still applies.
                continue
            # LOST, or MISSING while nothing holds the message: no job will ever run it.
            stale = (job_id,) if verdict == LOST else ()
            if holding:
                taken = _take_back(state, message, now)
                if taken is None:
                    continue
                message = taken
            elif (
                state.store.update_message(
                    message.id, expected_status=message.status, updated_at=now
                )
                is None  # moved on meanwhile; touched, it goes to the end of the next page
            ):
                continue
            if not _enqueue_again(state, message, stale, now, at_once=holding):
                report.broker_reachable = False
                return verified
            recovered += 1
            inbound = message.direction == INBOUND
            if holding:
                log.info(
                    "message %s: its %s job %s was lost: run again",
                    message.id,
                    "agent" if inbound else "send",
                    job_id,
                )
                report.add("turns_rerun" if inbound else "sends_requeued")
            else:
                report.add("turns_enqueued" if inbound else "sends_enqueued")
        if not recovered or len(page) < RECOVER_PAGE:
            break
    return verified


def reap_stuck_messages(state: PolySMSState, verified: Iterable[str] = ()) -> int:
    """The last resort: re-queue messages left ``queued``, ``sending``, ``received`` or
    ``processing`` for POLYSMS_STUCK_AFTER (a lost job the broker could not tell about, a
    scheduler that keeps jobs in memory), except ``verified`` ones, whose job the broker says
    is waiting or running."""
    older_than = utcnow() - state.settings.stuck_after
    requeued = 0
    now = utcnow()
    skip = set(verified)
    for message in state.store.stuck_messages(older_than):
        if message.id in skip:
            continue
        if message.status == QUEUED and message.attempts > 0:
            # Waiting for a retry: stuck only once its backoff has also run out.
            if _retry_due(state, message) + state.settings.stuck_after > now:
                continue
        if message.direction == INBOUND and not message.session_id:
            continue
        stale = (_expected_job(message),)
        if message.status in (SENDING, PROCESSING):
            # The job died holding it; at-least-once: run it again rather than lose it.
            taken = _take_back(state, message, utcnow())
            if taken is None:
                continue
            message = taken
        elif (
            state.store.update_message(
                message.id, expected_status=message.status, updated_at=utcnow()
            )
            is None
        ):
            continue
        if message.direction == OUTBOUND:
            stale += (send_job_id(message.id, message.attempts),)
        if _enqueue_again(state, message, tuple(dict.fromkeys(stale)), now, at_once=True):
            requeued += 1
    return requeued


# Sessions one call of fire_due looks at, at most (a job stays short); a crowd bigger than that
# goes on in a new wake-up job.
FIRE_LIMIT = 5000
FIRE_PAGE = 500


def fire_due(state: PolySMSState, now: datetime | None = None, *, limit: int = FIRE_LIMIT) -> int:
    """Fire every session timer due at ``now`` (default: the clock's now); returns how many fired.

    The one way timers fire: the wake-up job, the sweep and ``polysms.run_due_timers()`` all call
    it. Each session whose wake-up time has come is woken (its deadline fired when due: a warning
    or a close; else it sleeps until its later deadline), then any deadline due without a wake-up
    time is fired. Sessions go SWEEP_BATCH to a transaction and one Redis round trip: a backlog is
    fired several times faster than one by one. Past ``limit`` sessions, the rest are left to a
    new wake-up job. Safe in several processes at once: every transition is a compare-and-set.
    """
    now = utcnow() if now is None else now
    fired = 0
    seen: set[str] = set()
    for find in (state.store.waking_sessions, state.store.due_sessions):
        while len(seen) < limit:
            page = [s for s in find(now, limit=FIRE_PAGE) if s.id not in seen]
            if not page:
                break
            for start in range(0, len(page), SWEEP_BATCH):
                batch = page[start : start + SWEEP_BATCH]
                seen.update(s.id for s in batch)
                fired += unit_of_work(
                    state, lambda batch=batch: sum(_wake(state, s, now) for s in batch)
                )
        if len(seen) >= limit:
            state.scheduler.enqueue("wake")  # a crowd bigger than one call's share: the rest, next
            break
    return fired


def wake_job(state: PolySMSState, *_session_id: str) -> int:
    """The wake-up job (``wake``, and the ``timer`` job of one session that 0.1.0 scheduled,
    whose session is among those woken): :func:`fire_due`, returning how many timers fired.

    Wake-ups come due in crowds (24 h after a campaign): the first one drains the crowd at batch
    speed, and the others then find nothing left to fire.
    """
    return fire_due(state)


@dataclass
class SweepReport:
    """What one sweep did (what ``flask polysms sweep`` prints)."""

    #: Session deadlines that had come and were fired (warnings, closes).
    timers_fired: int = 0
    #: Queued messages whose send job was not in Redis (never reached it, or lost): enqueued.
    sends_enqueued: int = 0
    #: Messages taken back from a send whose worker died or whose job was lost: enqueued again.
    sends_requeued: int = 0
    #: Inbound messages whose agent job was not in Redis: enqueued.
    turns_enqueued: int = 0
    #: Agent turns whose worker died or whose job was lost: run again.
    turns_rerun: int = 0
    #: Messages waiting longer than POLYSMS_STUCK_AFTER that the broker could not account for
    #: (the last resort): enqueued again.
    stuck_requeued: int = 0
    #: Timed jobs (retries, wake-ups) whose time had come, moved to the queue because no RQ
    #: scheduler held its lock.
    scheduled_moved: int = 0
    #: Scheduled messages whose send_at had come, handed to their send.
    scheduled_released: int = 0
    #: Whether the broker answered (None: the scheduler needs none). Unreachable, only timers
    #: are fired: nothing could be enqueued.
    broker_reachable: bool | None = None

    def add(self, field: str, amount: int = 1) -> None:
        setattr(self, field, getattr(self, field) + amount)

    @property
    def recovered(self) -> int:
        """Jobs enqueued again for work that had lost its job."""
        return (
            self.sends_enqueued
            + self.sends_requeued
            + self.turns_enqueued
            + self.turns_rerun
            + self.stuck_requeued
        )

    def lines(self) -> list[str]:
        """One line per figure, as ``flask polysms sweep`` prints them."""
        lines = [
            f"{self.timers_fired} timers fired",
            f"{self.scheduled_released} scheduled messages released",
            f"{self.sends_enqueued} sends enqueued (queued, their job not in Redis)",
            f"{self.sends_requeued} sends re-queued (their worker died or their job was lost)",
            f"{self.turns_enqueued} inbound turns enqueued (their agent job not in Redis)",
            f"{self.turns_rerun} inbound turns re-run (their worker died or their job was lost)",
            f"{self.stuck_requeued} messages re-queued after POLYSMS_STUCK_AFTER (last resort)",
            f"{self.scheduled_moved} due timed jobs moved to the queue "
            "(no RQ scheduler held its lock)",
        ]
        if self.broker_reachable is False:
            lines.append("Redis unreachable: nothing could be enqueued; run the sweep again")
        return lines


def run_sweep(state: PolySMSState) -> SweepReport:
    """Fire every overdue deadline, move due timed jobs nobody moves, enqueue again the work
    whose job was lost or never enqueued, and re-queue what has waited POLYSMS_STUCK_AFTER.

    Safe to run anywhere, any time, as often as wanted, in several processes at once: timers
    are compare-and-set transitions, messages are taken back with compare-and-set, and every job
    checks what it claims.
    """
    report = SweepReport()
    scheduler = state.scheduler
    report.broker_reachable = scheduler.broker_available()
    if report.broker_reachable is not False:
        report.scheduled_moved = _tolerant(state, report, scheduler.move_due_jobs, 0)
    report.timers_fired = fire_due(state)
    report.scheduled_released = release_due(state)
    if report.broker_reachable is not False:
        verified = _tolerant(state, report, lambda: recover_lost_jobs(state, report), set())
        if report.broker_reachable is not False:
            report.stuck_requeued = reap_stuck_messages(state, verified)
    if report.recovered or report.broker_reachable is False:
        log.warning("sweep: %s", "; ".join(report.lines()))
    elif report.timers_fired or report.scheduled_moved or report.scheduled_released:
        log.info("sweep: %s", "; ".join(report.lines()))
    return report


def _tolerant(state: PolySMSState, report: SweepReport, work: Callable[[], T], default: T) -> T:
    """Run ``work``; Redis going away meanwhile ends this part of the sweep, not the sweep."""
    try:
        return work()
    except Exception as exc:
        if not state.scheduler.outage(exc):
            raise
        log.warning("sweep: Redis unreachable: %s", exc)
        report.broker_reachable = False
        return default


def sweep(state: PolySMSState) -> int:
    """:func:`run_sweep`, returning the timers fired (the sweep job; ``run_due_timers``)."""
    return run_sweep(state).timers_fired


def run_due_timers(state: PolySMSState) -> int:
    """Fire the timers due at the current (possibly frozen) time, run the scheduler's other timed
    jobs now due (retries), then sweep; returns the timers fired. The wake-up jobs among those
    due find nothing left: the count is :func:`fire_due`'s, whatever the scheduler."""
    now = utcnow()
    fired = fire_due(state, now)
    state.scheduler.run_due(now)
    return fired + sweep(state)
