"""Opt-outs as the API manages them: the project's current opt-outs, opting a pair out or back in
on a caller's request, and a recipient's history.

Everything is scoped to the caller's project: a sender of another project is not the caller's
(400 to opt out, 404 to opt in, as if absent), and lists and history show the project's own
records only. Every change is an event of the append-only history with its source (``api`` here)
and the id of the API key that made it, never the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..clock import utcnow
from ..errors import ConflictError, InvalidInput, NotFoundError
from ..records import SOURCE_API, OptOut, OptOutEvent, Sender
from .cursors import CursorScope, open_cursor, seal_cursor
from .pools import change_opt_out, opt_out_address

if TYPE_CHECKING:
    from .state import PolySMSState
    from .tenancy import Tenant

#: The names cursors of these lists are bound to (a cursor of another list is refused).
OPT_OUTS, OPT_OUT_HISTORY = "opt_outs", "opt_out_history"


@dataclass
class Page:
    """A page of records as the API shows them, and the cursor of the next page."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def opt_out_dict(opt_out: OptOut) -> dict[str, Any]:
    """A current opt-out as the API shows it."""
    return {
        "user_number": opt_out.recipient,
        "sender": opt_out.sender,
        "keyword": opt_out.keyword,
        "source": opt_out.source,
        "created_at": opt_out.created_at,
    }


def event_dict(event: OptOutEvent) -> dict[str, Any]:
    """A change of the history as the API shows it."""
    return {
        "user_number": event.recipient,
        "sender": event.sender,
        "action": event.action,
        "keyword": event.keyword,
        "source": event.source,
        "api_key_id": event.api_key_id,
        "created_at": event.at,
    }


def project_sender(state: PolySMSState, project_id: str, address: str) -> Sender | None:
    """The project's sender with this address (any environment); None for an address that is
    not one of its senders, another project's included."""
    sender = state.store.get_sender(address)
    return sender if sender is not None and sender.project_id == project_id else None


def list_opt_outs(
    state: PolySMSState,
    tenant: Tenant,
    *,
    user_number: str | None = None,
    sender: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page:
    """A page of the project's current opt-outs, in the order the pairs first opted out."""
    scope = CursorScope(OPT_OUTS, tenant.project_id, tenant.environment)
    rows, position = state.store.list_opt_outs(
        tenant.project_id,
        recipient=user_number,
        sender=sender,
        cursor=open_cursor(state.settings, scope, cursor),
        limit=limit,
    )
    return Page([opt_out_dict(row) for row in rows], seal_cursor(state.settings, scope, position))


def history(
    state: PolySMSState, tenant: Tenant, user_number: str, *, cursor: str | None, limit: int
) -> Page:
    """A page of the recipient's opt-outs and opt-ins in the project, oldest first."""
    scope = CursorScope(OPT_OUT_HISTORY, tenant.project_id, tenant.environment)
    rows, position = state.store.opt_out_events(
        tenant.project_id,
        user_number,
        cursor=open_cursor(state.settings, scope, cursor),
        limit=limit,
    )
    return Page([event_dict(row) for row in rows], seal_cursor(state.settings, scope, position))


def _current(state: PolySMSState, project_id: str, user_number: str, sender: str) -> OptOut | None:
    rows, _ = state.store.list_opt_outs(project_id, recipient=user_number, sender=sender, limit=1)
    return rows[0] if rows else None


def opt_out(
    state: PolySMSState, tenant: Tenant, user_number: str, sender: str
) -> tuple[dict[str, Any], bool]:
    """Opt ``user_number`` out of the project's ``sender`` (its whole Messaging Service when it
    is a member of one, recorded under the service's SID) on the caller's request; returns the
    opt-out and whether this call made it (False: it was opted out already, and that record is
    returned unchanged). Raises InvalidInput (400) when ``sender`` is not the project's."""
    record = project_sender(state, tenant.project_id, sender)
    if record is None:
        raise InvalidInput(
            "sender is not a sender of this project",
            errors={"sender": ["not a number or Messaging Service provisioned for this project"]},
        )
    address = opt_out_address(record)
    for _ in range(3):  # a concurrent opt-in between the two steps: try again
        created = change_opt_out(
            state, record, user_number, True, None, utcnow(), SOURCE_API, tenant.api_key_id
        )
        current = _current(state, tenant.project_id, user_number, address)
        if current is not None:
            return opt_out_dict(current), created
    raise ConflictError("the pair was opted in and out meanwhile; try again")


def opt_in(state: PolySMSState, tenant: Tenant, user_number: str, sender: str) -> None:
    """Opt ``user_number`` back into the project's ``sender`` (and its Messaging Service, as a
    START through it would) on the caller's request, kept in the history. Raises NotFoundError
    (404) when the pair is not opted out in this project."""
    record = project_sender(state, tenant.project_id, sender)
    if record is None or not change_opt_out(
        state, record, user_number, False, None, utcnow(), SOURCE_API, tenant.api_key_id
    ):
        raise NotFoundError("this user number is not opted out of this sender")
