"""Messaging Service pools: which service a number belongs to, and opt-outs that cover a service.

Twilio's rule: a STOP to any number of a Messaging Service opts the user out of the whole
service, every member number and the service's SID itself; a START through any member opts back
in. So an opt-out through a member is recorded once, under the service's SID, and the Store's
opt-out look-ups resolve a member number to its service (:meth:`Store.is_opted_out`). Numbers
outside the service keep their own opt-outs.

A number joins a service by ``PATCH /v1/senders/<number>``, ``flask polysms add-number
--messaging-service``, or when Twilio's inbound webhook names the service it came through.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from ..errors import InvalidInput
from ..phone import is_messaging_service_sid
from ..records import SOURCE_KEYWORD, Sender
from .events import opt_out_changed

if TYPE_CHECKING:
    from .state import PolySMSState

FIELD = "messaging_service_sid"


def opt_out_address(sender: Sender) -> str:
    """The sender an opt-out through ``sender`` is recorded under: its Messaging Service's SID
    when it is a member of one, else its own address."""
    return sender.messaging_service_sid or sender.address


def membership_problem(state: PolySMSState, sender: Sender, service_sid: str | None) -> str | None:
    """Why ``sender`` cannot join the service ``service_sid`` (None: it can, or it leaves its
    service). The service must be a Messaging Service SID provisioned for the sender's project,
    in any of its environments, and only a number joins one."""
    if service_sid is None:
        return None
    if is_messaging_service_sid(sender.address):
        return "a Messaging Service cannot belong to another one"
    if not is_messaging_service_sid(service_sid):
        return "a Messaging Service SID: MG + 32 hex characters"
    service = state.store.get_sender(service_sid)
    if service is None or service.project_id != sender.project_id:
        # Another project's service answers as an unknown one: nothing to learn about it here.
        return f"{service_sid} is not a Messaging Service provisioned for this project"
    return None


def check_membership(state: PolySMSState, sender: Sender, service_sid: str | None) -> None:
    """Raise InvalidInput (with the field's error) unless ``sender`` may join ``service_sid``."""
    problem = membership_problem(state, sender, service_sid)
    if problem is not None:
        raise InvalidInput(f"cannot set {FIELD}: {problem}", errors={FIELD: [problem]})


def note_membership(state: PolySMSState, sender: Sender, service_sid: str | None) -> Sender:
    """Record that ``sender`` belongs to the service an inbound webhook came through, and return
    the sender as it now is. A service that is not provisioned for the project is ignored (the
    webhook is still handled): Twilio's parameter is a fact about Twilio's side, not an order."""
    if not service_sid or sender.messaging_service_sid == service_sid:
        return sender  # the usual case: nothing to read or write
    if membership_problem(state, sender, service_sid) is not None:
        return sender
    return state.store.update_sender(sender.address, messaging_service_sid=service_sid)


def change_opt_out(
    state: PolySMSState,
    sender: Sender,
    user_number: str,
    opted_out: bool,
    keyword: str | None,
    at: datetime,
    source: str = SOURCE_KEYWORD,
    api_key_id: str | None = None,
) -> bool:
    """Opt ``user_number`` out of (or back into) ``sender``, its whole service when it is a
    member of one; True when something changed. ``api_key_id``: the API key of an ``api``
    change.

    An opt-out is one record, under :func:`opt_out_address`. An opt-in also clears the number's
    own opt-out, recorded before it joined the service: the user who texted START through it
    must be able to get its messages again.
    """
    store = state.store
    address = opt_out_address(sender)
    changed = store.set_opt_out(
        sender.project_id, user_number, address, opted_out, keyword, at, source, api_key_id
    )
    if not opted_out and address != sender.address:
        changed = (
            store.set_opt_out(
                sender.project_id,
                user_number,
                sender.address,
                False,
                keyword,
                at,
                source,
                api_key_id,
            )
            or changed
        )
    if changed:
        opt_out_changed(state, sender.project_id, user_number, address, opted_out, keyword, source)
    return changed
