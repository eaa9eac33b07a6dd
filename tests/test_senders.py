"""Sender compliance through the app: /v1/senders, the CLI commands and the send-time guard."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from flask_polysms import PolySMS
from flask_polysms.services import provisioning
from flask_polysms.services import senders as senders_service
from flask_polysms.services.sender_facts import REGISTRATION_STATES
from flask_polysms.services.state import get_state
from flask_polysms.testing import provision, sign_twilio_request

US_LONG = "+14155552671"  # the blocked one in most tests
US_LONG_OK = "+14155552673"
US_TOLL_FREE = "+18005550100"
CA_LONG = "+14165550100"
GB_TOLL_FREE = "+448001234567"
MG_SID = "MG" + "0123456789abcdef" * 2

US_USER = "+14155552672"
GB_USER = "+447400123456"
DE_USER = "+4915123456789"
# Valid mobile numbers of countries without two-way SMS (checked with phonenumbers).
HR_USER, BG_USER, SK_USER = "+385921234567", "+35943012345", "+421912123456"

INBOUND_URL = "http://localhost/v1/twilio/sms"


def make_app(**config) -> Flask:
    app = Flask(__name__)
    app.testing = True
    app.config.update(SECRET_KEY="test secret", POLYSMS_GATEWAY="outbox", **config)
    PolySMS(app)
    return app


@pytest.fixture
def app():
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def record(app, address, registration, campaign_id=None):
    """Record a sender's registration state straight in the Store (the CLI/API are tested apart)."""
    with app.app_context():
        get_state(app).store.update_sender(
            address, registration=registration, campaign_id=campaign_id
        )


def outbound(client, tenant, user_number, agent_number=None, message="hello"):
    body = {"user_number": user_number, "message": message}
    if agent_number:
        body["agent_number"] = agent_number
    return client.post("/v1/outbound-sms", json=body, headers=tenant.headers)


def outbox(app):
    with app.app_context():
        return list(get_state(app).extension.outbox)


def compliance(client, tenant, sender, query=""):
    return client.get(f"/v1/senders/{sender}/compliance{query}", headers=tenant.headers)


# --- GET /v1/senders ------------------------------------------------------------------------------


def test_list_senders_shows_every_environment_with_facts(app, client):
    tenant = provision(app, numbers=(US_LONG, MG_SID))
    with app.app_context():
        provisioning.add_sender(get_state(app), tenant.project_id, GB_TOLL_FREE, "sandbox")

    response = client.get("/v1/senders", headers=tenant.headers)

    assert response.status_code == 200
    assert response.json["senders"] == [
        {
            "address": US_LONG,
            "environment": "live",
            "kind": "number",
            "country": "US",
            "number_type": "long_code",
            "registration": "unknown",
            "campaign_id": None,
            "messaging_service_sid": None,
        },
        {
            "address": MG_SID,
            "environment": "live",
            "kind": "messaging_service",
            "country": None,
            "number_type": "messaging_service",
            "registration": "unknown",
            "campaign_id": None,
            "messaging_service_sid": None,
        },
        {
            "address": GB_TOLL_FREE,
            "environment": "sandbox",
            "kind": "number",
            "country": "GB",
            "number_type": "toll_free",
            "registration": "unknown",
            "campaign_id": None,
            "messaging_service_sid": None,
        },
    ]


@pytest.mark.parametrize("name", ["sandbox", "dev"])
def test_list_senders_filters_by_environment(app, client, name):
    tenant = provision(app, numbers=(US_LONG,))
    with app.app_context():
        provisioning.add_sender(get_state(app), tenant.project_id, CA_LONG, "sandbox")

    response = client.get(f"/v1/senders?environment={name}", headers=tenant.headers)

    assert response.status_code == 200
    assert [s["address"] for s in response.json["senders"]] == [CA_LONG]


def test_list_senders_rejects_an_unknown_environment(app, client):
    tenant = provision(app, numbers=(US_LONG,))

    response = client.get("/v1/senders?environment=prod", headers=tenant.headers)

    assert response.status_code == 400
    assert "environment" in response.json["errors"]


def test_list_senders_shows_only_the_callers_project(app, client):
    mine = provision(app, numbers=(US_LONG,))
    provision(app, numbers=(CA_LONG,))

    response = client.get("/v1/senders", headers=mine.headers)

    assert [s["address"] for s in response.json["senders"]] == [US_LONG]


def test_senders_need_authentication(app, client):
    provision(app, numbers=(US_LONG,))

    assert client.get("/v1/senders").status_code == 401
    assert client.get(f"/v1/senders/{US_LONG}/compliance").status_code == 401
    assert client.patch(f"/v1/senders/{US_LONG}", json={}).status_code == 401


# --- another project's sender, the path forms -----------------------------------------------------


def test_another_projects_sender_answers_404_and_is_left_alone(app, client):
    mine = provision(app, numbers=(US_LONG,))
    provision(app, numbers=(CA_LONG,))

    assert compliance(client, mine, CA_LONG).status_code == 404
    patched = client.patch(
        f"/v1/senders/{CA_LONG}", json={"registration": "not_registered"}, headers=mine.headers
    )
    assert patched.status_code == 404
    assert patched.json == {"detail": f"no sender {CA_LONG} in this project"}
    with app.app_context():
        assert get_state(app).store.get_sender(CA_LONG).registration == "unknown"


def test_unknown_sender_answers_404(app, client):
    tenant = provision(app, numbers=(US_LONG,))

    assert compliance(client, tenant, "+14155550199").status_code == 404
    assert compliance(client, tenant, "not-a-number").status_code == 404


@pytest.mark.parametrize("path", [US_LONG, "%2B14155552671", "%2b14155552671"])
def test_sender_path_takes_a_plain_or_encoded_plus(app, client, path):
    tenant = provision(app, numbers=(US_LONG,))

    response = compliance(client, tenant, path)

    assert response.status_code == 200
    assert response.json["sender"] == US_LONG


def test_sender_path_takes_a_messaging_service_sid(app, client):
    tenant = provision(app, numbers=(US_LONG, MG_SID))

    response = compliance(client, tenant, MG_SID)

    assert response.status_code == 200
    assert response.json["kind"] == "messaging_service"


# --- PATCH /v1/senders/<sender> -------------------------------------------------------------------


def patch(client, tenant, sender, body):
    return client.patch(f"/v1/senders/{sender}", json=body, headers=tenant.headers)


def test_patch_records_registration_and_campaign(app, client):
    tenant = provision(app, numbers=(US_LONG,))

    response = patch(
        client, tenant, "%2B14155552671", {"registration": "registered", "campaign_id": "CABC123"}
    )

    assert response.status_code == 200
    assert response.json["registration"] == "registered"
    assert response.json["campaign_id"] == "CABC123"
    with app.app_context():
        stored = get_state(app).store.get_sender(US_LONG)
    assert (stored.registration, stored.campaign_id) == ("registered", "CABC123")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"registration": "approved"}, "registration"),
        ({"registration": "REGISTERED", "campaign_id": "CABC123"}, "registration"),
        ({"registration": "registered", "campaign_id": ""}, "campaign_id"),
        ({"registration": "registered", "campaign_id": "C ABC"}, "campaign_id"),
        ({"registration": "registered", "campaign_id": "C" * 65}, "campaign_id"),
        ({"registration": "unknown", "colour": "red"}, "colour"),
    ],
)
def test_patch_rejects_bad_input_with_400_and_changes_nothing(app, client, body, field):
    tenant = provision(app, numbers=(US_LONG,))

    response = patch(client, tenant, US_LONG, body)

    assert response.status_code == 400
    assert field in response.json["errors"]
    with app.app_context():
        assert get_state(app).store.get_sender(US_LONG).registration == "unknown"


def test_patch_needs_a_campaign_to_register_a_10dlc_long_code(app, client):
    tenant = provision(app, numbers=(US_LONG,))

    response = patch(client, tenant, US_LONG, {"registration": "registered"})

    assert response.status_code == 400
    assert "campaign id" in response.json["detail"]
    assert "campaign_id" in response.json["errors"]


def test_patch_registers_a_canadian_long_code_without_campaign(app, client):
    # A2P 10DLC is a US programme: a Canadian long code has no campaign to give.
    tenant = provision(app, numbers=(CA_LONG,))

    response = patch(client, tenant, CA_LONG, {"registration": "registered"})

    assert response.status_code == 200
    assert response.json["campaign_id"] is None


def test_patch_refuses_a_campaign_with_another_state(app, client):
    tenant = provision(app, numbers=(US_LONG,))

    response = patch(
        client, tenant, US_LONG, {"registration": "not_registered", "campaign_id": "CABC123"}
    )

    assert response.status_code == 400
    assert "campaign_id" in response.json["errors"]


def test_patch_leaving_registered_clears_the_campaign(app, client):
    tenant = provision(app, numbers=(US_LONG,))
    patch(client, tenant, US_LONG, {"registration": "registered", "campaign_id": "CABC123"})

    kept = patch(client, tenant, US_LONG, {"registration": "registered"})
    cleared = patch(client, tenant, US_LONG, {"registration": "not_registered"})

    assert kept.json["campaign_id"] == "CABC123"
    assert cleared.status_code == 200
    assert cleared.json == {**cleared.json, "registration": "not_registered", "campaign_id": None}


def test_patch_with_nothing_to_change_is_400(app, client):
    tenant = provision(app, numbers=(US_LONG,))

    response = patch(client, tenant, US_LONG, {})

    assert response.status_code == 400
    assert "nothing to change" in response.json["detail"]


# --- GET /v1/senders/<sender>/compliance ----------------------------------------------------------


def test_compliance_destinations_are_the_countries_the_sender_talked_to(app, client):
    tenant = provision(app, numbers=(US_LONG, CA_LONG))
    for user in (GB_USER, HR_USER, GB_USER, US_USER):
        assert outbound(client, tenant, user, agent_number=US_LONG).status_code == 202
    # Another sender's users are not this sender's destinations.
    assert outbound(client, tenant, DE_USER, agent_number=CA_LONG).status_code == 202

    report = compliance(client, tenant, US_LONG).json

    assert report["destinations_source"] == "sessions"
    assert report["destinations_truncated"] is False
    assert [d["country"] for d in report["destinations"]] == ["GB", "HR", "US"]
    by_country = {d["country"]: d["two_way"] for d in report["destinations"]}
    assert by_country == {"GB": True, "HR": False, "US": True}
    assert any(p["severity"] == "warning" and "Croatia" in p["message"] for p in report["problems"])


def test_compliance_destinations_query_overrides_the_sessions(app, client):
    tenant = provision(app, numbers=(US_LONG,))
    outbound(client, tenant, HR_USER, agent_number=US_LONG)

    report = compliance(client, tenant, US_LONG, "?destinations=de,SK").json

    assert report["destinations_source"] == "request"
    assert [(d["country"], d["two_way"]) for d in report["destinations"]] == [
        ("DE", True),
        ("SK", False),
    ]


def test_compliance_says_when_only_the_newest_sessions_were_read(app, client, monkeypatch):
    monkeypatch.setattr(senders_service, "MAX_SESSIONS_SCANNED", 2)
    tenant = provision(app, numbers=(US_LONG,))
    for user in (GB_USER, HR_USER, US_USER):  # newest last
        outbound(client, tenant, user, agent_number=US_LONG)

    report = compliance(client, tenant, US_LONG).json

    assert report["destinations_truncated"] is True
    assert [d["country"] for d in report["destinations"]] == ["HR", "US"]


@pytest.mark.parametrize("value", ["GBR", "G1", "GB,,US"])
def test_compliance_rejects_bad_destinations(app, client, value):
    tenant = provision(app, numbers=(US_LONG,))

    response = compliance(client, tenant, US_LONG, f"?destinations={value}")

    assert response.status_code == 400
    assert response.json["detail"]


def test_compliance_reports_a_blocked_sender(app, client):
    tenant = provision(app, numbers=(US_LONG,))
    record(app, US_LONG, "not_registered")

    report = compliance(client, tenant, US_LONG).json

    assert report["blocked"] is True
    assert report["guard_enabled"] is True
    assert report["throughput"]["mps"] == 0
    assert report["missing"] == ["A2P 10DLC registration (brand and campaign)"]
    assert report["problems"][0]["severity"] == "error"
    assert "A2P 10DLC" in report["problems"][0]["message"]


def test_compliance_reports_the_projects_guard_switch(app, client):
    tenant = provision(app, numbers=(US_LONG,))
    with app.app_context():
        get_state(app).store.update_project(tenant.project_id, settings={"sender_guard": False})

    assert compliance(client, tenant, US_LONG).json["guard_enabled"] is False


def test_messaging_service_with_unknown_numbers_gets_a_warning(app, client):
    tenant = provision(app, numbers=(MG_SID,))

    report = compliance(client, tenant, MG_SID).json

    assert report["blocked"] is False
    assert report["throughput"]["mps"] is None
    warnings = [p["message"] for p in report["problems"] if p["severity"] == "warning"]
    assert any("Messaging Service" in w and "numbers are unknown" in w for w in warnings)


def test_senders_are_in_the_openapi_document(app, client):
    spec = client.get("/v1/openapi.json").json

    list_op = spec["paths"]["/v1/senders"]["get"]
    report_op = spec["paths"]["/v1/senders/{sender}/compliance"]["get"]
    patch_op = spec["paths"]["/v1/senders/{sender}"]["patch"]
    assert {p["name"] for p in list_op["parameters"]} >= {"X-PolyAi-Auth-Token", "environment"}
    assert {p["name"] for p in report_op["parameters"]} >= {"sender", "destinations"}
    assert {"200", "400", "401", "404"} <= set(patch_op["responses"])
    assert "requestBody" in patch_op


# --- the send-time guard --------------------------------------------------------------------------


def test_unregistered_us_long_code_is_refused_with_400(app, client):
    tenant = provision(app, numbers=(US_LONG,))
    record(app, US_LONG, "not_registered")

    response = outbound(client, tenant, US_USER)

    assert response.status_code == 400
    assert "A2P 10DLC" in response.json["detail"]
    assert outbox(app) == []
    assert client.get("/v1/conversations", headers=tenant.headers).json["conversations"] == []


def test_project_can_turn_the_guard_off(app, client):
    tenant = provision(app, numbers=(US_LONG,))
    record(app, US_LONG, "not_registered")
    with app.app_context():
        get_state(app).store.update_project(tenant.project_id, settings={"sender_guard": False})

    response = outbound(client, tenant, US_USER)

    assert response.status_code == 202
    assert response.json["status"] == "sent"
    assert [m["from"] for m in outbox(app)] == [US_LONG]


def test_app_config_can_turn_the_guard_off():
    app = make_app(POLYSMS_SENDER_GUARD=False)
    client = app.test_client()
    tenant = provision(app, numbers=(US_LONG,))
    record(app, US_LONG, "not_registered")

    response = outbound(client, tenant, US_USER)

    assert response.status_code == 202
    assert response.json["status"] == "sent"
    assert compliance(client, tenant, US_LONG).json["guard_enabled"] is False


def test_unverified_us_toll_free_is_refused_with_400(app, client):
    tenant = provision(app, numbers=(US_TOLL_FREE,))
    record(app, US_TOLL_FREE, "not_verified")

    response = outbound(client, tenant, US_USER)

    assert response.status_code == 400
    assert "toll-free verification" in response.json["detail"]
    assert outbox(app) == []


def test_unknown_state_sends_and_the_report_flags_it(app, client):
    tenant = provision(app, numbers=(US_LONG,))

    response = outbound(client, tenant, US_USER)

    assert response.status_code == 202
    assert response.json["status"] == "sent"
    report = compliance(client, tenant, US_LONG).json
    assert report["blocked"] is False
    assert report["missing"] == ["A2P 10DLC registration (brand and campaign)"]
    assert any("is unknown" in p["message"] for p in report["problems"])


def test_canadian_long_code_is_not_blocked(app, client):
    tenant = provision(app, numbers=(CA_LONG,))
    record(app, CA_LONG, "not_registered")

    response = outbound(client, tenant, US_USER)

    assert response.status_code == 202
    assert response.json["status"] == "sent"
    assert compliance(client, tenant, CA_LONG).json["blocked"] is False


def test_uk_toll_free_is_not_blocked(app, client):
    tenant = provision(app, numbers=(GB_TOLL_FREE,))
    record(app, GB_TOLL_FREE, "not_verified")

    response = outbound(client, tenant, GB_USER)

    assert response.status_code == 202
    assert response.json["status"] == "sent"
    report = compliance(client, tenant, GB_TOLL_FREE).json
    assert report["blocked"] is False
    # Not the guard's business, but the report says a UK toll-free number is no SMS sender.
    assert any(p["severity"] == "error" for p in report["problems"])


def test_agent_send_from_a_blocked_sender_fails_and_counts(app, client):
    polysms = get_state(app).extension
    tenant = provision(app, numbers=(US_LONG_OK, US_LONG))
    record(app, US_LONG_OK, "registered", "CABC123")
    record(app, US_LONG, "not_registered")
    sent = []

    @polysms.agent
    def agent(conv, text):
        sent.append(conv.send_sms(conv.caller_number, US_LONG, "from the other number"))
        return None

    started = outbound(client, tenant, US_USER, agent_number=US_LONG_OK)
    assert started.status_code == 202
    params = {
        "MessageSid": "SM" + "1" * 32,
        "From": US_USER,
        "To": US_LONG_OK,
        "Body": "hi there",
    }
    signature = sign_twilio_request(INBOUND_URL, params, tenant.twilio_auth_token)
    inbound = client.post("/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})
    assert inbound.status_code == 200

    assert sent[0]["status"] == "failed"
    conversation = client.get(
        f"/v1/conversations/{started.json['conversation_id']}", headers=tenant.headers
    ).json
    failed = [m for m in conversation["messages"] if m["status"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["kind"] == "agent"
    assert "A2P 10DLC" in failed[0]["error_message"]
    assert [m["from"] for m in outbox(app)] == [US_LONG_OK]
    metrics = client.get("/v1/sms/metrics", headers=tenant.headers).json
    assert metrics["api_failures"] == 1


@pytest.mark.parametrize("user, country", [(HR_USER, "HR"), (BG_USER, "BG"), (SK_USER, "SK")])
def test_recipient_without_two_way_sms_gets_a_warning(app, client, user, country):
    tenant = provision(app, numbers=(US_LONG,))

    response = outbound(client, tenant, user)

    assert response.status_code == 202
    conversation = client.get(response.headers["Location"], headers=tenant.headers).json
    assert len(conversation["metadata"]["warnings"]) == 1
    assert country in conversation["metadata"]["warnings"][0]
    assert "two-way" in conversation["metadata"]["warnings"][0]


def test_recipient_with_two_way_sms_gets_no_warning(app, client):
    tenant = provision(app, numbers=(US_LONG,))

    response = outbound(client, tenant, GB_USER)

    conversation = client.get(response.headers["Location"], headers=tenant.headers).json
    assert conversation["metadata"]["warnings"] == []


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
