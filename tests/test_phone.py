"""Strict E.164, Messaging Service SIDs and regions (flask_polysms.phone)."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_polysms.phone import (
    E164_PATTERN,
    MESSAGING_SERVICE_SID_PATTERN,
    is_e164,
    is_messaging_service_sid,
    is_sender_address,
    region_of,
    validate_e164,
)

# Numbers phonenumbers 9 accepts as valid, with their region. +14155550100 is the project's demo
# number: 555-01XX is reserved for fiction, but phonenumbers counts it as a valid US number.
VALID = [
    ("+14155550100", "US"),
    ("+14155552671", "US"),
    ("+447400123456", "GB"),
    ("+447911123456", "GG"),  # a Guernsey mobile range inside +44: the region is not just "GB"
    ("+61491570156", "AU"),
    ("+33612345678", "FR"),
    ("+4915112345678", "DE"),
    ("+17875550123", "PR"),  # NANP: shares +1 with the US, is its own region
    ("+16135550123", "CA"),
]

NOT_E164 = [
    "",
    "+",
    "+1",
    "+1 415",
    "+1 415 555 2671",
    "+1 (415) 555-2671",  # phonenumbers parses this; E.164 is written without punctuation
    "+1-415-555-2671",
    "14155552671",  # no "+"
    "0014155552671",
    "+014155552671",  # country codes never start with 0
    "+1415555267",  # one digit short: well formed, not a valid number
    "+141555526710",  # one digit long
    "+447700900123",  # Ofcom's drama range: well formed, not a valid number for phonenumbers
    "+1234567890123456",  # 16 digits
    " +14155552671",
    "+14155552671 ",
    "+14155552671\n",  # "$" alone would accept a trailing newline
    "+1４155552671",  # a full-width digit
    "+1٤١٥٥٥٥٢٦٧١",  # Arabic-Indic digits match Python's \d, not E.164
    "tel:+14155552671",
]

SID = "MG" + "0123456789abcdef" * 2


@pytest.mark.parametrize(("number", "region"), VALID)
def test_valid_numbers(number: str, region: str) -> None:
    assert is_e164(number)
    assert validate_e164(number) == number
    assert region_of(number) == region
    assert is_sender_address(number)


def test_demo_number_is_valid() -> None:
    # The demo and the test helpers provision +14155550100 by default: it must pass validation.
    assert is_e164("+14155550100")


# Written in E.164 (a "+" and up to 15 digits) but no valid number: said so, not "not E.164".
SHAPED_BUT_INVALID = {"+1415555267", "+141555526710", "+447700900123", "+19999999999"}


@pytest.mark.parametrize("value", [*NOT_E164, "+19999999999"])
def test_not_e164(value: str) -> None:
    assert not is_e164(value)
    assert region_of(value) is None
    assert not is_sender_address(value)
    if value in SHAPED_BUT_INVALID:
        with pytest.raises(ValueError, match="is written in E.164 but is not a valid phone number"):
            validate_e164(value)
    else:
        with pytest.raises(ValueError, match="is not an E.164 phone number such as \\+14155550100"):
            validate_e164(value)


@pytest.mark.parametrize("value", [None, 14155552671, 1.5, b"+14155552671", ["+14155552671"]])
def test_non_strings_are_rejected_without_type_errors(value: object) -> None:
    assert not is_e164(value)
    assert not is_messaging_service_sid(value)
    assert not is_sender_address(value)
    assert region_of(value) is None
    with pytest.raises(ValueError):
        validate_e164(value)


def test_validate_message_is_human() -> None:
    with pytest.raises(ValueError) as excinfo:
        validate_e164("+1 415")
    assert str(excinfo.value) == "'+1 415' is not an E.164 phone number such as +14155550100"


def test_validate_message_cuts_long_values() -> None:
    with pytest.raises(ValueError) as excinfo:
        validate_e164("x" * 10_000)
    assert len(str(excinfo.value)) < 120


def test_patterns_are_the_documented_strings() -> None:
    assert E164_PATTERN == r"^\+[1-9]\d{1,14}$"
    assert MESSAGING_SERVICE_SID_PATTERN == r"^MG[0-9a-fA-F]{32}$"


def test_non_geographic_numbers_have_no_region() -> None:
    # +800 (international freephone) is valid, but phonenumbers' region "001" is not ISO alpha-2.
    assert is_e164("+80012345678")
    assert region_of("+80012345678") is None


@pytest.mark.parametrize("sid", [SID, "MG" + "A" * 32, "MG" + "0" * 32])
def test_messaging_service_sids(sid: str) -> None:
    assert is_messaging_service_sid(sid)
    assert is_sender_address(sid)
    assert not is_e164(sid)
    assert region_of(sid) is None


@pytest.mark.parametrize(
    "value",
    [
        "MG" + "0" * 31,
        "MG" + "0" * 33,
        "mg" + "0" * 32,
        "MG" + "g" * 32,
        "PN" + "0" * 32,
        SID + "\n",
        " " + SID,
        "MG" + "０" * 32,  # full-width digits
        "",
    ],
)
def test_not_messaging_service_sids(value: str) -> None:
    assert not is_messaging_service_sid(value)
    assert not is_sender_address(value)


# Every example number phonenumbers ships, for every region and common type.
_EXAMPLES = sorted(
    {
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        for region in phonenumbers.SUPPORTED_REGIONS
        for kind in (
            phonenumbers.PhoneNumberType.MOBILE,
            phonenumbers.PhoneNumberType.FIXED_LINE,
            phonenumbers.PhoneNumberType.TOLL_FREE,
        )
        if (number := phonenumbers.example_number_for_type(region, kind)) is not None
    }
)


@given(st.sampled_from(_EXAMPLES))
def test_example_numbers_are_e164_with_a_region_of_their_country_code(number: str) -> None:
    assert is_e164(number)
    assert validate_e164(number) == number
    parsed = phonenumbers.parse(number, None)
    # Regions sharing a country code share ranges (toll-free +1800 is "US" for Canada's example).
    assert region_of(number) in phonenumbers.region_codes_for_country_code(parsed.country_code)


@given(st.sampled_from(_EXAMPLES), st.sampled_from(["INTERNATIONAL", "NATIONAL", "RFC3966"]))
def test_other_formats_of_valid_numbers_are_not_e164(number: str, fmt: str) -> None:
    parsed = phonenumbers.parse(number, None)
    written = phonenumbers.format_number(parsed, getattr(phonenumbers.PhoneNumberFormat, fmt))
    if written != number:
        assert not is_e164(written)


@given(st.sampled_from(_EXAMPLES), st.data())
def test_any_character_inserted_breaks_e164(number: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(number)))
    extra = data.draw(st.characters().filter(lambda c: not c.isascii() or not c.isdigit()))
    assert not is_e164(number[:at] + extra + number[at:])


@given(st.one_of(st.text(), st.text(alphabet="+0123456789 -()", max_size=20)))
def test_is_e164_never_raises_and_agrees_with_validate(value: str) -> None:
    if is_e164(value):
        assert validate_e164(value) == value
        assert value.startswith("+") and value[1:].isascii() and value[1:].isdigit()
    else:
        with pytest.raises(ValueError):
            validate_e164(value)
