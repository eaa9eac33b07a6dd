"""Sender compliance: what a sender is, what it needs, and what the send-time guard blocks.

Facts about a sender (country, number type) come from the number itself, through ``phonenumbers``;
the rules per country come from the table shipped in ``data/countries.json`` (its source and date
are in the file). A country or a value the table does not hold is reported as unknown, never
guessed.

The send-time guard blocks exactly two cases, the ones where carriers drop every message:

- a long code of the US A2P 10DLC area (US, PR, VI, GU, AS) recorded as ``not_registered``;
- a North American (US/CA) toll-free number recorded as ``not_verified``.

A sender whose state is ``unknown`` (the default) is never blocked: the compliance report flags it.

Canada is deliberately outside the 10DLC rule. The product page says "US and Canadian numbers need
A2P 10DLC", but A2P 10DLC is a US carrier programme (The Campaign Registry registers brands and
campaigns for US long codes only): a Canadian long code cannot be registered for it, so blocking a
Canadian long code as "not registered" would block a sender that has nothing it could register.
Canadian toll-free numbers are inside the toll-free rule: North American toll-free numbers are
shared by both countries and carriers in both block unverified toll-free SMS.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

import phonenumbers
from phonenumbers import PhoneNumberType

from flask_polysms.records import Sender

# Registration states recorded on a sender (Sender.registration).
UNKNOWN = "unknown"  # the default: nobody has told us
REGISTERED = "registered"  # A2P 10DLC campaign registered; Sender.campaign_id holds its id
NOT_REGISTERED = "not_registered"  # a US long code known to have no 10DLC campaign
VERIFIED = "verified"  # toll-free verification approved
NOT_VERIFIED = "not_verified"  # toll-free number restricted, pending or rejected
NOT_REQUIRED = "not_required"  # the sender needs no registration
REGISTRATION_STATES = (UNKNOWN, REGISTERED, NOT_REGISTERED, VERIFIED, NOT_VERIFIED, NOT_REQUIRED)

# Sender kinds (Sender.kind) and number types (Sender.number_type).
KIND_NUMBER = "number"
KIND_MESSAGING_SERVICE = "messaging_service"
LONG_CODE = "long_code"
TOLL_FREE = "toll_free"
SHORT_CODE = "short_code"
MESSAGING_SERVICE = "messaging_service"
NUMBER_TYPES = (LONG_CODE, TOLL_FREE, SHORT_CODE, MESSAGING_SERVICE)

# Requirements, as the country table names them ("registration" of a sender type).
REQ_A2P_10DLC = "a2p_10dlc"
REQ_TOLL_FREE_VERIFICATION = "toll_free_verification"
REQ_SHORT_CODE_APPLICATION = "short_code_application"
REQ_SENDER_ID_REGISTRATION = "sender_id_registration"
REQ_NONE = "none"

REQUIREMENT_TEXT = {
    REQ_A2P_10DLC: "A2P 10DLC registration (brand and campaign)",
    REQ_TOLL_FREE_VERIFICATION: "toll-free verification",
    REQ_SHORT_CODE_APPLICATION: "short code application",
    REQ_SENDER_ID_REGISTRATION: "sender ID registration",
}

# The recorded states that mean something for each requirement; any other state recorded on such a
# sender is a mistake worth a warning (a Canadian long code marked "not_registered", say).
_APPLICABLE_STATES = {
    REQ_A2P_10DLC: {REGISTERED, NOT_REGISTERED},
    REQ_TOLL_FREE_VERIFICATION: {VERIFIED, NOT_VERIFIED},
    REQ_SHORT_CODE_APPLICATION: {REGISTERED, NOT_REQUIRED},
    REQ_SENDER_ID_REGISTRATION: {REGISTERED, NOT_REGISTERED},
    REQ_NONE: {NOT_REQUIRED},
}
# The states that satisfy a requirement. A short code is approved before Twilio provisions it, so a
# provisioned short code has already met its requirement whatever was recorded.
_SATISFIED_BY = {
    REQ_A2P_10DLC: {REGISTERED},
    REQ_TOLL_FREE_VERIFICATION: {VERIFIED},
    REQ_SENDER_ID_REGISTRATION: {REGISTERED},
}

# The A2P 10DLC area: US long codes and those of the territories on the US carriers' networks.
# Canada is not in it: see the module docstring.
TEN_DLC_REGIONS = frozenset({"US", "PR", "VI", "GU", "AS"})
# Where toll-free numbers are SMS senders, and need verification. phonenumbers reports every
# North American toll-free number as "US": both are listed because a record may say "CA".
TOLL_FREE_VERIFICATION_REGIONS = frozenset({"US", "CA"})

# Twilio queues a US/CA long code at 1 MPS until a 10DLC campaign raises it.
UNREGISTERED_LONG_CODE_MPS = 1

# Used with fullmatch ($ alone also matches before a trailing newline); ASCII: \d would take
# any script's digits.
_MESSAGING_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
_E164 = re.compile(r"^\+[1-9]\d{1,14}$", re.ASCII)
_SHORT_CODE = re.compile(r"^\d{5,6}$", re.ASCII)

# Number types that Twilio calls long codes: full-length numbers that are not toll-free. VoIP,
# personal and UAN numbers are included because Twilio sells SMS-capable numbers in such ranges in
# some countries; premium-rate, shared-cost, pager and voicemail ranges are not SMS senders.
_LONG_CODE_TYPES = frozenset(
    {
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
        PhoneNumberType.VOIP,
        PhoneNumberType.PERSONAL_NUMBER,
        PhoneNumberType.UAN,
    }
)
# Older records may name a long code by its phonenumbers type (records.py mentions "mobile").
_NUMBER_TYPE_ALIASES = {"mobile": LONG_CODE, "fixed_line": LONG_CODE, "local": LONG_CODE}

_TYPE_LABEL = {
    LONG_CODE: "long code",
    TOLL_FREE: "toll-free number",
    SHORT_CODE: "short code",
    MESSAGING_SERVICE: "Messaging Service",
}


def describe_address(address: str) -> dict[str, Any]:
    """Derive what a sender address is, from the address alone.

    Returns ``{"kind", "country", "number_type"}``:

    - a Messaging Service SID (``MG`` + 32 hex digits): kind ``messaging_service``, country None,
      number type ``messaging_service``;
    - a 5-6 digit code: kind ``number``, number type ``short_code``, country None (the code alone
      does not say which country provisioned it);
    - an E.164 number: kind ``number``, country its ISO 3166 alpha-2 region and number type
      ``toll_free`` or ``long_code`` as ``phonenumbers`` classifies it. A number that is not valid
      or not in canonical E.164 form gets None for both; one of a type that is not an SMS sender
      (premium rate, shared cost...) gets None for its type.

    Raises ValueError for anything else.
    """
    if _MESSAGING_SERVICE_SID.fullmatch(address):
        return {"kind": KIND_MESSAGING_SERVICE, "country": None, "number_type": MESSAGING_SERVICE}
    if _SHORT_CODE.fullmatch(address):
        return {"kind": KIND_NUMBER, "country": None, "number_type": SHORT_CODE}
    if not _E164.fullmatch(address):
        raise ValueError(
            f"{address!r} is not an E.164 number, a short code or a Messaging Service SID"
        )
    facts: dict[str, Any] = {"kind": KIND_NUMBER, "country": None, "number_type": None}
    try:
        number = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException:
        return facts
    canonical = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if canonical != address or not phonenumbers.is_valid_number(number):
        # Lenient parsing accepts "+440..." as a UK number; a sender address that is not the
        # canonical E.164 form, or not a valid number, gets no facts rather than a guessed one.
        return facts
    facts["country"] = phonenumbers.region_code_for_number(number)
    kind_of_number = phonenumbers.number_type(number)
    if kind_of_number == PhoneNumberType.TOLL_FREE:
        facts["number_type"] = TOLL_FREE
    elif kind_of_number in _LONG_CODE_TYPES:
        facts["number_type"] = LONG_CODE
    return facts


@functools.cache
def _load_table() -> dict[str, Any]:
    data = resources.files("flask_polysms") / "data" / "countries.json"
    return json.loads(data.read_text(encoding="utf-8"))


def load_countries() -> dict[str, Any]:
    """The whole country table (``_source``, ``_date``, ``countries``), read once per process.

    Each call returns a fresh copy: changing it never changes what the other functions see.
    """
    return copy.deepcopy(_load_table())


def country_rules(iso2: str | None) -> dict[str, Any] | None:
    """The table's row for a country (ISO 3166 alpha-2, any case), or None when it has none.

    None means unknown: callers must report it as such, never fall back to another country's row.
    """
    if not iso2:
        return None
    row = _load_table()["countries"].get(iso2.upper())
    return copy.deepcopy(row) if row is not None else None


def two_way_supported(iso2: str | None) -> bool | None:
    """Whether Twilio supports two-way SMS in a country: True, False, or None when unknown."""
    # Read in place (country_rules copies the row for callers that keep it).
    row = _load_table()["countries"].get(iso2.upper()) if iso2 else None
    return None if row is None else row.get("two_way")


def required_registration(country: str | None, number_type: str | None) -> str | None:
    """What a sender of this type in this country needs before carriers accept its traffic.

    Returns a requirement name (``a2p_10dlc``, ``toll_free_verification``,
    ``short_code_application``, ``sender_id_registration``), ``"none"`` when nothing is needed, or
    None when it is unknown (a country outside the table, an unknown type, a null in the table, or a
    Messaging Service, whose requirements are its numbers').
    """
    country = country.upper() if country else None
    number_type = _NUMBER_TYPE_ALIASES.get(number_type or "", number_type)
    # These two are rules, not table lookups, because they cover territories the table has no
    # row for (PR, VI, GU, AS) and must agree with the guard whatever the table says.
    if number_type == LONG_CODE and country in TEN_DLC_REGIONS:
        return REQ_A2P_10DLC
    if number_type == TOLL_FREE and country in TOLL_FREE_VERIFICATION_REGIONS:
        return REQ_TOLL_FREE_VERIFICATION
    rule = _sender_type_rule(country, number_type)
    return None if rule is None else rule.get("registration")


def guard_error(sender: Sender) -> str | None:
    """The error that must stop a send from this sender, or None when the guard lets it through.

    Blocks exactly: a long code of the US A2P 10DLC area (US, PR, VI, GU, AS) recorded as
    ``not_registered``, and a US/CA toll-free number recorded as ``not_verified``. Everything else,
    ``unknown`` states included, passes. Whether the project has turned the guard off is the
    caller's decision; this function only answers what the guard would say.
    """
    kind, country, number_type = _facts(sender)
    if kind != KIND_NUMBER:
        return None
    address = sender.address
    if (
        number_type == LONG_CODE
        and country in TEN_DLC_REGIONS
        and sender.registration == NOT_REGISTERED
    ):
        return (
            f"{address} is a {country} long code recorded as not registered for A2P 10DLC; US "
            "carriers block unregistered 10DLC traffic. Register a brand and campaign, then run "
            f"`flask polysms set-registration {address} registered --campaign-id CM...`."
        )
    if (
        number_type == TOLL_FREE
        and country in TOLL_FREE_VERIFICATION_REGIONS
        and sender.registration == NOT_VERIFIED
    ):
        return (
            f"{address} is a US/CA toll-free number recorded as not verified; US and Canadian "
            "carriers block SMS from unverified toll-free numbers (Twilio error 30032). Submit "
            "toll-free verification, then run "
            f"`flask polysms set-registration {address} verified`."
        )
    return None


def expected_throughput(sender: Sender) -> dict[str, Any]:
    """The messages per second to plan on for this sender in its recorded state.

    Returns ``{"mps", "note"}``; ``mps`` is None when unknown and 0 when carriers (or the guard)
    will not carry the traffic at all. An ``unknown`` state gets the sender's base rate before any
    registration raises it, with a note saying what registration would change.
    """
    kind, country, number_type = _facts(sender)
    if kind == KIND_MESSAGING_SERVICE:
        return {
            "mps": None,
            "note": "A Messaging Service sends at the sum of its senders' rates; its numbers are "
            "unknown here.",
        }
    if number_type is None:
        return {"mps": None, "note": "Unknown: the sender's number type is unknown."}
    label = _TYPE_LABEL.get(number_type, number_type)
    registration = sender.registration
    if number_type == LONG_CODE and country in TEN_DLC_REGIONS:
        registered_mps = _sender_type_rule("US", LONG_CODE)["throughput_mps"]
        if registration == REGISTERED:
            return {
                "mps": registered_mps,
                "note": f"Up to {registered_mps} MPS across US carriers (75 each) for a "
                "registered A2P 10DLC campaign; the brand's Trust Score and campaign type set the "
                "real figure.",
            }
        if registration == NOT_REGISTERED:
            return {"mps": 0, "note": "US carriers block unregistered A2P 10DLC traffic."}
        return {
            "mps": UNREGISTERED_LONG_CODE_MPS,
            "note": f"{UNREGISTERED_LONG_CODE_MPS} MPS until an A2P 10DLC campaign is registered "
            f"(then up to {registered_mps} MPS across carriers); carriers block the number "
            "entirely if it is in fact unregistered.",
        }
    if number_type == TOLL_FREE and country in TOLL_FREE_VERIFICATION_REGIONS:
        tf_mps = _sender_type_rule("US", TOLL_FREE)["throughput_mps"]
        if registration == NOT_VERIFIED:
            return {"mps": 0, "note": "Carriers block SMS from unverified toll-free numbers."}
        note = f"{tf_mps} segments per second by default."
        if registration != VERIFIED:
            note += " Carriers block the number entirely unless it is verified."
        return {"mps": tf_mps, "note": note}
    if country is None:
        return {"mps": None, "note": f"Unknown: the {label}'s country is unknown."}
    rule = _sender_type_rule(country, number_type)
    if rule is None:
        return {
            "mps": None,
            "note": f"Unknown: the country table has no {label} rules for {country}.",
        }
    if rule.get("allowed") is False:
        return {"mps": 0, "note": f"{country} {label}s are not SMS senders on Twilio."}
    if rule.get("throughput_mps") is None:
        return {"mps": None, "note": f"Unknown: no published throughput for {country} {label}s."}
    return {"mps": rule["throughput_mps"], "note": rule.get("note") or ""}


def recipient_warning(to_number: str) -> str | None:
    """The warning a send to this recipient deserves, or None.

    Only a recipient in a country known to lack two-way SMS gets one: replies will not come back.
    An unknown country gets None here (the compliance report flags it instead).
    """
    try:
        country = describe_address(to_number)["country"]
    except ValueError:
        return None
    if two_way_supported(country) is False:
        return (
            f"{to_number} is in {country}, where Twilio does not support two-way SMS: replies "
            "will not come back."
        )
    return None


def compliance_report(sender: Sender, destination_countries: Iterable[str] = ()) -> dict[str, Any]:
    """The pre-flight report for one sender and the countries it is used to reach.

    Keys: ``sender`` (its address), ``kind``, ``country``, ``number_type``, ``registration``,
    ``campaign_id``, ``missing`` (requirements not met, as text), ``throughput`` (``{"mps",
    "note"}``), ``problems`` (``{"severity": "error"|"warning", "message"}``), ``blocked`` (whether
    the send-time guard would block it) and ``destinations`` (one ``{"country", "two_way",
    "note"}`` per destination country). Unknowns are reported as warnings, never resolved by
    guessing; only a guard block or a sender type the country does not allow is an error.
    """
    kind, country, number_type = _facts(sender)
    registration = sender.registration
    missing: list[str] = []
    problems: list[dict[str, str]] = []

    def problem(severity: str, message: str) -> None:
        problems.append({"severity": severity, "message": message})

    block = guard_error(sender)
    if block:
        problem("error", block)

    if kind == KIND_MESSAGING_SERVICE:
        if registration == UNKNOWN:
            problem(
                "warning",
                f"{sender.address} is a Messaging Service: Twilio manages its numbers' compliance "
                "(an A2P 10DLC campaign is attached to the service, toll-free numbers are verified "
                "one by one), but its numbers are unknown here, so none of it can be checked. "
                "Record its registration once the service's campaign is approved.",
            )
    else:
        _check_number(sender, country, number_type, missing, problem)

    destinations = []
    seen: set[str] = set()
    for raw in destination_countries:
        dest = (raw or "").upper()
        if not dest or dest in seen:
            continue
        seen.add(dest)
        entry = _destination(dest)
        destinations.append(entry)
        if entry["two_way"] is not True:
            problem("warning", entry["note"])
        # Twilio: a short code reaches users of its own country's carriers only.
        if number_type == SHORT_CODE and country and dest != country:
            problem(
                "warning",
                f"{sender.address} is a {country} short code: it reaches {country} carriers' "
                f"users only, not recipients in {dest}.",
            )

    return {
        "sender": sender.address,
        "kind": kind,
        "country": country,
        "number_type": number_type,
        "registration": registration,
        "campaign_id": sender.campaign_id,
        "missing": missing,
        "throughput": expected_throughput(sender),
        "problems": problems,
        "blocked": block is not None,
        "destinations": destinations,
    }


def _check_number(
    sender: Sender,
    country: str | None,
    number_type: str | None,
    missing: list[str],
    problem: Callable[[str, str], None],
) -> None:
    """Add to ``missing`` and ``problems`` what a number (not a Messaging Service) lacks."""
    address, registration = sender.address, sender.registration
    if registration not in REGISTRATION_STATES:
        problem("warning", f"{address} has an unrecognised registration state {registration!r}.")
    if number_type is None:
        problem("warning", f"{address}: its number type is unknown, so no rule can be checked.")
        return
    if country is None:
        problem("warning", f"{address}: its country is unknown, so no rule can be checked.")
        return
    label = _TYPE_LABEL.get(number_type, number_type)

    rule = _sender_type_rule(country, number_type)
    if rule is None and required_registration(country, number_type) is None:
        # Outside the table and outside the two fixed rules (10DLC area, NANP toll-free).
        problem("warning", f"{country} is not in the country table: its rules are unknown.")
        return
    if rule is not None and rule.get("allowed") is False:
        reason = rule.get("note") or "not an SMS sender on Twilio."
        problem("error", f"{address} is a {country} {label}: {reason}")
        return
    if rule is not None and rule.get("allowed") is None:
        problem("warning", f"Unknown whether {country} {label}s are SMS senders on Twilio.")

    requirement = required_registration(country, number_type)
    if requirement is None:
        if registration not in (REGISTERED, VERIFIED, NOT_REQUIRED):
            problem(
                "warning",
                f"Unknown whether a {country} {label} needs a registration: check Twilio's "
                f"{country} guidelines and record the answer.",
            )
        return
    applicable = _APPLICABLE_STATES[requirement] | {UNKNOWN}
    if registration in REGISTRATION_STATES and registration not in applicable:
        needed = REQUIREMENT_TEXT.get(requirement, "no registration")
        problem(
            "warning",
            f"{address} is recorded as {registration!r}, which does not apply to a {country} "
            f"{label} (it needs {needed}).",
        )
    satisfied = _SATISFIED_BY.get(requirement)
    if satisfied is None or registration in satisfied:
        if requirement == REQ_A2P_10DLC and not sender.campaign_id:
            problem("warning", f"{address} is registered for A2P 10DLC but has no campaign id.")
        return
    missing.append(REQUIREMENT_TEXT[requirement])
    if registration == UNKNOWN:
        problem(
            "warning",
            f"{address} is a {country} {label} whose {REQUIREMENT_TEXT[requirement]} is unknown: "
            "it sends, but carriers block it if the requirement is unmet. Record its state with "
            f"`flask polysms set-registration {address} ...`.",
        )


def _destination(iso2: str) -> dict[str, Any]:
    row = country_rules(iso2)
    if row is None:
        return {
            "country": iso2,
            "two_way": None,
            "note": f"{iso2} is not in the country table: two-way SMS support is unknown.",
        }
    two_way = row.get("two_way")
    if two_way is True:
        note = f"Two-way SMS is supported in {row['name']}."
    elif two_way is False:
        note = (
            f"{row['name']} ({iso2}) has no two-way SMS through Twilio: replies will not come back."
        )
    else:
        note = f"Unknown whether two-way SMS works in {row['name']} ({iso2})."
    return {"country": iso2, "two_way": two_way, "note": note}


def _sender_type_rule(country: str | None, number_type: str | None) -> dict[str, Any] | None:
    if not country or not number_type:
        return None
    row = _load_table()["countries"].get(country.upper())
    if row is None:
        return None
    return row["sender_types"].get(number_type)


def _facts(sender: Sender) -> tuple[str, str | None, str | None]:
    """(kind, country, number type): the recorded facts, completed from the address when absent."""
    kind = sender.kind or KIND_NUMBER
    country = sender.country.upper() if sender.country else None
    number_type = _NUMBER_TYPE_ALIASES.get(sender.number_type or "", sender.number_type)
    if kind == KIND_MESSAGING_SERVICE or number_type == MESSAGING_SERVICE:
        return KIND_MESSAGING_SERVICE, None, MESSAGING_SERVICE
    if country is None or number_type is None:
        try:
            derived = describe_address(sender.address)
        except ValueError:
            derived = {"kind": kind, "country": None, "number_type": None}
        if derived["kind"] == KIND_MESSAGING_SERVICE:
            return KIND_MESSAGING_SERVICE, None, MESSAGING_SERVICE
        country = country or derived["country"]
        number_type = number_type or derived["number_type"]
    return kind, country, number_type
