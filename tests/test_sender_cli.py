"""The sender compliance CLI commands: set-registration, add-number --registration and
check-senders."""

from __future__ import annotations

import json

import pytest
from senders_support import (
    CA_LONG,
    MG_SID,
    US_LONG,
    US_TOLL_FREE,
    US_USER,
    app_fixture,  # noqa: F401
    client_fixture,  # noqa: F401
    compliance,
    outbound,
    record,
)

from flask_polysms.services import provisioning
from flask_polysms.services.sender_facts import REGISTRATION_STATES
from flask_polysms.services.state import get_state
from flask_polysms.testing import provision


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


# --- CLI: set-registration ------------------------------------------------------------------------


def test_cli_set_registration_records_the_state_and_the_guard_uses_it(app, client, runner):
    tenant = provision(app, numbers=(US_LONG,))

    result = runner.invoke(args=["polysms", "set-registration", US_LONG, "not_registered"])

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"{US_LONG}: registration not_registered"
    assert "error:" in result.output  # the report's verdict on the state just recorded
    response = outbound(client, tenant, US_USER)
    assert response.status_code == 400
    assert "A2P 10DLC" in response.json["detail"]


def test_cli_registered_10dlc_needs_a_campaign_id(app, runner):
    provision(app, numbers=(US_LONG,))

    refused = runner.invoke(args=["polysms", "set-registration", US_LONG, "registered"])
    accepted = runner.invoke(
        args=["polysms", "set-registration", US_LONG, "registered", "--campaign-id", "CABC123"]
    )

    assert refused.exit_code == 1
    assert "campaign id" in refused.output
    assert accepted.exit_code == 0, accepted.output
    assert (
        accepted.output.splitlines()[0] == f"{US_LONG}: registration registered, campaign CABC123"
    )
    with app.app_context():
        stored = get_state(app).store.get_sender(US_LONG)
    assert (stored.registration, stored.campaign_id) == ("registered", "CABC123")


def test_cli_rejects_an_unknown_state(app, runner):
    provision(app, numbers=(US_LONG,))

    result = runner.invoke(args=["polysms", "set-registration", US_LONG, "approved"])

    assert result.exit_code == 1
    assert "unknown registration state 'approved'" in result.output
    with app.app_context():
        assert get_state(app).store.get_sender(US_LONG).registration == "unknown"


def test_cli_help_lists_every_state(app, runner):
    result = runner.invoke(args=["polysms", "set-registration", "--help"])

    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert all(state in help_text for state in REGISTRATION_STATES)


def test_cli_unknown_sender_is_a_one_line_error(app, runner):
    result = runner.invoke(args=["polysms", "set-registration", US_LONG, "not_registered"])

    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: no sender {US_LONG} in this project"]


def test_cli_add_number_records_the_registration(app, runner):
    tenant = provision(app, numbers=())

    result = runner.invoke(
        args=[
            "polysms",
            "add-number",
            tenant.project_id,
            US_LONG,
            "--registration",
            "registered",
            "--campaign-id",
            "CABC123",
        ]
    )

    assert result.exit_code == 0, result.output
    with app.app_context():
        stored = get_state(app).store.get_sender(US_LONG)
    assert (stored.country, stored.number_type) == ("US", "long_code")
    assert (stored.registration, stored.campaign_id) == ("registered", "CABC123")


# --- CLI: check-senders ---------------------------------------------------------------------------


def test_cli_check_senders_fails_on_a_blocked_live_sender(app, runner):
    tenant = provision(app, numbers=(US_LONG, CA_LONG))
    record(app, US_LONG, "not_registered")

    result = runner.invoke(args=["polysms", "check-senders", "--project", tenant.project_id])

    assert result.exit_code == 1
    assert f"{US_LONG} (live): US long_code, registration not_registered" in result.output
    assert "BLOCKED by the sender guard" in result.output
    assert f"{CA_LONG} (live)" in result.output
    assert result.output.splitlines()[-1] == (
        f"1 live sender(s) blocked by the sender guard: {US_LONG}"
    )


def test_cli_check_senders_passes_without_blocked_live_senders(app, runner):
    tenant = provision(app, numbers=(US_LONG,))
    with app.app_context():
        provisioning.add_sender(get_state(app), tenant.project_id, US_TOLL_FREE, "sandbox")
    record(app, US_TOLL_FREE, "not_verified")  # blocked, but not live

    result = runner.invoke(args=["polysms", "check-senders", "--project", tenant.project_id])

    assert result.exit_code == 0, result.output
    assert "BLOCKED" in result.output
    assert result.output.splitlines()[-1] == "no live sender is blocked by the sender guard"


def test_cli_check_senders_json_has_the_api_report(app, client, runner):
    tenant = provision(app, numbers=(US_TOLL_FREE, MG_SID))
    record(app, US_TOLL_FREE, "not_verified")
    outbound_ok = outbound(client, tenant, US_USER)
    assert outbound_ok.status_code == 400

    result = runner.invoke(
        args=["polysms", "check-senders", "--project", tenant.project_id, "--json"]
    )

    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["blocked_live_senders"] == [US_TOLL_FREE]
    by_sender = {r["sender"]: r for r in data["senders"]}
    assert by_sender[US_TOLL_FREE]["project_id"] == tenant.project_id
    api_report = compliance(client, tenant, "%2B18005550100").json
    assert {k: v for k, v in by_sender[US_TOLL_FREE].items() if k != "project_id"} == api_report
    assert any("Messaging Service" in p["message"] for p in by_sender[MG_SID]["problems"])


def test_cli_check_senders_needs_a_known_project(app, runner):
    missing = runner.invoke(args=["polysms", "check-senders"])
    unknown = runner.invoke(args=["polysms", "check-senders", "--project", "prj_nope"])

    assert missing.exit_code == 1
    assert "--project" in missing.output
    assert unknown.exit_code == 1
    assert unknown.output.strip() == "Error: no project 'prj_nope'"
