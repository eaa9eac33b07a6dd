"""The API's authentication and tenant access: missing, invalid and revoked API keys, keys of
another account, unknown connectors and connectors of another environment."""

from __future__ import annotations

from types import SimpleNamespace

from outbound_support import (
    USER,
    assert_error,
    sms_fixture,  # noqa: F401
)

from flask_polysms.crypto import hash_api_key
from flask_polysms.services import provisioning
from flask_polysms.services.tenancy import AUTH_HEADER, CONNECTOR_HEADER, revoke_api_key

# -- 401 / 403 / 404 -------------------------------------------------------------------------------


def test_missing_api_key_is_401(sms):
    headers = {CONNECTOR_HEADER: sms.tenant.connector_id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 401)
    assert sms.outbox == []


def test_invalid_api_key_is_401(sms):
    headers = {**sms.tenant.headers, AUTH_HEADER: sms.tenant.api_key + "x"}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 401)
    assert sms.outbox == []


def test_revoked_api_key_is_401_at_once(sms):
    sms.send_ok(USER)
    with sms.app.app_context():
        key = sms.store.get_api_key_by_hash(hash_api_key(sms.tenant.api_key))
        assert revoke_api_key(sms.store, key.id)

    response = sms.send(USER)

    assert_error(response, 401)
    assert len(sms.outbox) == 1
    # Reading is refused too.
    assert_error(sms.client.get("/v1/conversations", headers=sms.tenant.headers), 401)


def test_a_key_of_another_account_is_403(sms):
    other = sms.provision(numbers=("+14155552678",))
    headers = {AUTH_HEADER: other.api_key, CONNECTOR_HEADER: sms.tenant.connector_id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 403)
    assert sms.outbox == [] and sms.conversations() == []


def test_a_key_of_the_same_account_works_for_its_other_projects(sms):
    sibling = sms.provision(numbers=("+14155552678",), account_id=sms.tenant.account_id)
    headers = {AUTH_HEADER: sms.tenant.api_key, CONNECTOR_HEADER: sibling.connector_id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert response.status_code == 202
    assert response.get_json()["agent_number"] == "+14155552678"


def test_unknown_connector_is_404(sms):
    headers = {**sms.tenant.headers, CONNECTOR_HEADER: "con_does_not_exist"}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 404)
    assert sms.outbox == []


def test_no_numbers_for_the_connectors_environment_is_404(sms):
    # The project has live numbers, but this connector is for sandbox.
    with sms.app.app_context():
        connector = provisioning.create_connector(sms.state, sms.tenant.project_id, "dev")
    headers = {**sms.tenant.headers, CONNECTOR_HEADER: connector.id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 404)
    assert sms.outbox == [] and sms.conversations() == []


def test_a_dev_connector_sends_from_the_sandbox_numbers(sms):
    with sms.app.app_context():
        provisioning.add_sender(sms.state, sms.tenant.project_id, "+14155552678", "sandbox")
        connector = provisioning.create_connector(sms.state, sms.tenant.project_id, "dev")
    headers = {**sms.tenant.headers, CONNECTOR_HEADER: connector.id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert response.status_code == 202
    assert response.get_json()["agent_number"] == "+14155552678"
    conversation = sms.conversation(
        response.get_json()["conversation_id"], tenant=SimpleNamespace(headers=headers)
    )
    assert conversation["environment"] == "sandbox"
