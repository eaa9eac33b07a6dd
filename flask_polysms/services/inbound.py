"""Inbound SMS and status callbacks: compliance keywords first, then abuse limits, then routing to
the session and the agent (as a job, never inside the webhook request)."""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any

from limits import parse

from ..clock import utcnow
from ..records import (
    DROPPED,
    HANDLED,
    INBOUND,
    RECEIVED,
    Message,
    Project,
    Sender,
    StatusEvent,
    new_id,
)
from ..segments import count_segments
from ..signals import message_received
from .consent import custom_keywords, reply_text
from .events import conversation_arg, emit, message_arg
from .job_ids import agent_job_id
from .keywords import match_keyword
from .lifecycle import note_activity
from .metrics import count
from .pools import change_opt_out
from .rate_limits import MovingWindows, StorageOutage, limit_storage
from .sending import apply_status, queue_message
from .session_writes import new_session
from .turns import run_turns
from .units import unit_of_work

if TYPE_CHECKING:
    from .state import PolySMSState

log = logging.getLogger("flask_polysms.inbound")


class InboundLimits:
    """The inbound abuse limits on the `limits` library (memory or Redis storage).

    They fail open: with their storage down, a message is accepted uncounted and a warning logged
    (:class:`~flask_polysms.services.rate_limits.StorageOutage`); accepting needs the database only.
    """

    def __init__(self, state: PolySMSState) -> None:
        settings = state.settings
        self.storage = limit_storage(settings.rate_limit_storage_url)
        self.windows = MovingWindows(self.storage)
        self.per_sender = parse(settings.inbound_sender_limit)
        self.per_project = parse(settings.inbound_project_limit)
        self.same_text = parse(settings.duplicate_text_limit)
        self.outage = StorageOutage("inbound limit")

    def check(self, project_id: str, number: str, body: str) -> str | None:
        """The reason to drop this message, or None to accept it (also when the limits' storage
        cannot be reached). An empty text (a picture alone) is never a repeated text: several
        photos in a row are not spam."""
        text = body.strip().lower()
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16] if text else None
        try:
            reason = self._hit(project_id, number, digest)
        except self.storage.base_exceptions as exc:
            self.outage.failed(exc)
            return None
        self.outage.worked()
        return reason

    def _hit(self, project_id: str, number: str, digest: str | None) -> str | None:
        checks = [
            ("sender_rate_limited", self.per_sender, ("polysms-sender", project_id, number)),
            ("project_rate_limited", self.per_project, ("polysms-project", project_id)),
        ]
        if digest is not None:
            text = (self.same_text, ("polysms-text", project_id, number, digest))
            checks.insert(0, ("duplicate_text", *text))
        # In that order, in one Redis call: a message one limit refuses is not counted by the next.
        refused = self.windows.first_refused([(item, ids) for _, item, ids in checks])
        return None if refused is None else checks[refused][0]


def inbound_limits(state: PolySMSState) -> InboundLimits:
    """The app's inbound limits, built on first use."""
    if state.inbound_limits is None:
        state.inbound_limits = InboundLimits(state)
    return state.inbound_limits


def _record_inbound(
    state: PolySMSState,
    sender: Sender,
    *,
    session_id: str | None,
    user_number: str,
    body: str,
    message_sid: str,
    kind: str,
    status: str = RECEIVED,
    drop_reason: str | None = None,
    media: list[dict[str, Any]] | None = None,
) -> Message:
    now = utcnow()
    segments = count_segments(body)
    message = Message(
        id=new_id("msg_"),
        project_id=sender.project_id,
        environment=sender.environment,
        session_id=session_id,
        direction=INBOUND,
        kind=kind,
        body=body,
        to=sender.address,
        from_=user_number,
        created_at=now,
        updated_at=now,
        status=status,
        twilio_sid=message_sid,
        # An MMS is one message, whatever the length of its text (as Twilio counts it).
        segments=1 if media else segments.segments,
        encoding=segments.encoding,
        drop_reason=drop_reason,
        media=list(media or ()),
    )
    stored = state.store.add_message(message)
    count(state, sender.project_id, sender.environment, "inbound")
    emit(
        state,
        message_received,
        sender.project_id,
        conversation=conversation_arg(session_id),
        message=message_arg(stored),
    )
    if status == DROPPED:
        count(state, sender.project_id, sender.environment, "inbound_dropped")
        log.info("inbound %s from a user dropped: %s", message_sid, drop_reason)
    return stored


def handle_inbound(
    state: PolySMSState,
    sender: Sender,
    user_number: str,
    body: str,
    message_sid: str,
    project: Project | None = None,
    media: list[dict[str, Any]] | None = None,
    opt_out_type: str | None = None,
) -> str:
    """Process one inbound SMS already authenticated for ``sender``'s project.

    Returns what happened (``duplicate``, ``keyword:STOP``, ``dropped:<reason>``, ``routed``,
    ``handed_off``).
    Everything it writes, the claim of the MessageSid included, is one transaction: a failure
    leaves the message unclaimed for Twilio's retry. ``project``: the sender's, if already read.
    ``media``: the message's pictures (MMS), ``{"url", "content_type"}`` each.
    ``opt_out_type``: Twilio's ``OptOutType`` (``STOP``, ``START``, ``HELP``), honoured as that
    keyword whatever the text.
    """
    return unit_of_work(
        state,
        lambda: _handle_inbound(
            state, sender, user_number, body, message_sid, project, media, opt_out_type
        ),
    )


def _handle_inbound(
    state: PolySMSState,
    sender: Sender,
    user_number: str,
    body: str,
    message_sid: str,
    project: Project | None,
    media: list[dict[str, Any]] | None = None,
    opt_out_type: str | None = None,
) -> str:
    store = state.store
    now = utcnow()
    # Twilio retries a webhook it thinks failed: the MessageSid is claimed once, ever. With the
    # claim come the open session, a block and the opt-out (one statement on PostgreSQL).
    claimed, open_session, blocked, opted_out = store.claim_inbound_with_context(
        message_sid, now, sender.project_id, user_number, sender.address
    )
    if not claimed:
        return "duplicate"
    if project is None or project.id != sender.project_id:
        project = store.get_project(sender.project_id)
    match = match_keyword(body, custom_keywords(project) if project else (), opt_out_type)
    if match is not None:
        keyword = match.keyword
        _record_inbound(
            state,
            sender,
            session_id=open_session.id if open_session else None,
            user_number=user_number,
            body=body,
            message_sid=message_sid,
            kind="compliance",
            status=HANDLED,  # answered right here: never the agent's
            media=media,
        )
        if keyword in ("STOP", "START"):
            # Through a Messaging Service's number: the whole service.
            change_opt_out(state, sender, user_number, keyword == "STOP", match.word, now)
        # Keyword messages never reach the agent, and do not count as activity: a STOP during the
        # warning must not keep the session open.
        reply = reply_text(project, match)  # None: Twilio's opt-out handling answers
        if reply is not None:
            queue_message(
                state,
                project_id=sender.project_id,
                environment=sender.environment,
                session=open_session,
                kind="compliance",
                body=reply,
                to=user_number,
                sender=sender.address,
            )
        return f"keyword:{keyword}"

    drop_reason = None
    if opted_out:
        drop_reason = "opted_out"
    elif blocked is not None and blocked > now:
        drop_reason = "blocked"
    else:
        drop_reason = inbound_limits(state).check(sender.project_id, user_number, body)
        if drop_reason == "duplicate_text":
            store.block_number(
                sender.project_id,
                user_number,
                now + state.settings.duplicate_text_block,
                "duplicate_text",
            )
    if drop_reason is not None:
        _record_inbound(
            state,
            sender,
            session_id=open_session.id if open_session else None,
            user_number=user_number,
            body=body,
            message_sid=message_sid,
            kind="user",
            status=DROPPED,
            drop_reason=drop_reason,
            media=media,
        )
        return f"dropped:{drop_reason}"

    # Two first messages at once open one session: the second joins the first's.
    session = open_session or new_session(
        state, sender.project_id, sender.environment, user_number, sender.address, join_open=True
    )
    message = _record_inbound(
        state,
        sender,
        session_id=session.id,
        user_number=user_number,
        body=body,
        message_sid=message_sid,
        kind="user",
        # Handed off to a person: recorded, never the agent's (a person answers it).
        status=HANDLED if session.handoff else RECEIVED,
        media=media,
    )
    note_activity(state, session.id, user_reply=True, session=session)
    if session.handoff:
        return "handed_off"
    window = state.settings.merge_window
    if window:
        # The turn starts when the window closes, so a text split by the carrier joins it.
        state.scheduler.enqueue_at(
            message.created_at + window,
            "agent",
            session.id,
            message.id,
            job_id=agent_job_id(message.id),
        )
    else:
        state.scheduler.enqueue("agent", session.id, message.id, job_id=agent_job_id(message.id))
    return "routed"


def agent_job(state: PolySMSState, session_id: str, message_id: str) -> bool:
    """Run the host app's agent on the session's waiting user messages and send its replies from
    the session's number: one turn at a time per session, in arrival order, also across worker
    processes (:mod:`.turns`). ``message_id`` is the message that started the job; it may be
    answered by the job that holds the session's turn instead.

    Each message is claimed (``received`` -> ``processing``) so a job run twice answers once, and
    marked ``handled`` afterwards; one left behind by a lost job is run again by the sweep.
    """
    return run_turns(state, session_id, lambda message: _run_agent(state, session_id, message))


def _run_agent(state: PolySMSState, session_id: str, message: Message) -> bool:
    from .conversation import Conversation

    agent = state.agent
    session = state.store.get_session(session_id)
    if agent is None or session is None or session.handoff:
        return False  # handed off since the message came: a person answers it
    conv = Conversation(state, session)
    conv.attachments = copy.deepcopy(message.media)
    try:
        reply = agent(conv, message.body)
    except Exception:
        # The agent is the host app's code: its failure is logged and counted, and the session
        # stays usable for the next message.
        log.exception("the polysms agent raised on session %s", session_id)
        count(state, session.project_id, session.environment, "agent_errors")
        conv.save()
        return False
    conv.save()
    if reply:
        current = state.store.get_session(session_id)
        # A session closed by this very turn (``conv.end()``) still gets the agent's goodbye; one
        # closed before the agent ran gets nothing.
        ended_now = (
            current is not None and current.end_reason == "agent" and session.state != "closed"
        )
        if current is not None and (current.state != "closed" or ended_now):
            try:
                conv.reply(str(reply))
            except ValueError:
                # A reply that can never be sent (over 1600 characters) is the agent's fault too.
                log.exception("the polysms agent's reply on session %s cannot be sent", session_id)
                count(state, session.project_id, session.environment, "agent_errors")
                return False
    return True


def handle_status(state: PolySMSState, form: dict) -> str:
    """Record one status callback: one event per (SID, status), never a step back."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if not sid or not status:
        return "ignored"
    error_code = form.get("ErrorCode")
    # ASCII digits only, and within a 32-bit column: "²".isdigit() is True but int("²") raises.
    code = int(error_code) if error_code and re.fullmatch(r"[0-9]{1,9}", error_code) else None
    added = state.store.add_status_event(
        StatusEvent(twilio_sid=sid, status=status, received_at=utcnow(), error_code=code)
    )
    if not added:
        return "duplicate"
    message = state.store.get_message_by_sid(sid)
    if message is None:
        # The callback beat the send job's own update: the job applies it when it records the SID.
        return "pending"
    return "applied" if apply_status(state, message, status, code) else "stale"
