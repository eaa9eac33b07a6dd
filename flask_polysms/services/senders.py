"""Sender compliance as a service: list a project's senders, record their registration, report.

The facts and the rules are :mod:`flask_polysms.services.sender_facts`'s; this module adds what
needs the
Store and the tenancy rules, for the ``/v1/senders`` blueprint and the ``flask polysms`` commands:

- a sender is seen only by its own project; any other address answers 404, as if absent;
- a registration state is one of ``sender_facts.REGISTRATION_STATES``;
- ``campaign_id`` belongs to the ``registered`` state only, and a long code of the US A2P 10DLC area
  cannot be recorded as ``registered`` without one (the campaign id is the evidence that lifts the
  1 MPS / carrier-block risk; a state without it would make the report claim what nobody checked);
- the destination countries of a report are those of the users the sender has talked to (its
  sessions among the project's newest ``MAX_SESSIONS_SCANNED``, read in one bounded query),
  unless the caller names them.

Every error is a :class:`~flask_polysms.errors.PolySMSError`: the API answers it as is and the CLI
prints its ``detail`` as one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from ..errors import InvalidInput, NotFoundError
from ..phone import region_of
from ..records import ENVIRONMENTS, Project, Sender, canonical_environment
from .pools import check_membership
from .sender_facts import (
    REGISTERED,
    REGISTRATION_STATES,
    REQ_A2P_10DLC,
    compliance_report,
    required_registration,
)

if TYPE_CHECKING:
    from .state import PolySMSState

# Marks "argument not given" where None is a meaningful value (clear the campaign id).
UNSET: Any = object()

# Campaign ids come in several shapes (The Campaign Registry's "C" + 6 characters, Twilio's SIDs),
# so only what cannot be an id is refused: blanks, whitespace, and text long enough to be a mistake.
CAMPAIGN_ID_MAX_LENGTH = 64
_CAMPAIGN_ID = re.compile(rf"^\S{{1,{CAMPAIGN_ID_MAX_LENGTH}}}$")

# The newest sessions read to find a sender's destination countries. A bound keeps one report
# cheap on a busy project; the report says when it was reached.
MAX_SESSIONS_SCANNED = 5000

DESTINATIONS_FROM_SESSIONS = "sessions"
DESTINATIONS_FROM_REQUEST = "request"


def guard_enabled(state: PolySMSState, project: Project) -> bool:
    """Whether the send-time guard runs for this project: the app's ``POLYSMS_SENDER_GUARD`` and
    the project's ``settings["sender_guard"]`` (default True) must both be on."""
    return bool(state.settings.sender_guard and project.settings.get("sender_guard", True))


def sender_dict(sender: Sender) -> dict[str, Any]:
    """A sender's facts as the API and the CLI show them.

    ``kind``, ``country`` and ``number_type`` are the ones the compliance report uses (the record's,
    completed from the address when the record lacks them), so a listing never disagrees with a
    report.
    """
    report = compliance_report(sender)
    return {
        "address": sender.address,
        "environment": sender.environment,
        "kind": report["kind"],
        "country": report["country"],
        "number_type": report["number_type"],
        "registration": sender.registration,
        "campaign_id": sender.campaign_id,
        "messaging_service_sid": sender.messaging_service_sid,
    }


def list_project_senders(
    state: PolySMSState, project_id: str, environment: str | None = None
) -> list[Sender]:
    """A project's senders, oldest first; only ``environment``'s when given (``dev`` means
    ``sandbox``). An unknown environment name is an InvalidInput."""
    env = None
    if environment is not None:
        env = canonical_environment(environment)
        if env is None:
            raise InvalidInput(
                f"unknown environment {environment!r}",
                errors={"environment": [f"one of {', '.join(ENVIRONMENTS)} (or dev)"]},
            )
    return state.store.list_senders(project_id, env)


def find_sender(state: PolySMSState, address: str, project_id: str | None = None) -> Sender:
    """The sender with this address, of ``project_id`` when given.

    Raises NotFoundError when there is none, or when it belongs to another project: a caller must
    not learn that another project's sender exists.
    """
    sender = state.store.get_sender(address)
    if sender is None or (project_id is not None and sender.project_id != project_id):
        raise NotFoundError(f"no sender {address} in this project")
    return sender


def set_registration(
    state: PolySMSState,
    address: str,
    registration: str | None = None,
    campaign_id: str | None = UNSET,
    *,
    project_id: str | None = None,
) -> Sender:
    """Record a sender's registration state and campaign id; returns the updated sender.

    ``registration`` None keeps the recorded state. ``campaign_id`` left out keeps the recorded id
    while the state stays ``registered`` and clears it otherwise; None clears it. Raises
    NotFoundError for an unknown sender (or another project's, with ``project_id``), and
    InvalidInput, changing nothing, when neither a state nor a campaign id is given (an empty
    change is a caller's mistake) or when :func:`check_registration` refuses the change.
    """
    sender = find_sender(state, address, project_id)
    if registration is None and campaign_id is UNSET:
        raise InvalidInput("nothing to change: give registration and/or campaign_id")
    changes = _registration_changes(sender, registration, campaign_id)
    return state.store.update_sender(sender.address, **changes)


def change_sender(
    state: PolySMSState,
    address: str,
    *,
    registration: str | None = None,
    campaign_id: str | None = UNSET,
    messaging_service_sid: str | None = UNSET,
    project_id: str | None = None,
) -> Sender:
    """Record any of a sender's registration state, campaign id (as :func:`set_registration`)
    and Messaging Service (None: the number leaves its service); returns the updated sender.

    The service must be a Messaging Service SID provisioned for the sender's project, and only
    a number joins one (:func:`~flask_polysms.services.pools.check_membership`). Everything is
    checked before anything is written: InvalidInput changes nothing. NotFoundError for an
    unknown sender (or another project's, with ``project_id``).
    """
    sender = find_sender(state, address, project_id)
    if registration is None and campaign_id is UNSET and messaging_service_sid is UNSET:
        raise InvalidInput(
            "nothing to change: give registration, campaign_id and/or messaging_service_sid"
        )
    changes: dict[str, Any] = {}
    if registration is not None or campaign_id is not UNSET:
        changes.update(_registration_changes(sender, registration, campaign_id))
    if messaging_service_sid is not UNSET:
        check_membership(state, sender, messaging_service_sid)
        changes["messaging_service_sid"] = messaging_service_sid
    return state.store.update_sender(sender.address, **changes)


def _registration_changes(
    sender: Sender, registration: str | None, campaign_id: str | None
) -> dict[str, Any]:
    new_state = registration if registration is not None else sender.registration
    if campaign_id is UNSET:
        new_campaign = sender.campaign_id if new_state == REGISTERED else None
    else:
        new_campaign = campaign_id
    check_registration(sender, new_state, new_campaign)
    return {"registration": new_state, "campaign_id": new_campaign}


def check_registration(sender: Sender, registration: str, campaign_id: str | None) -> None:
    """Raise InvalidInput unless ``sender`` may be recorded with this state and campaign id.

    Refused: a state that is not one of ``REGISTRATION_STATES``; a campaign id for a state other
    than ``registered``, or one that is blank, contains whitespace or is over 64 characters; a
    long code of the US A2P 10DLC area as ``registered`` without a campaign id. Pure: reads
    nothing but its arguments, so provisioning can apply the same rules before a sender exists.
    """
    if registration not in REGISTRATION_STATES:
        raise InvalidInput(
            f"unknown registration state {registration!r}: use one of "
            f"{', '.join(REGISTRATION_STATES)}",
            errors={"registration": [f"one of {', '.join(REGISTRATION_STATES)}"]},
        )
    if campaign_id is not None:
        if not isinstance(campaign_id, str) or not _CAMPAIGN_ID.fullmatch(campaign_id):
            raise InvalidInput(
                "campaign_id must be 1 to 64 characters without spaces",
                errors={"campaign_id": ["1 to 64 characters without spaces"]},
            )
        if registration != REGISTERED:
            raise InvalidInput(
                f"a campaign id applies only to the state {REGISTERED!r}, not {registration!r}",
                errors={"campaign_id": [f"only with registration {REGISTERED!r}"]},
            )
    if registration == REGISTERED and not campaign_id and _needs_campaign(sender):
        raise InvalidInput(
            f"{sender.address} is a US A2P 10DLC long code: recording it as registered needs the "
            "campaign id (--campaign-id / campaign_id)",
            errors={"campaign_id": ["required to record a 10DLC long code as registered"]},
        )


def destination_countries(state: PolySMSState, sender: Sender) -> tuple[list[str], bool]:
    """The countries of the users this sender has had sessions with, among the project's newest
    ``MAX_SESSIONS_SCANNED`` sessions, and whether older sessions were left unread.

    Countries are ISO 3166 alpha-2 codes, sorted; numbers without a country (non-geographic ones)
    are left out. Every environment of the project is read: a sender that moved between
    environments still reaches the users it reached before. A Messaging Service is rarely a
    session's agent number, so it usually has none: its callers name them instead. One query
    (:meth:`~flask_polysms.ports.store.Store.sender_user_numbers`), whatever the project's size.
    """
    numbers, truncated = state.store.sender_user_numbers(
        sender.project_id, sender.address, MAX_SESSIONS_SCANNED
    )
    return countries_of(numbers), truncated


def countries_of(numbers: Iterable[str]) -> list[str]:
    """The countries (ISO 3166 alpha-2, sorted) of ``numbers``, as
    :func:`~flask_polysms.phone.region_of` gives them; numbers without one are left out.

    Numbers are grouped by the prefix that decides their country (the country code where one
    country uses it, ``+1`` and the area code in North America) and each group is asked once, by
    its first number that has a country: parsing thousands of numbers one by one cost more than
    the query that read them. Numbers of the other shared country codes are asked one by one.
    """
    found: set[str] = set()
    groups: dict[str, list[str]] = {}
    for number in numbers:
        prefix = _deciding_prefix(number)
        if prefix is not None:
            groups.setdefault(prefix, []).append(number)
            continue
        country = region_of(number)
        if country:
            found.add(country)
    for members in groups.values():
        for number in members:
            country = region_of(number)
            if country:
                found.add(country)
                break
    return sorted(found)


def _deciding_prefix(number: str) -> str | None:
    """The start of an E.164 number that decides its country, when a shorter one than the whole
    number does: the country code when one country uses it, ``+1`` and the area code in North
    America; None otherwise."""
    if not number.startswith("+"):
        return None
    # Country codes are prefix-free: the first 1, 2 or 3 digits that are one are the number's.
    for length in (1, 2, 3):
        digits = number[1 : 1 + length]
        if not (digits.isascii() and digits.isdigit()):
            return None
        regions = COUNTRY_CODE_TO_REGION_CODE.get(int(digits))
        if regions is None:
            continue
        if len(regions) == 1:
            return number[: 1 + length]
        if digits == "1" and len(number) == 12:
            return number[:5]
        return None
    return None


def sender_compliance(
    state: PolySMSState, sender: Sender, destinations: Iterable[str] | None = None
) -> dict[str, Any]:
    """The compliance report of one sender (``sender_facts.compliance_report``) plus its context.

    The destination countries are ``destinations`` when given (upper-cased; an empty list checks
    none), else those of the users it has talked to. Added keys: ``environment``,
    ``guard_enabled`` (whether the project's send-time guard runs), ``destinations_source``
    (``"request"`` or ``"sessions"``) and ``destinations_truncated`` (the session scan stopped
    early, so older users' countries may be missing).
    """
    if destinations is None:
        countries, truncated = destination_countries(state, sender)
        source = DESTINATIONS_FROM_SESSIONS
    else:
        countries = [c.strip().upper() for c in destinations if c and c.strip()]
        truncated, source = False, DESTINATIONS_FROM_REQUEST
    report = compliance_report(sender, countries)
    project = state.store.get_project(sender.project_id)
    enabled = guard_enabled(state, project) if project is not None else state.settings.sender_guard
    report.update(
        environment=sender.environment,
        guard_enabled=bool(enabled),
        destinations_source=source,
        destinations_truncated=truncated,
    )
    return report


def project_compliance(state: PolySMSState, project_id: str) -> list[dict[str, Any]]:
    """The compliance report of every sender of a project, oldest sender first, each with its
    ``project_id``. Raises NotFoundError for an unknown project."""
    if state.store.get_project(project_id) is None:
        raise NotFoundError(f"no project {project_id!r}")
    return [
        {"project_id": project_id, **sender_compliance(state, sender)}
        for sender in state.store.list_senders(project_id)
    ]


def _needs_campaign(sender: Sender) -> bool:
    report = compliance_report(sender)
    return required_registration(report["country"], report["number_type"]) == REQ_A2P_10DLC
