"""The sender compliance report: its shape, what is missing, the problems it flags for each kind
of sender and country, and its destinations."""

from __future__ import annotations

import pytest
from sender_facts_support import (
    CA_LONG,
    COUNTRIES,
    EXPECTED_ROWS,
    GB_LONG,
    GB_TOLL_FREE,
    MG_SID,
    US_LONG,
    US_TOLL_FREE,
    make_sender,
)

from flask_polysms.services import sender_facts as sf

# --- the compliance report ------------------------------------------------------------------------

REPORT_KEYS = {
    "sender",
    "kind",
    "country",
    "number_type",
    "registration",
    "campaign_id",
    "missing",
    "throughput",
    "problems",
    "blocked",
    "destinations",
}


def _messages(report, severity=None):
    return [p["message"] for p in report["problems"] if severity in (None, p["severity"])]


def test_report_shape():
    report = sf.compliance_report(make_sender(US_LONG), ["GB"])
    assert set(report) == REPORT_KEYS
    assert report["sender"] == US_LONG
    assert (report["kind"], report["country"], report["number_type"]) == (
        "number",
        "US",
        sf.LONG_CODE,
    )
    assert set(report["throughput"]) == {"mps", "note"}
    assert all(p["severity"] in ("error", "warning") for p in report["problems"])
    assert set(report["destinations"][0]) == {"country", "two_way", "note"}


def test_us_long_code_of_unknown_state_is_flagged_not_blocked():
    report = sf.compliance_report(make_sender(US_LONG))
    assert report["blocked"] is False
    assert report["registration"] == sf.UNKNOWN
    assert report["missing"] == ["A2P 10DLC registration (brand and campaign)"]
    assert _messages(report, "error") == []
    (warning,) = _messages(report, "warning")
    assert "unknown" in warning and "A2P 10DLC" in warning


def test_registered_us_long_code_with_campaign_is_clean():
    sender = make_sender(US_LONG, registration=sf.REGISTERED, campaign_id="CM123")
    report = sf.compliance_report(sender)
    assert report["campaign_id"] == "CM123"
    assert report["missing"] == []
    assert report["problems"] == []
    assert report["throughput"]["mps"] == 225


def test_registered_us_long_code_without_campaign_id_is_warned():
    report = sf.compliance_report(make_sender(US_LONG, registration=sf.REGISTERED))
    assert report["missing"] == []
    assert any("campaign id" in m for m in _messages(report, "warning"))


def test_unregistered_us_long_code_report_carries_the_guard_error():
    sender = make_sender(US_LONG, registration=sf.NOT_REGISTERED)
    report = sf.compliance_report(sender)
    assert report["blocked"] is True
    assert _messages(report, "error") == [sf.guard_error(sender)]
    assert report["missing"] == ["A2P 10DLC registration (brand and campaign)"]
    assert report["throughput"]["mps"] == 0


def test_boundary_canadian_long_code_needs_no_10dlc():
    clean = sf.compliance_report(make_sender(CA_LONG))
    assert (clean["country"], clean["blocked"], clean["missing"], clean["problems"]) == (
        "CA",
        False,
        [],
        [],
    )
    marked = sf.compliance_report(make_sender(CA_LONG, registration=sf.NOT_REGISTERED))
    assert marked["blocked"] is False
    assert marked["missing"] == []
    (warning,) = _messages(marked, "warning")
    assert "does not apply" in warning


def test_boundary_us_toll_free_needs_verification():
    unknown = sf.compliance_report(make_sender(US_TOLL_FREE))
    assert unknown["blocked"] is False
    assert unknown["missing"] == ["toll-free verification"]
    assert _messages(unknown, "warning")
    verified = sf.compliance_report(make_sender(US_TOLL_FREE, registration=sf.VERIFIED))
    assert (verified["missing"], verified["problems"]) == ([], [])
    blocked = sf.compliance_report(make_sender(US_TOLL_FREE, registration=sf.NOT_VERIFIED))
    assert blocked["blocked"] is True


def test_boundary_uk_toll_free_is_not_an_sms_sender_but_is_not_blocked():
    report = sf.compliance_report(make_sender(GB_TOLL_FREE, registration=sf.NOT_VERIFIED))
    assert report["blocked"] is False
    assert report["missing"] == []
    (error,) = _messages(report, "error")
    assert "not SMS senders" in error
    assert report["throughput"]["mps"] == 0


def test_boundary_messaging_service_with_unknown_numbers():
    report = sf.compliance_report(make_sender(MG_SID, kind="messaging_service"))
    assert report["kind"] == "messaging_service"
    assert report["number_type"] == sf.MESSAGING_SERVICE
    assert report["country"] is None
    assert report["registration"] == sf.UNKNOWN
    assert report["blocked"] is False
    assert report["throughput"]["mps"] is None
    (warning,) = _messages(report, "warning")
    assert "Twilio manages" in warning and "none of it can be checked" in warning
    assert _messages(report, "error") == []


def test_messaging_service_recorded_as_registered_has_no_warning():
    sender = make_sender(
        MG_SID, kind="messaging_service", registration=sf.REGISTERED, campaign_id="CM9"
    )
    assert sf.compliance_report(sender)["problems"] == []


def test_messaging_service_is_recognised_even_if_recorded_as_a_number():
    report = sf.compliance_report(make_sender(MG_SID))
    assert report["kind"] == "messaging_service"


def test_uk_long_code_needs_nothing():
    report = sf.compliance_report(make_sender(GB_LONG))
    assert (report["missing"], report["problems"], report["throughput"]["mps"]) == ([], [], 10)


@pytest.mark.parametrize("address, country", [("+33612345678", "FR"), ("+393123456789", "IT")])
def test_unknown_requirement_is_reported_as_unknown(address, country):
    report = sf.compliance_report(make_sender(address))
    assert report["missing"] == []
    (warning,) = _messages(report, "warning")
    assert f"Unknown whether a {country} long code needs a registration" in warning
    answered = sf.compliance_report(make_sender(address, registration=sf.NOT_REQUIRED))
    assert answered["problems"] == []


@pytest.mark.parametrize("address", ["+385921234567", "+35943012345", "+421912123456"])
def test_long_code_of_a_country_without_sms_senders_is_an_error(address):
    report = sf.compliance_report(make_sender(address))
    assert report["blocked"] is False
    assert len(_messages(report, "error")) == 1


def test_number_of_a_country_outside_the_table_is_unknown():
    report = sf.compliance_report(make_sender("+819012345678"))
    assert report["country"] == "JP"
    assert report["missing"] == []
    assert report["blocked"] is False
    (warning,) = _messages(report, "warning")
    assert "JP is not in the country table" in warning


def test_number_phonenumbers_cannot_place_is_unknown():
    report = sf.compliance_report(make_sender("+10005550100"))
    assert (report["country"], report["number_type"]) == (None, None)
    assert len(_messages(report, "warning")) == 1


def test_unrecognised_registration_state_is_warned():
    report = sf.compliance_report(make_sender(US_LONG, registration="pending"))
    assert any("unrecognised registration state" in m for m in _messages(report, "warning"))
    assert report["missing"] == ["A2P 10DLC registration (brand and campaign)"]


def test_destinations_report_two_way_support_and_flag_the_rest():
    sender = make_sender(US_LONG, registration=sf.REGISTERED, campaign_id="CM1")
    report = sf.compliance_report(sender, ["gb", "HR", "JP", "GB"])
    assert report["destinations"] == [
        {"country": "GB", "two_way": True, "note": "Two-way SMS is supported in United Kingdom."},
        {
            "country": "HR",
            "two_way": False,
            "note": "Croatia (HR) has no two-way SMS through Twilio: replies will not come back.",
        },
        {
            "country": "JP",
            "two_way": None,
            "note": "JP is not in the country table: two-way SMS support is unknown.",
        },
    ]
    assert _messages(report, "warning") == [
        report["destinations"][1]["note"],
        report["destinations"][2]["note"],
    ]


@pytest.mark.parametrize("iso2", COUNTRIES)
def test_each_country_as_a_destination(iso2):
    sender = make_sender(US_LONG, registration=sf.REGISTERED, campaign_id="CM1")
    (destination,) = sf.compliance_report(sender, [iso2])["destinations"]
    assert destination["two_way"] is EXPECTED_ROWS[iso2][1]


def test_short_code_used_abroad_is_warned():
    report = sf.compliance_report(make_sender("12345", country="US"), ["US", "CA"])
    warnings = _messages(report, "warning")
    assert len(warnings) == 1 and "CA" in warnings[0]
