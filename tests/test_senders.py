"""Sender compliance through the HTTP API: GET /v1/senders, PATCH /v1/senders/<sender> and the
compliance report at /v1/senders/<sender>/compliance."""

from __future__ import annotations

import pytest
from senders_support import (
    CA_LONG,
    DE_USER,
    GB_TOLL_FREE,
    GB_USER,
    HR_USER,
    MG_SID,
    US_LONG,
    US_USER,
    app_fixture,  # noqa: F401
    client_fixture,  # noqa: F401
    compliance,
    outbound,
    record,
)

from flask_polysms.services import provisioning
from flask_polysms.services import senders as senders_service
from flask_polysms.services.state import get_state
from flask_polysms.testing import provision

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
