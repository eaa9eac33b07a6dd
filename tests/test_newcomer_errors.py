"""The error messages a newcomer meets first say what is wrong."""

from __future__ import annotations

AGENT = "+14155552671"
USER = "+14155552674"


def test_a_form_encoded_body_is_told_to_send_json(make_sms):
    sms = make_sms(numbers=(AGENT,))
    response = sms.client.post(
        "/v1/outbound-sms",
        data={"user_number": USER, "message": "Hello"},
        headers=sms.tenant.headers,
    )
    assert response.status_code == 400
    body = response.get_json()
    assert "must be JSON" in body["detail"] and "application/json" in body["detail"]
    assert "errors" not in body
    assert sms.outbox == [] and sms.conversations() == []


def test_a_json_body_without_its_content_type_is_told_to_send_json(make_sms):
    sms = make_sms(numbers=(AGENT,))
    response = sms.client.post(
        "/v1/outbound-sms",
        data=f'{{"user_number": "{USER}", "message": "Hello"}}',
        headers={**sms.tenant.headers, "Content-Type": "text/plain"},
    )
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.get_json()["detail"]


def test_an_empty_body_of_no_type_still_gets_its_missing_fields(make_sms):
    sms = make_sms(numbers=(AGENT,))
    response = sms.client.post("/v1/outbound-sms", headers=sms.tenant.headers)
    assert response.status_code == 400
    assert set(response.get_json()["errors"]) == {"user_number", "message"}


def test_a_missing_connector_header_is_a_400_naming_it(make_sms):
    sms = make_sms(numbers=(AGENT,))
    headers = {"X-PolyAi-Auth-Token": sms.tenant.api_key}
    for response in (
        sms.client.post(
            "/v1/outbound-sms", json={"user_number": USER, "message": "x"}, headers=headers
        ),
        sms.client.get("/v1/conversations", headers=headers),
    ):
        assert response.status_code == 400
        assert response.get_json() == {"detail": "X-TOKEN-ID header is required"}


def test_an_e164_shaped_number_that_does_not_exist_is_called_invalid(make_sms):
    sms = make_sms(numbers=(AGENT,))
    response = sms.send("+19999999999")
    assert response.status_code == 400
    [message] = response.get_json()["errors"]["user_number"]
    assert "not a valid phone number" in message
    assert "not an E.164" not in message


def test_a_suppressed_message_says_why(make_sms):
    sms = make_sms(numbers=(AGENT,))
    sms.inbound_ok(USER, "STOP")
    conversation = sms.send_ok(USER, "Hello again")["conversation_id"]
    [greeting] = [m for m in sms.conversation(conversation)["messages"] if m["kind"] == "greeting"]
    assert greeting["status"] == "suppressed"
    assert greeting["drop_reason"] == "opted_out"
