"""The outbound API: POST /v1/outbound-sms, the conversation it opens, its validation, body size
and rate limits, and how it picks the agent number."""

from __future__ import annotations

import json

import pytest
from outbound_support import (
    AGENT_NUMBERS,
    USER,
    assert_error,
    sms_fixture,  # noqa: F401
)

from flask_polysms.services import provisioning
from flask_polysms.services.tenancy import AUTH_HEADER, CONNECTOR_HEADER

# -- 202 -------------------------------------------------------------------------------------------


def test_accepted_answers_202_with_the_conversation_and_its_location(sms):
    response = sms.send(USER, "Your table is booked for 8pm.")

    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"conversation_id", "agent_number", "user_number", "status"}
    assert body["user_number"] == USER
    assert body["agent_number"] in AGENT_NUMBERS
    assert body["status"] == "sent"  # the manual scheduler ran the send job inline
    assert response.headers["Location"] == f"/v1/conversations/{body['conversation_id']}"

    followed = sms.client.get(response.headers["Location"], headers=sms.tenant.headers)
    assert followed.status_code == 200
    assert followed.get_json()["id"] == body["conversation_id"]


def test_location_keeps_the_url_prefix_and_the_apps_mount_point(make_sms):
    sms = make_sms(numbers=AGENT_NUMBERS, POLYSMS_URL_PREFIX="/sms")
    mounted = {"SCRIPT_NAME": "/shop"}  # the app served under /shop (a WSGI mount)
    response = sms.client.post(
        "/sms/v1/outbound-sms",
        json={"user_number": USER, "message": "Hello"},
        headers=sms.tenant.headers,
        environ_overrides=mounted,
    )

    assert response.status_code == 202, response.get_json()
    conversation_id = response.get_json()["conversation_id"]
    assert response.headers["Location"] == f"/shop/sms/v1/conversations/{conversation_id}"
    path = response.headers["Location"].removeprefix("/shop")
    followed = sms.client.get(path, headers=sms.tenant.headers, environ_overrides=mounted)
    assert followed.status_code == 200
    assert followed.get_json()["id"] == conversation_id


def test_the_message_is_the_greeting_of_a_new_session(sms):
    body = sms.send_ok(USER, "Your table is booked for 8pm.")

    conversation = sms.conversation(body["conversation_id"])
    assert conversation["channel"] == "sms"
    assert conversation["environment"] == "live"
    assert conversation["user_number"] == USER
    assert conversation["agent_number"] == body["agent_number"]
    assert conversation["state"] == "active"
    assert conversation["engaged"] is False
    assert conversation["closed_at"] is None and conversation["end_reason"] is None
    [greeting] = conversation["messages"]
    assert greeting["direction"] == "outbound"
    assert greeting["kind"] == "greeting"
    assert greeting["body"] == "Your table is booked for 8pm."
    assert greeting["status"] == "sent"
    assert greeting["segments"] == 1
    [handed] = sms.outbox
    assert handed["to"] == USER and handed["from"] == body["agent_number"]
    assert handed["body"] == "Your table is booked for 8pm."
    assert greeting["twilio_sid"] == handed["sid"]
    [send] = conversation["metadata"]["sms_sends"]
    assert send["template"] is None
    assert (send["to"], send["from"]) == (USER, body["agent_number"])
    assert send["status"] == "sent" and send["twilio_sid"] == handed["sid"]
    assert send["time"]


def test_each_request_opens_its_own_session(sms):
    first = sms.send_ok(USER, "one")
    second = sms.send_ok(USER, "two")

    assert first["conversation_id"] != second["conversation_id"]
    assert [m["body"] for m in sms.conversation(second["conversation_id"])["messages"]] == ["two"]


def test_a_message_of_1600_characters_is_accepted(sms):
    body = sms.send_ok(USER, "a" * 1600)

    [greeting] = sms.conversation(body["conversation_id"])["messages"]
    assert len(greeting["body"]) == 1600
    assert greeting["segments"] == 11  # 1600 GSM-7 characters in 153-character parts


def test_an_explicit_agent_number_is_used(sms):
    body = sms.send_ok(USER, agent_number=AGENT_NUMBERS[2])

    assert body["agent_number"] == AGENT_NUMBERS[2]
    assert sms.outbox[0]["from"] == AGENT_NUMBERS[2]


# -- 400 -------------------------------------------------------------------------------------------


def test_invalid_json_is_400(sms):
    response = sms.client.post(
        "/v1/outbound-sms",
        data='{"user_number": "+14155552674", "message": ',
        content_type="application/json",
        headers=sms.tenant.headers,
    )

    assert_error(response, 400)
    assert sms.conversations() == []


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "null", "42"])
def test_a_body_that_is_not_an_object_is_400(sms, payload):
    response = sms.client.post(
        "/v1/outbound-sms",
        data=payload,
        content_type="application/json",
        headers=sms.tenant.headers,
    )

    assert_error(response, 400)
    assert sms.conversations() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "hi"}, "user_number"),
        ({"user_number": USER}, "message"),
        ({"user_number": 14155552674, "message": "hi"}, "user_number"),
        ({"user_number": USER, "message": 42}, "message"),
        ({"user_number": USER, "message": ""}, "message"),
        ({"user_number": USER, "message": "a" * 1601}, "message"),
        ({"user_number": USER, "message": "hi", "priority": "high"}, "priority"),
    ],
    ids=[
        "no-user-number",
        "no-message",
        "number-not-a-string",
        "message-not-a-string",
        "empty-message",
        "message-1601",
        "unknown-field",
    ],
)
def test_a_bad_body_is_400_naming_the_field(sms, body, field):
    response = sms.client.post("/v1/outbound-sms", json=body, headers=sms.tenant.headers)

    assert_error(response, 400, fields=(field,))
    assert sms.conversations() == []
    assert sms.outbox == []


@pytest.mark.parametrize(
    "number",
    [
        "+1 (415) 555-2674",
        "+1 415 555 2674",
        "+1-415-555-2674",
        "14155552674",
        "004414155552674",
        "+1415555267",  # too short for the US plan
        "+14155552674 ",
        "+1415555267४",  # a Devanagari digit
        "+10005552674",  # the pattern fits, the number does not exist
        "",
    ],
)
@pytest.mark.parametrize("field", ["user_number", "agent_number"])
def test_numbers_must_be_strict_e164(sms, number, field):
    body = {"user_number": USER, "message": "hi", field: number}

    response = sms.client.post("/v1/outbound-sms", json=body, headers=sms.tenant.headers)

    assert_error(response, 400, fields=(field,))
    assert sms.outbox == []


def test_agent_number_not_provisioned_at_all_is_400(sms):
    response = sms.send(USER, agent_number="+14155552679")

    assert_error(response, 400, fields=("agent_number",))
    assert sms.conversations() == [] and sms.outbox == []


def test_agent_number_of_another_environment_is_400(sms):
    with sms.app.app_context():
        provisioning.add_sender(sms.state, sms.tenant.project_id, "+14155552678", "sandbox")

    response = sms.send(USER, agent_number="+14155552678")

    assert_error(response, 400, fields=("agent_number",))
    assert sms.conversations() == [] and sms.outbox == []


def test_agent_number_of_another_project_is_400(sms):
    other = sms.provision(numbers=("+14155552678",))

    response = sms.send(USER, agent_number=other.numbers[0])

    assert_error(response, 400, fields=("agent_number",))
    assert sms.conversations() == [] and sms.outbox == []
    assert sms.conversations(tenant=other) == []


# -- 413 / 429 -------------------------------------------------------------------------------------


def test_a_body_over_64_kb_is_413(sms):
    payload = json.dumps({"user_number": USER, "message": "a" * (64 * 1024)})

    response = sms.client.post(
        "/v1/outbound-sms",
        data=payload,
        content_type="application/json",
        headers=sms.tenant.headers,
    )

    assert_error(response, 413)
    assert sms.outbox == [] and sms.conversations() == []


def test_a_body_just_under_64_kb_is_not_413(sms):
    # Padding in an unknown field: rejected as 400, so the size limit is not what answers.
    padding = "a" * (64 * 1024 - 200)
    payload = json.dumps({"user_number": USER, "message": "hi", "pad": padding})
    assert len(payload) < 64 * 1024

    response = sms.client.post(
        "/v1/outbound-sms",
        data=payload,
        content_type="application/json",
        headers=sms.tenant.headers,
    )

    assert_error(response, 400, fields=("pad",))


def test_the_rate_limit_is_per_project_and_answers_429_with_retry_after(make_sms):
    sms = make_sms(numbers=AGENT_NUMBERS[:1], POLYSMS_RATE_LIMIT="3 per minute")
    other = sms.provision(numbers=("+14155552678",))

    for _ in range(3):
        sms.send_ok(USER)
    limited = sms.send(USER)

    body = assert_error(limited, 429)
    assert "rate limit" in body["detail"]
    retry_after = limited.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit()
    assert 0 < int(retry_after) <= 60
    assert len(sms.outbox) == 3
    assert len(sms.conversations()) == 3
    # Another project on the same app is not limited by this one's traffic.
    for _ in range(3):
        assert sms.send(USER, tenant=other).status_code == 202
    assert sms.send(USER, tenant=other).status_code == 429


def test_the_rate_limit_is_not_keyed_on_the_api_key(make_sms):
    sms = make_sms(numbers=AGENT_NUMBERS[:1], POLYSMS_RATE_LIMIT="2 per minute")
    with sms.app.app_context():
        _, second_key = provisioning.create_api_key(sms.state, sms.tenant.account_id)
    second = {**sms.tenant.headers, AUTH_HEADER: second_key}

    sms.send_ok(USER)
    sms.send_ok(USER)

    # A second key of the same account does not get the project a fresh allowance.
    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=second
    )
    assert_error(response, 429)


# -- number selection ------------------------------------------------------------------------------


@pytest.mark.parametrize("number", AGENT_NUMBERS)
def test_the_number_already_talking_to_the_user_is_reused(sms, number):
    sms.send_ok(USER, "first", agent_number=number)

    again = sms.send_ok(USER, "second")

    assert again["agent_number"] == number
    assert sms.outbox[-1]["from"] == number


def test_a_number_the_user_wrote_to_first_is_reused(sms):
    sms.inbound_ok(USER, "Hi, is this the restaurant?", to=AGENT_NUMBERS[1])

    body = sms.send_ok(USER, "Yes it is")

    assert body["agent_number"] == AGENT_NUMBERS[1]


def test_new_users_are_spread_over_the_numbers_deterministically(make_sms):
    sms = make_sms(numbers=AGENT_NUMBERS, POLYSMS_RATE_LIMIT="1000 per second")
    users = [f"+1415555{n:04d}" for n in range(2680, 2710)]
    chosen = {user: sms.send_ok(user)["agent_number"] for user in users}

    # Every number carries some of the users.
    assert set(chosen.values()) == set(AGENT_NUMBERS)
    # The choice depends on nothing but the user and the numbers: another app agrees.
    other = make_sms(numbers=AGENT_NUMBERS, POLYSMS_RATE_LIMIT="1000 per second")
    assert {user: other.send_ok(user)["agent_number"] for user in users} == chosen


def test_selection_only_considers_the_environments_numbers(sms):
    # The user talked to a sandbox number of this project: a live connector cannot use it.
    with sms.app.app_context():
        provisioning.add_sender(sms.state, sms.tenant.project_id, "+14155552678", "sandbox")
        connector = provisioning.create_connector(sms.state, sms.tenant.project_id, "sandbox")
    sandbox = {**sms.tenant.headers, CONNECTOR_HEADER: connector.id}
    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=sandbox
    )
    assert response.get_json()["agent_number"] == "+14155552678"

    assert sms.send_ok(USER)["agent_number"] in AGENT_NUMBERS
