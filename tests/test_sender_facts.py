"""Sender compliance facts: number classification, the country table, the required registration,
the send-time guard, expected throughput and recipient warnings."""

from __future__ import annotations

import pytest
from sender_facts_support import (
    AS_LONG,
    CA_LONG,
    COUNTRIES,
    EXPECTED_ROWS,
    GB_LONG,
    GB_TOLL_FREE,
    GU_LONG,
    MG_SID,
    PR_LONG,
    US_LONG,
    US_TOLL_FREE,
    VI_LONG,
    make_sender,
)

from flask_polysms.services import sender_facts as sf

# --- describe_address -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, country",
    [
        (US_LONG, "US"),
        (CA_LONG, "CA"),
        (GB_LONG, "GB"),
        ("+4915123456789", "DE"),
        ("+33612345678", "FR"),
        ("+353850123456", "IE"),
        ("+31612345678", "NL"),
        ("+393123456789", "IT"),
        ("+420601123456", "CZ"),
        ("+385921234567", "HR"),
        ("+35943012345", "BG"),
        ("+421912123456", "SK"),
        # Fixed lines are long codes too.
        ("+441212345678", "GB"),
        ("+4930123456", "DE"),
        # The 10DLC territories are their own regions for phonenumbers.
        (PR_LONG, "PR"),
        (VI_LONG, "VI"),
        (GU_LONG, "GU"),
        (AS_LONG, "AS"),
    ],
)
def test_mobile_and_fixed_line_numbers_are_long_codes_of_their_country(address, country):
    assert sf.describe_address(address) == {
        "kind": "number",
        "country": country,
        "number_type": sf.LONG_CODE,
    }


@pytest.mark.parametrize(
    "address, country",
    [
        (US_TOLL_FREE, "US"),
        ("+18885550100", "US"),
        # A Canadian toll-free number is a North American one: phonenumbers says "US".
        ("+18002123456", "US"),
        (GB_TOLL_FREE, "GB"),
        ("+39800123456", "IT"),
    ],
)
def test_toll_free_numbers_are_toll_free(address, country):
    assert sf.describe_address(address) == {
        "kind": "number",
        "country": country,
        "number_type": sf.TOLL_FREE,
    }


@pytest.mark.parametrize("code", ["12345", "123456"])
def test_five_and_six_digit_codes_are_short_codes_of_unknown_country(code):
    assert sf.describe_address(code) == {
        "kind": "number",
        "country": None,
        "number_type": sf.SHORT_CODE,
    }


def test_messaging_service_sid_is_a_messaging_service_without_country():
    assert sf.describe_address(MG_SID) == {
        "kind": "messaging_service",
        "country": None,
        "number_type": sf.MESSAGING_SERVICE,
    }
    assert sf.describe_address("MG" + "ABCDEF0123456789" * 2)["kind"] == "messaging_service"


@pytest.mark.parametrize("address", ["+10005550100", "+12005550100", "+4402071234567"])
def test_invalid_or_non_canonical_numbers_are_unknown_not_guessed(address):
    assert sf.describe_address(address) == {"kind": "number", "country": None, "number_type": None}


def test_premium_rate_number_is_not_a_long_code():
    assert sf.describe_address("+449012345678") == {
        "kind": "number",
        "country": "GB",
        "number_type": None,
    }


@pytest.mark.parametrize(
    "address",
    ["", "4155550100", "+1 415 555 0100", "1234", "1234567", "MG123", "mg" + "0" * 32, "ACME"],
)
def test_anything_else_is_rejected(address):
    with pytest.raises(ValueError):
        sf.describe_address(address)


# --- the country table ----------------------------------------------------------------------------


def _triple(rule):
    return (rule["allowed"], rule["registration"], rule["throughput_mps"])


def test_table_names_its_source_and_date_and_holds_exactly_the_products_countries():
    table = sf.load_countries()
    assert "twilio.com/en-us/guidelines" in table["_source"]
    assert table["_date"] == "2026-11"
    assert sorted(table["countries"]) == sorted(COUNTRIES)


@pytest.mark.parametrize("iso2", COUNTRIES)
def test_country_row(iso2):
    name, two_way, long_code, toll_free, short_code = EXPECTED_ROWS[iso2]
    row = sf.country_rules(iso2)
    assert row["name"] == name
    assert row["two_way"] is two_way
    assert sf.two_way_supported(iso2) is two_way
    types = row["sender_types"]
    assert set(types) == {"long_code", "toll_free", "short_code", "alphanumeric"}
    assert _triple(types["long_code"]) == long_code
    assert _triple(types["toll_free"]) == toll_free
    assert _triple(types["short_code"]) == short_code


@pytest.mark.parametrize("iso2", COUNTRIES)
def test_every_value_in_a_row_is_from_the_documented_vocabulary(iso2):
    allowed_registrations = {
        "a2p_10dlc",
        "toll_free_verification",
        "short_code_application",
        "sender_id_registration",
        "none",
        None,
    }
    for rule in sf.country_rules(iso2)["sender_types"].values():
        assert rule["allowed"] in (True, False, None)
        assert rule["registration"] in allowed_registrations
        assert rule["throughput_mps"] is None or rule["throughput_mps"] > 0
        # A sender type that is not offered has nothing to register and no throughput.
        if rule["allowed"] is False:
            assert rule["registration"] is None and rule["throughput_mps"] is None


def test_toll_free_is_an_sms_sender_in_the_us_and_canada_only():
    offering = {
        iso2 for iso2 in COUNTRIES if sf.country_rules(iso2)["sender_types"]["toll_free"]["allowed"]
    }
    assert offering == {"US", "CA"}


@pytest.mark.parametrize("iso2", ["JP", "ZZ", "PR", "", None])
def test_unknown_countries_are_unknown_never_guessed(iso2):
    assert sf.country_rules(iso2) is None
    assert sf.two_way_supported(iso2) is None


def test_lookup_ignores_case():
    assert sf.country_rules("gb")["name"] == "United Kingdom"


def test_callers_get_copies_of_the_table():
    sf.load_countries()["countries"]["US"]["two_way"] = False
    sf.country_rules("US")["sender_types"]["long_code"]["throughput_mps"] = 0
    assert sf.two_way_supported("US") is True
    assert sf.country_rules("US")["sender_types"]["long_code"]["throughput_mps"] == 225


# --- required_registration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "country, number_type, expected",
    [
        ("US", sf.LONG_CODE, "a2p_10dlc"),
        ("PR", sf.LONG_CODE, "a2p_10dlc"),
        ("VI", sf.LONG_CODE, "a2p_10dlc"),
        ("GU", sf.LONG_CODE, "a2p_10dlc"),
        ("AS", sf.LONG_CODE, "a2p_10dlc"),
        ("us", "mobile", "a2p_10dlc"),
        # Boundary: A2P 10DLC is a US programme; Canadian long codes have nothing to register.
        ("CA", sf.LONG_CODE, "none"),
        ("US", sf.TOLL_FREE, "toll_free_verification"),
        ("CA", sf.TOLL_FREE, "toll_free_verification"),
        ("US", sf.SHORT_CODE, "short_code_application"),
        ("GB", sf.LONG_CODE, "none"),
        ("CZ", sf.LONG_CODE, "none"),
        # Unknown: not offered, a null in the table, a country outside it, or no facts at all.
        ("GB", sf.TOLL_FREE, None),
        ("FR", sf.LONG_CODE, None),
        ("IT", sf.LONG_CODE, None),
        ("JP", sf.LONG_CODE, None),
        (None, sf.LONG_CODE, None),
        ("US", None, None),
        ("US", sf.MESSAGING_SERVICE, None),
    ],
)
def test_required_registration(country, number_type, expected):
    assert sf.required_registration(country, number_type) == expected


# --- the send-time guard --------------------------------------------------------------------------

GUARD_SENDERS = {
    "us_long": {"address": US_LONG},
    "pr_long": {"address": PR_LONG},
    "vi_long": {"address": VI_LONG},
    "gu_long": {"address": GU_LONG},
    "as_long": {"address": AS_LONG},
    "ca_long": {"address": CA_LONG},
    "us_toll_free": {"address": US_TOLL_FREE},
    # Recorded as Canadian: the toll-free rule covers both countries.
    "ca_toll_free": {"address": "+18002123456", "country": "CA", "number_type": sf.TOLL_FREE},
    "gb_toll_free": {"address": GB_TOLL_FREE},
    "gb_long": {"address": GB_LONG},
    "us_short_code": {"address": "12345", "country": "US"},
    "messaging_service": {"address": MG_SID, "kind": "messaging_service"},
}
# Exactly these combinations block: every other (sender, state) pair sends.
BLOCKED = {
    ("us_long", sf.NOT_REGISTERED),
    ("pr_long", sf.NOT_REGISTERED),
    ("vi_long", sf.NOT_REGISTERED),
    ("gu_long", sf.NOT_REGISTERED),
    ("as_long", sf.NOT_REGISTERED),
    ("us_toll_free", sf.NOT_VERIFIED),
    ("ca_toll_free", sf.NOT_VERIFIED),
}


@pytest.mark.parametrize("state", sf.REGISTRATION_STATES)
@pytest.mark.parametrize("name", sorted(GUARD_SENDERS))
def test_guard_blocks_exactly_unregistered_10dlc_and_unverified_toll_free(name, state):
    sender = make_sender(registration=state, **GUARD_SENDERS[name])
    error = sf.guard_error(sender)
    assert (error is not None) == ((name, state) in BLOCKED)
    assert sf.compliance_report(sender)["blocked"] == ((name, state) in BLOCKED)


def test_guard_error_for_a_long_code_names_10dlc_and_the_way_out():
    error = sf.guard_error(make_sender(US_LONG, registration=sf.NOT_REGISTERED))
    assert US_LONG in error
    assert "A2P 10DLC" in error
    assert "block" in error
    assert f"flask polysms set-registration {US_LONG} registered --campaign-id" in error


def test_guard_error_for_toll_free_names_verification_and_the_way_out():
    error = sf.guard_error(make_sender(US_TOLL_FREE, registration=sf.NOT_VERIFIED))
    assert US_TOLL_FREE in error
    assert "toll-free verification" in error
    assert "not verified" in error
    assert f"flask polysms set-registration {US_TOLL_FREE} verified" in error


def test_guard_derives_missing_facts_from_the_number():
    sender = make_sender(US_LONG, registration=sf.NOT_REGISTERED, country=None, number_type=None)
    assert sf.guard_error(sender) is not None


def test_guard_trusts_the_recorded_facts():
    # The Store's record says Canadian: the 10DLC rule does not apply to it.
    sender = make_sender(
        US_LONG, registration=sf.NOT_REGISTERED, country="CA", number_type=sf.LONG_CODE
    )
    assert sf.guard_error(sender) is None


def test_unknown_state_is_the_default_and_sends():
    sender = make_sender(US_LONG)
    assert sender.registration == sf.UNKNOWN
    assert sf.guard_error(sender) is None


# --- throughput -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, mps",
    [
        ({"address": US_LONG, "registration": sf.REGISTERED, "campaign_id": "CM1"}, 225),
        ({"address": US_LONG}, 1),
        ({"address": US_LONG, "registration": sf.NOT_REGISTERED}, 0),
        ({"address": PR_LONG, "registration": sf.REGISTERED, "campaign_id": "CM1"}, 225),
        ({"address": PR_LONG}, 1),
        ({"address": US_TOLL_FREE, "registration": sf.VERIFIED}, 3),
        ({"address": US_TOLL_FREE}, 3),
        ({"address": US_TOLL_FREE, "registration": sf.NOT_VERIFIED}, 0),
        ({"address": "12345", "country": "US"}, 100),
        ({"address": "123456", "country": "CA"}, 100),
        ({"address": "12345", "country": "GB"}, 300),
        ({"address": "12345", "country": "DE"}, None),
        ({"address": "12345"}, None),
        ({"address": CA_LONG}, 1),
        ({"address": CA_LONG, "registration": sf.NOT_REGISTERED}, 1),
        ({"address": GB_LONG}, 10),
        ({"address": "+4915123456789"}, 10),
        ({"address": "+33612345678"}, 10),
        ({"address": "+420601123456"}, 10),
        ({"address": GB_TOLL_FREE}, 0),
        ({"address": "+385921234567"}, 0),
        ({"address": "+819012345678"}, None),
        ({"address": MG_SID, "kind": "messaging_service"}, None),
    ],
)
def test_expected_throughput(fields, mps):
    throughput = sf.expected_throughput(make_sender(**fields))
    assert throughput["mps"] == mps
    assert throughput["note"]


def test_unknown_10dlc_throughput_says_what_registration_changes():
    note = sf.expected_throughput(make_sender(US_LONG))["note"]
    assert "225" in note and "registered" in note


# --- recipients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("to_number", ["+385921234567", "+35943012345", "+421912123456"])
def test_recipient_without_two_way_sms_gets_a_warning(to_number):
    warning = sf.recipient_warning(to_number)
    assert "replies will not come back" in warning


@pytest.mark.parametrize(
    "to_number",
    [US_LONG, CA_LONG, GB_LONG, "+393123456789", "+819012345678", "+10005550100", "not a number"],
)
def test_recipient_in_a_two_way_or_unknown_country_gets_no_send_time_warning(to_number):
    assert sf.recipient_warning(to_number) is None
