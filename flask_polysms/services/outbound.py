"""The outbound service: count the project's limit, choose the sender, open the session, queue
the greeting.

Every caller that starts a message for a project (the API, the dashboard, operator routes) goes
through :func:`count_outbound`, so ``POLYSMS_RATE_LIMIT`` holds whoever starts it, and the API
counts once.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ..clock import utcnow
from ..errors import InvalidInput, NotFoundError
from ..phone import region_of
from ..records import Message, Sender, Session
from .consent import quiet_hours
from .quiet_hours import held_until
from .rate_limits import ProjectRateLimit
from .sender_facts import guard_error, two_way_supported
from .senders import guard_enabled
from .sending import queue_message
from .session_writes import new_session
from .tenancy import OutboundSenders, Tenant
from .units import unit_of_work

if TYPE_CHECKING:
    from .state import PolySMSState


def choose_agent_number(
    state: PolySMSState,
    tenant: Tenant,
    user_number: str,
    requested: str | None,
    senders: OutboundSenders | None = None,
) -> tuple[Sender, bool]:
    """The sender for a new outbound conversation (number selection), and whether the user
    opted out from it (read in the same query, or given: ``senders``)."""
    if senders is None:
        senders = state.store.senders_for_outbound(
            tenant.project_id, tenant.environment, user_number
        )
    provisioned, previous, opted_out = senders
    senders = {s.address: s for s in provisioned if s.kind == "number"}
    numbers = list(senders)
    if requested is not None:
        if requested not in senders:
            raise InvalidInput(
                f"agent_number {requested} is not provisioned for this project's "
                f"{tenant.environment} environment",
                errors={"agent_number": ["not a provisioned number for this environment"]},
            )
        return senders[requested], requested in opted_out
    if not numbers:
        raise NotFoundError(
            f"no numbers are provisioned for this project's {tenant.environment} environment"
        )
    if len(numbers) == 1:
        chosen = numbers[0]
    elif previous in senders:
        # Keep talking to the user from the number they already know.
        chosen = previous
    else:
        # Otherwise spread users across numbers; a stable hash keeps one user on one number.
        chosen = numbers[zlib.crc32(user_number.encode()) % len(numbers)]
    return senders[chosen], chosen in opted_out


def count_outbound(state: PolySMSState, project_id: str) -> None:
    """Count one message started by the project against ``POLYSMS_RATE_LIMIT``.

    Raises :class:`~flask_polysms.services.rate_limits.RateLimited` (429, ``Retry-After``) when the
    project
    is over its limit; nothing is written then.
    """
    state.limiter.hit(project_id)


def start_outbound(
    state: PolySMSState,
    tenant: Tenant,
    user_number: str,
    text: str,
    agent_number: str | None = None,
    media_urls: list[str] | None = None,
    send_at: datetime | None = None,
    senders: OutboundSenders | None = None,
    count_with: Callable[[ProjectRateLimit], None] | None = None,
) -> tuple[Session, Message]:
    """Open a session whose greeting is ``text`` (with pictures: ``media_urls``, already
    checked) and queue it for sending; with ``send_at`` (already checked), the session and its
    greeting are ``scheduled`` until then. A greeting that would go out in the project's quiet
    hours, in the recipient's local time, is scheduled for their end.

    Counts against the project's ``POLYSMS_RATE_LIMIT`` first (RateLimited, 429, when over it),
    whoever the caller is; through ``count_with`` when given, which counts it with the caller's
    own limits. ``senders``: what :meth:`~flask_polysms.ports.store.Store.senders_for_outbound`
    answered for this request, when it was read already.
    """
    if count_with is not None:
        count_with(state.limiter)
    else:
        count_outbound(state, tenant.project_id)
    sender, opted_out = choose_agent_number(state, tenant, user_number, agent_number, senders)
    chosen = sender.address
    if guard_enabled(state, tenant.project):
        problem = guard_error(sender)
        if problem:
            raise InvalidInput(problem)
    metadata = None
    country = region_of(user_number)
    if country and two_way_supported(country) is False:
        warning = (
            f"{country} does not support two-way SMS: replies from {user_number} will not come back"
        )
        metadata = {"warnings": [warning]}

    # A business-initiated message: held past the recipient's quiet hours.
    held = held_until(user_number, send_at or utcnow(), quiet_hours(tenant.project))
    if held is not None:
        send_at = held
    # Opted out when accepted: suppressed now, whenever it was meant to go.
    scheduled = send_at is not None and not opted_out

    def open_and_queue() -> tuple[Session, Message]:
        session = new_session(
            state,
            tenant.project_id,
            tenant.environment,
            user_number,
            chosen,
            metadata,
            scheduled=scheduled,
        )
        # Opted out when accepted: recorded `suppressed` at once, never queued, so no later
        # path (a sweep, a retry, a START before the send) can send it.
        message = queue_message(
            state,
            project_id=tenant.project_id,
            environment=tenant.environment,
            session=session,
            kind="greeting",
            body=text,
            to=user_number,
            sender=chosen,
            suppressed=opted_out,
            media_urls=media_urls,
            send_at=send_at,
        )
        return session, message

    # One commit for the session, its greeting and the counter; the send job and the wake-up
    # leave together after it.
    session, message = unit_of_work(state, open_and_queue)
    if state.scheduler.inline:  # the send job has run already: answer with its outcome
        message = state.store.get_message(message.id) or message
    return session, message
