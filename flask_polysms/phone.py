"""Phone numbers and sender addresses: strict E.164 and Twilio Messaging Service SIDs.

Everything here is pure: no Flask, no I/O. ``phonenumbers`` decides whether a number exists in the
numbering plan; the regular expression decides whether it is *written* in E.164, because
``phonenumbers.parse`` is lenient (it accepts spaces, dashes, brackets and non-ASCII digits).
"""

from __future__ import annotations

import functools
import re

import phonenumbers

#: E.164 as written on the wire: ``+``, a non-zero country-code digit, at most 15 digits in all.
#: Exported as a string so schemas and the OpenAPI document can reuse it verbatim. To check a
#: value use :func:`is_e164`, which also matches it ASCII-only and asks ``phonenumbers`` whether
#: the number exists.
E164_PATTERN = r"^\+[1-9]\d{1,14}$"

#: A Twilio Messaging Service SID: ``MG`` and 32 hexadecimal digits.
MESSAGING_SERVICE_SID_PATTERN = r"^MG[0-9a-fA-F]{32}$"

# re.ASCII: in Python ``\d`` also matches Arabic-Indic and other Unicode digits, which Twilio does
# not accept. fullmatch: ``$`` alone also matches before a trailing newline.
_E164_RE = re.compile(E164_PATTERN, re.ASCII)
_MESSAGING_SERVICE_SID_RE = re.compile(MESSAGING_SERVICE_SID_PATTERN, re.ASCII)

_EXAMPLE_NUMBER = "+14155550100"
# Long input is cut in error messages so a pasted paragraph does not end up in logs and responses.
_MAX_SHOWN = 40


def _parse_strict(value: object) -> phonenumbers.PhoneNumber | None:
    """The parsed number when ``value`` is a valid number written exactly in E.164, else None."""
    return _parse_e164(value)[0] if is_e164_shaped(value) else None


# A request checks the same number several times (the schema, the sender rules, the region), and
# parsing is the costly part of each check; callers only read the parsed number.
@functools.lru_cache(maxsize=4096)
def _parse_e164(value: str) -> tuple[phonenumbers.PhoneNumber | None, str | None]:
    """(the parsed number, its region as ``phonenumbers`` names it) when valid, else (None, None).

    The region is found once: ``phonenumbers.is_valid_number`` is exactly this region lookup
    followed by ``is_valid_number_for_region``, and the lookup (which tries every region sharing
    the country code) is the costly half.
    """
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None, None
    region = phonenumbers.region_code_for_number(number)
    if not phonenumbers.is_valid_number_for_region(number, region):
        return None, None
    # The round trip rejects anything phonenumbers had to reinterpret (e.g. extra leading digits).
    if phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) != value:
        return None, None
    return number, region


def is_e164_shaped(value: object) -> bool:
    """True when ``value`` is a string of E.164's shape (``+`` and up to 15 digits), valid number
    or not: a cheap filter for input checked in full elsewhere."""
    return isinstance(value, str) and _E164_RE.fullmatch(value) is not None


def is_e164(value: object) -> bool:
    """True when ``value`` is a string written exactly in E.164 (``+14155552671``) for a number that
    ``phonenumbers`` considers valid. Any other value, of any type, gives False; never raises."""
    return _parse_strict(value) is not None


def validate_e164(value: object) -> str:
    """Return ``value`` unchanged when :func:`is_e164` accepts it.

    Raises ``ValueError`` with a message fit to show a user otherwise, e.g.
    ``'+1 415' is not an E.164 phone number such as +14155550100``.
    """
    if isinstance(value, str) and is_e164(value):
        return value
    shown = repr(value)
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 1] + "…"
    if is_e164_shaped(value):
        # Written as E.164, but no number of any numbering plan: say that, not "not E.164".
        raise ValueError(
            f"{shown} is written in E.164 but is not a valid phone number "
            "(no such number in its country's numbering plan)"
        )
    raise ValueError(f"{shown} is not an E.164 phone number such as {_EXAMPLE_NUMBER}")


def is_messaging_service_sid(value: object) -> bool:
    """True when ``value`` is a string of the form ``MG`` + 32 hexadecimal digits; never raises."""
    return isinstance(value, str) and _MESSAGING_SERVICE_SID_RE.fullmatch(value) is not None


def is_sender_address(value: object) -> bool:
    """True when ``value`` can be a sender: a valid E.164 number or a Messaging Service SID."""
    return is_e164(value) or is_messaging_service_sid(value)


def region_of(number: object) -> str | None:
    """The ISO 3166-1 alpha-2 region of a valid E.164 number (``"US"``, ``"GB"``, ``"PR"``…).

    None when ``number`` is not accepted by :func:`is_e164`, and also for valid non-geographic
    numbers (``+800`` freephone, ``+882`` networks), for which ``phonenumbers`` answers ``"001"``,
    which is not a region. Numbers sharing a country code are told apart: ``+1787…`` is ``"PR"``,
    not ``"US"``.
    """
    if not is_e164_shaped(number):
        return None
    region = _parse_e164(number)[1]
    if region is None or not (len(region) == 2 and region.isascii() and region.isalpha()):
        return None
    return region
