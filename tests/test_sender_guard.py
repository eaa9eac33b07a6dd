"""The send-time sender guard through the app: blocked senders are refused, a project or the app
config can turn it off, and recipients without two-way SMS get a warning."""

from __future__ import annotations

import pytest
from senders_support import (
    BG_USER,
    CA_LONG,
    GB_TOLL_FREE,
    GB_USER,
    HR_USER,
    SK_USER,
    US_LONG,
    US_LONG_OK,
    US_TOLL_FREE,
    US_USER,
    app_fixture,  # noqa: F401
    client_fixture,  # noqa: F401
    compliance,
    make_app,
    outbound,
    outbox,
    record,
)

from flask_polysms.services.state import get_state
from flask_polysms.testing import provision, sign_twilio_request

INBOUND_URL = "http://localhost/v1/twilio/sms"


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
