"""The one send path: record the message, then a job re-checks, sends and records the outcome.

Every outbound message — API greeting, agent reply, ``conv.send_sms``, templates, keyword replies,
warnings, closings — goes through :func:`queue_message` and :func:`send_job`.

Each send attempt logs one line on the ``flask_polysms.sending`` logger, as ``key=value`` text
and as the record's ``extra`` fields (see :func:`log_attempt`); never a body or a phone number.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from ..clock import utcnow
from ..media import media_from_urls, urls_of
from ..phone import is_messaging_service_sid
from ..ports.gateways import GatewayError, OutgoingSMS, SendResult
from ..ports.store import SendClaim
from ..records import (
    FAILED,
    OUTBOUND,
    QUEUED,
    SCHEDULED,
    SENDING,
    SOURCE_CARRIER,
    STATUS_RANK,
    SUPPRESSED,
    Message,
    Sender,
    Session,
    new_id,
)
from ..segments import count_segments
from .events import about_project, opt_out_changed, status_changed
from .job_ids import release_job_id, send_job_id
from .metrics import count
from .pools import change_opt_out
from .sender_facts import guard_error
from .senders import guard_enabled

if TYPE_CHECKING:
    from .state import PolySMSState

log = logging.getLogger("flask_polysms.sending")

# Twilio's "Attempt to send to unsubscribed recipient".
OPTED_OUT_CODE = 21610

# Keyword confirmations must reach the user even right after STOP (carriers require the reply).
UNSUPPRESSED_KINDS = frozenset({"compliance"})


def queue_message(
    state: PolySMSState,
    *,
    project_id: str,
    environment: str,
    session: Session | None,
    kind: str,
    body: str,
    to: str,
    sender: str,
    template: str | None = None,
    max_attempts: int | None = None,
    error: tuple[int | None, str] | None = None,
    suppressed: bool = False,
    media_urls: list[str] | None = None,
    send_at: datetime | None = None,
) -> Message:
    """Record an outbound message as ``queued`` and hand it to the send job.

    ``sender`` is an E.164 number or a Messaging Service SID. With ``error`` the message is recorded
    as ``failed`` at once (a send that cannot even be attempted) and counted in ``api_failures``.
    With ``suppressed`` (its recipient opted out when it was accepted) it is recorded as
    ``suppressed`` (drop reason ``opted_out``) at once and counted: no job, so no later path
    (a sweep, a retry, a START in between) can ever send it. ``media_urls``: pictures to send with
    it (an MMS), already checked. With ``send_at`` it is recorded ``scheduled`` and its release
    job (:mod:`~flask_polysms.services.scheduled`) wakes it then.
    """
    now = utcnow()
    segments = count_segments(body)
    service = sender if is_messaging_service_sid(sender) else None
    message = Message(
        id=new_id("msg_"),
        project_id=project_id,
        environment=environment,
        session_id=session.id if session else None,
        direction=OUTBOUND,
        kind=kind,
        body=body,
        to=to,
        from_=None if service else sender,
        messaging_service_sid=service,
        created_at=now,
        updated_at=now,
        # An MMS is one message, whatever the length of its text (as Twilio counts it).
        segments=1 if media_urls else segments.segments,
        encoding=segments.encoding,
        template=template,
        max_attempts=state.settings.send_max_attempts if max_attempts is None else max_attempts,
        media=media_from_urls(media_urls),
        send_at=send_at,
    )
    if error is not None:
        message.status = FAILED
        message.error_code, message.error_message = error
        message.last_error_code, message.last_error_message = error
        message.last_error_at = now
        state.store.add_message(message)
        count(state, project_id, environment, "api_failures")
        return message
    if suppressed:
        message.status = SUPPRESSED
        message.drop_reason = "opted_out"
        state.store.add_message(message)
        count(state, project_id, environment, "suppressed")
        log_attempt(message, SUPPRESSED_OUTCOME, time.perf_counter(), reason="opted_out")
        return message
    if send_at is not None:
        message.status = SCHEDULED
        state.store.add_message(message)
        state.scheduler.enqueue_at(
            send_at, "release", message.id, job_id=release_job_id(message.id)
        )
        return message
    state.store.add_message(message)
    state.scheduler.enqueue("send", message.id, job_id=send_job_id(message.id, 0))
    return message


def status_callback_url(state: PolySMSState, message_id: str | None = None) -> str | None:
    """Where Twilio posts delivery updates: the configured public URL (``POLYSMS_PUBLIC_URL`` or
    ``SERVER_NAME``); None without one (debug and testing only), never a request's host.

    With ``message_id``, the URL names our message (``?message_id=``): a callback for a send
    whose answer was lost still says which message Twilio created.
    """
    if state.settings.public_url:
        url = f"{state.settings.public_url}{state.settings.url_prefix}/v1/twilio/status"
        return f"{url}?{urlencode({CALLBACK_MESSAGE_PARAMETER: message_id})}" if message_id else url
    return None


#: The status-callback URL's query parameter naming our message.
CALLBACK_MESSAGE_PARAMETER = "message_id"


# Outcomes of a send attempt, as logged.
SENT_OUTCOME, RETRY, TIMEOUT, FAILED_OUTCOME, SUPPRESSED_OUTCOME = (
    "sent",
    "retry",
    "timeout",
    "failed",
    "suppressed",
)
# Daily counters of attempts that will be tried again (besides sent/suppressed/api_failures).
RETRY_COUNTERS = {RETRY: "send_retries", TIMEOUT: "send_timeouts"}


def log_attempt(
    message: Message,
    outcome: str,
    started: float,
    *,
    error_code: int | None = None,
    reason: str | None = None,
    twilio_sid: str | None = None,
    retry_in: timedelta | None = None,
) -> None:
    """Log one send attempt: ``send message_id=… project_id=… attempt=N/M outcome=…
    error_code=… duration_ms=…`` (then ``reason=``, ``twilio_sid=``, ``retry_in_s=`` when they
    apply), the same fields in the record's ``extra`` for JSON handlers.

    INFO for ``sent`` and ``suppressed``, WARNING for ``retry``, ``timeout`` and ``failed``.
    ``reason`` is one of a fixed set of words, never an error's text: Twilio's messages can
    quote the phone number.
    """
    level = logging.INFO if outcome in (SENT_OUTCOME, SUPPRESSED_OUTCOME) else logging.WARNING
    if not log.isEnabledFor(level):
        return
    fields = {
        "message_id": message.id,
        "project_id": message.project_id,
        "attempt": message.attempts,
        "max_attempts": message.max_attempts,
        "outcome": outcome,
        "error_code": error_code,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if reason is not None:
        fields["reason"] = reason
    if twilio_sid is not None:
        fields["twilio_sid"] = twilio_sid
    if retry_in is not None:
        fields["retry_in_s"] = round(retry_in.total_seconds(), 3)
    shown = {**fields, "attempt": f"{message.attempts}/{message.max_attempts}"}
    del shown["max_attempts"]
    text = " ".join(f"{key}={'-' if value is None else value}" for key, value in shown.items())
    log.log(level, "send %s", text, extra=fields)


def _fail(
    state: PolySMSState,
    message: Message,
    code: int | None,
    text: str,
    started: float,
    reason: str,
) -> None:
    now = utcnow()
    updated = state.store.update_message(
        message.id,
        expected_status=SENDING,
        status=FAILED,
        error_code=code,
        error_message=text,
        last_error_code=code,
        last_error_message=text,
        last_error_at=now,
        updated_at=now,
    )
    status_changed(state, updated)
    if updated is not None:
        count(state, message.project_id, message.environment, "api_failures")
    log_attempt(message, FAILED_OUTCOME, started, error_code=code, reason=reason)


def send_job(state: PolySMSState, message_id: str) -> bool:
    """Send one queued message; idempotent (only the job that moves it to ``sending`` sends).

    Two Store calls besides the error paths, each one round trip on PostgreSQL: the claim (which
    also reads the opt-out, the project and the sender) and the ``sent`` record (which also counts
    it and reads the status callbacks that raced ahead).
    """
    store = state.store
    started = time.perf_counter()
    claim = store.claim_send(message_id, utcnow())
    if claim is None:
        return False
    # The project as claimed tells whether its events go to webhooks.
    with about_project(claim.project):
        return _send_claimed(state, claim, started)


def _send_claimed(state: PolySMSState, claim: SendClaim, started: float) -> bool:
    store = state.store
    message = claim.message
    message_id = message.id
    # The opt-out is checked here, at send time, not only when the message was accepted.
    if message.kind not in UNSUPPRESSED_KINDS and claim.opted_out:
        suppressed = store.update_message(
            message_id,
            expected_status=SENDING,
            status=SUPPRESSED,
            drop_reason="opted_out",
            updated_at=utcnow(),
        )
        status_changed(state, suppressed)
        if suppressed:
            count(state, message.project_id, message.environment, "suppressed")
        log_attempt(message, SUPPRESSED_OUTCOME, started, reason="opted_out")
        return True
    project = claim.project
    if project is None or not project.twilio_account_sid or not project.twilio_auth_token_encrypted:
        text = "the project has no Twilio connection (connect-twilio)"
        _fail(state, message, None, text, started, "no_twilio_connection")
        return True
    if guard_enabled(state, project):
        problem = guard_error(claim.sender) if claim.sender is not None else None
        if problem:
            _fail(state, message, None, problem, started, "sender_guard")
            return True
    try:
        auth_token = state.cipher.decrypt(project.twilio_auth_token_encrypted)
    except ValueError as exc:
        # The secret key changed: no retry can help, and a message left `sending` would be
        # re-sent by every sweep, forever.
        _fail(state, message, None, str(exc), started, "auth_token_undecryptable")
        return True
    outgoing = OutgoingSMS(
        to=message.to,
        body=message.body,
        from_=message.from_,
        messaging_service_sid=message.messaging_service_sid,
        status_callback=status_callback_url(state, message.id),
        media_urls=tuple(urls_of(message.media)),
    )
    try:
        # An earlier attempt may have reached Twilio (its answer lost, its worker killed): look
        # before sending again.
        found = _earlier_send(state, project, auth_token, message, outgoing)
        result = found or state.gateway.send(project.twilio_account_sid, auth_token, outgoing)
    except GatewayError as exc:
        if exc.code == OPTED_OUT_CODE:
            _carrier_opt_out(state, message, claim.sender, exc, started)
        else:
            _handle_gateway_error(state, message, exc, started)
        return True
    # Counted in the `sent` metric by the same Store call.
    sent, raced = store.record_sent(message_id, result.sid, utcnow())
    status_changed(state, sent)
    log_attempt(
        message, SENT_OUTCOME, started, twilio_sid=result.sid, reason="adopted" if found else None
    )
    if sent is not None:
        # A status callback may have raced ahead of this update: apply what already arrived.
        for event in raced:
            apply_status(state, sent, event.status, event.error_code)
    return True


#: How far before a message's creation an earlier send of it is looked for: Twilio's clock and
#: ours may differ a little.
CLOCK_SKEW = timedelta(minutes=5)


def _earlier_send(
    state: PolySMSState, project, auth_token: str, message: Message, outgoing: OutgoingSMS
) -> SendResult | None:
    """Twilio's copy of ``message`` made by an earlier attempt, if any (only a retry looks).

    Every retry looks, whatever ended the attempt before it: a timeout, a lost connection or a
    5xx leaves the outcome unknown, and a worker killed mid-send leaves no record of how it
    ended. A copy whose SID another of our messages holds is that message's, not this one's.
    """
    if message.attempts <= 1:
        return None
    since = message.created_at - CLOCK_SKEW
    for candidate in state.gateway.find_sent(
        project.twilio_account_sid, auth_token, outgoing, since
    ):
        owner = state.store.get_message_by_sid(candidate.sid)
        if owner is None or owner.id == message.id:
            return candidate
    return None


def _handle_gateway_error(
    state: PolySMSState, message: Message, exc: GatewayError, started: float
) -> None:
    if exc.retryable and message.attempts < message.max_attempts:
        # Back to queued, then wake again after an exponential delay: 1x, 2x, 4x, 8x the base.
        now = utcnow()
        delay = retry_delay(state, message.attempts)
        requeued = state.store.update_message(
            message.id,
            expected_status=SENDING,
            status=QUEUED,
            error_code=exc.code,
            error_message=str(exc),
            last_error_code=exc.code,
            last_error_message=str(exc),
            last_error_at=now,
            updated_at=now,
        )
        outcome = TIMEOUT if exc.timed_out else RETRY
        if requeued is not None:
            count(state, message.project_id, message.environment, RETRY_COUNTERS[outcome])
            state.scheduler.enqueue_at(
                now + delay,
                "send",
                message.id,
                job_id=send_job_id(message.id, message.attempts),
            )
        log_attempt(message, outcome, started, error_code=exc.code, retry_in=delay)
        return
    reason = (
        "timeout" if exc.timed_out else "retries_exhausted" if exc.retryable else "twilio_error"
    )
    _fail(state, message, exc.code, str(exc), started, reason)


def _carrier_opt_out(
    state: PolySMSState,
    message: Message,
    sender: Sender | None,
    exc: GatewayError,
    started: float,
) -> None:
    """Twilio refused the send because the recipient unsubscribed (a STOP sent to Twilio itself,
    or to another number of the service): the message is suppressed, as if we had known, and the
    opt-out recorded (source ``carrier``) so that later sends stop before reaching Twilio."""
    now = utcnow()
    text = str(exc)
    updated = state.store.update_message(
        message.id,
        expected_status=SENDING,
        status=SUPPRESSED,
        drop_reason="opted_out",
        error_code=OPTED_OUT_CODE,
        error_message=text,
        last_error_code=OPTED_OUT_CODE,
        last_error_message=text,
        last_error_at=now,
        updated_at=now,
    )
    status_changed(state, updated)
    if updated is not None:
        count(state, message.project_id, message.environment, "suppressed")
    address = message.messaging_service_sid or message.from_ or ""
    if sender is not None and sender.address == address:
        # A member number's opt-out is its service's, as Twilio keeps it.
        change_opt_out(state, sender, message.to, True, None, now, SOURCE_CARRIER)
    elif state.store.set_opt_out(  # not provisioned (any more): the pair as sent
        message.project_id, message.to, address, True, None, now, SOURCE_CARRIER
    ):
        opt_out_changed(state, message.project_id, message.to, address, True, None, SOURCE_CARRIER)
    log_attempt(message, SUPPRESSED_OUTCOME, started, error_code=OPTED_OUT_CODE, reason="opted_out")


def apply_status(
    state: PolySMSState, message: Message, status: str, error_code: int | None
) -> bool:
    """Move a message to a Twilio status if that is forward; counts the metric once per message."""
    rank = STATUS_RANK.get(status)
    if rank is None:
        return False
    lower = tuple(s for s, r in STATUS_RANK.items() if r < rank)
    fields = {"status": status, "updated_at": utcnow()}
    if error_code is not None:
        fields["error_code"] = error_code
    updated = state.store.update_message(message.id, expected_status=lower, **fields)
    if updated is None:
        return False
    status_changed(state, updated)
    if status in ("delivered", "undelivered", "failed"):
        count(state, message.project_id, message.environment, status)
    return True


def retry_delay(state: PolySMSState, attempt: int) -> timedelta:
    """The wait before retry number ``attempt`` (1-based)."""
    return state.settings.retry_base_delay * (2 ** (attempt - 1))
