"""SMS templates: sending through ``conv.send_sms_template`` and the template service, end to end
through the test client, the outbox gateway and signed Twilio webhooks."""

from __future__ import annotations

import uuid

import pytest
from templates_support import (
    INBOUND_URL,
    LIVE,
    LIVE_2,
    MG_SID,
    SANDBOX,
    SANDBOX_2,
    USER,
    add_number,
    app_fixture,  # noqa: F401
    client_fixture,  # noqa: F401
    create,
    live_fixture,  # noqa: F401
    polysms_fixture,  # noqa: F401
)

from flask_polysms import get_state
from flask_polysms.services.templates import send_template
from flask_polysms.testing import provision, sign_twilio_request


def outbox(app, polysms):
    with app.app_context():
        return list(polysms.outbox)


def start_conversation(client, prov, agent_number):
    response = client.post(
        "/v1/outbound-sms",
        json={"user_number": USER, "message": "Hello!", "agent_number": agent_number},
        headers=prov.headers,
    )
    assert response.status_code == 202, response.json
    return response.json["conversation_id"]


def inbound(client, prov, to, body, user=USER):
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": user, "To": to, "Body": body}
    signature = sign_twilio_request(INBOUND_URL, params, prov.twilio_auth_token)
    response = client.post("/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200


@pytest.fixture
def sends(polysms):
    """Registers an agent that sends the template ``confirmation`` (configurable per test) and
    records what each send returned (or raised)."""
    calls: dict = {"template": "confirmation", "retry_count": None, "setup": None, "results": []}

    @polysms.agent
    def agent(conv, text):
        if calls["setup"]:
            calls["setup"](conv)
        try:
            calls["results"].append(
                conv.send_sms_template(
                    conv.caller_number, calls["template"], retry_count=calls["retry_count"]
                )
            )
        except LookupError as exc:
            calls["results"].append(exc)
        return None

    return calls


def metrics(client, prov):
    response = client.get("/v1/sms/metrics", headers=prov.headers)
    assert response.status_code == 200
    return response.json


def conversation(client, prov, conversation_id):
    response = client.get(f"/v1/conversations/{conversation_id}", headers=prov.headers)
    assert response.status_code == 200
    return response.json


# -- sending through the agent --------------------------------------------------------------------
def test_send_sms_template_from_the_agent(app, polysms, client, live, sends):
    create(client, live.headers, body="Booked for {{entity:date}} at ${hotel}, code {{vrbl:CODE}}")
    with app.app_context():
        get_state(app).store.update_project(
            live.project_id, settings={"variants": {"live": {"hotel": "Grand"}}}
        )

    def setup(conv):
        conv.entities["date"] = "May 1"
        conv.state["CODE"] = "X1"

    sends["setup"] = setup
    conversation_id = start_conversation(client, live, LIVE_2)
    before = len(outbox(app, polysms))
    inbound(client, live, LIVE_2, "please confirm")

    [result] = sends["results"]
    assert result["status"] == "sent" and result["template"] == "confirmation"
    new = outbox(app, polysms)[before:]
    assert len(new) == 1
    assert new[0]["body"] == "Booked for May 1 at Grand, code X1"
    assert new[0]["to"] == USER
    # The template's live sender, not the session's number.
    assert new[0]["from"] == LIVE and new[0]["messaging_service_sid"] is None

    sent = conversation(client, live, conversation_id)
    log = sent["metadata"]["sms_sends"]
    assert [entry["template"] for entry in log] == [None, "confirmation"]
    assert log[-1]["from"] == LIVE and log[-1]["status"] == "sent"
    assert sent["messages"][-1]["body"] == "Booked for May 1 at Grand, code X1"
    assert sent["messages"][-1]["segments"] == 1


def test_values_are_inserted_literally(app, polysms, client, live, sends):
    create(client, live.headers, body="Hi {{entity:name}}")
    sends["setup"] = lambda conv: conv.entities.update(name="${hotel} {{vrbl:CODE}}")
    start_conversation(client, live, LIVE)
    inbound(client, live, LIVE, "hello")
    assert outbox(app, polysms)[-1]["body"] == "Hi ${hotel} {{vrbl:CODE}}"


def test_a_missing_value_fails_the_send_and_counts_an_api_failure(
    app, polysms, client, live, sends
):
    body = "Code {{vrbl:CODE}} for {{entity:name}}"
    create(client, live.headers, body=body)
    sends["setup"] = lambda conv: conv.entities.update(name="Ana")
    conversation_id = start_conversation(client, live, LIVE)
    before = len(outbox(app, polysms))
    assert metrics(client, live)["api_failures"] == 0

    inbound(client, live, LIVE, "my code?")

    [result] = sends["results"]
    assert result["status"] == "failed"
    assert "{{vrbl:CODE}}" in result["error_message"]
    assert "{{entity:name}}" not in result["error_message"]
    assert len(outbox(app, polysms)) == before  # nothing half-filled went out
    assert metrics(client, live)["api_failures"] == 1
    failed = conversation(client, live, conversation_id)["messages"][-1]
    assert failed["status"] == "failed" and failed["template"] == "confirmation"
    assert failed["body"] == body


@pytest.mark.parametrize("environment", ["sandbox", "pre-release"])
def test_test_environments_never_send_from_the_live_sender(
    app, polysms, client, sends, environment
):
    prov = provision(app, environment=environment, numbers=(SANDBOX, SANDBOX_2))
    add_number(app, prov.project_id, LIVE, "live")
    create(client, prov.headers, title="no_own_sender", env_phone_numbers={"live": LIVE})
    create(
        client,
        prov.headers,
        title="own_sender",
        env_phone_numbers={"live": LIVE, environment: SANDBOX_2},
    )
    start_conversation(client, prov, SANDBOX)

    sends["template"] = "no_own_sender"
    inbound(client, prov, SANDBOX, "first")
    assert outbox(app, polysms)[-1]["from"] == SANDBOX  # the session's number

    sends["template"] = "own_sender"
    inbound(client, prov, SANDBOX, "second")
    assert outbox(app, polysms)[-1]["from"] == SANDBOX_2  # the template's own

    assert [r["status"] for r in sends["results"]] == ["sent", "sent"]
    assert all(entry["from"] != LIVE for entry in outbox(app, polysms))


def test_a_messaging_service_sender_is_sent_as_messaging_service_sid(
    app, polysms, client, live, sends
):
    create(client, live.headers, env_phone_numbers={"live": MG_SID})
    start_conversation(client, live, LIVE)
    inbound(client, live, LIVE, "hello")
    last = outbox(app, polysms)[-1]
    assert last["messaging_service_sid"] == MG_SID
    assert last["from"] is None
    assert sends["results"][0]["from"] == MG_SID


@pytest.mark.parametrize(
    ("language", "expected"),
    [("es", "Hola"), ("es-MX", "Hola"), ("fr", "Hello"), (None, "Hello")],
)
def test_the_language_variant_is_picked(app, polysms, client, live, sends, language, expected):
    create(client, live.headers, body="Hello")
    create(client, live.headers, title="confirmation_es", body="Hola")
    conversation_id = start_conversation(client, live, LIVE)
    if language:
        with app.app_context():
            store = get_state(app).store
            session = store.get_session(conversation_id)
            store.update_session(conversation_id, session.version, language=language)
    inbound(client, live, LIVE, "hello")
    assert outbox(app, polysms)[-1]["body"] == expected
    used = "confirmation_es" if expected == "Hola" else "confirmation"
    sent_log = conversation(client, live, conversation_id)["metadata"]["sms_sends"]
    assert sent_log[-1]["template"] == used


def test_an_unknown_template_raises_lookup_error(app, polysms, client, live, sends):
    sends["template"] = "nope"
    start_conversation(client, live, LIVE)
    before = len(outbox(app, polysms))
    inbound(client, live, LIVE, "hello")
    [error] = sends["results"]
    assert isinstance(error, LookupError)
    assert "'nope'" in str(error)
    assert len(outbox(app, polysms)) == before
    assert metrics(client, live)["api_failures"] == 0


def test_retry_count_sets_max_attempts(app, client, live, sends):
    create(client, live.headers)
    sends["retry_count"] = 2
    start_conversation(client, live, LIVE)
    inbound(client, live, LIVE, "hello")
    with app.app_context():
        message = get_state(app).store.get_message(sends["results"][0]["id"])
    assert message.max_attempts == 3


def test_an_opted_out_pair_is_suppressed(app, polysms, client, live, sends):
    # The template sends from LIVE; the conversation runs on LIVE_2. The user opts out of LIVE.
    create(client, live.headers)
    conversation_id = start_conversation(client, live, LIVE_2)
    inbound(client, live, LIVE, "STOP")
    assert outbox(app, polysms)[-1]["body"].startswith("You have been unsubscribed")
    before = len(outbox(app, polysms))

    inbound(client, live, LIVE_2, "send me the confirmation")

    [result] = sends["results"]
    assert result["status"] == "suppressed"
    assert len(outbox(app, polysms)) == before
    log = conversation(client, live, conversation_id)["metadata"]["sms_sends"]
    assert log[-1]["template"] == "confirmation" and log[-1]["status"] == "suppressed"
    assert metrics(client, live)["suppressed"] == 1


def test_send_template_directly(app, polysms, client, live):
    """The service function, as conversation.py calls it: a bad retry_count and a bad number are
    the caller's mistakes."""
    create(client, live.headers, body="Hi")
    conversation_id = start_conversation(client, live, LIVE)
    with app.app_context():
        state = get_state(app)
        session = state.store.get_session(conversation_id)
        kwargs = {"variant": None, "entities": None, "variables": None}
        with pytest.raises(ValueError):
            send_template(state, session, USER, "confirmation", retry_count=-1, **kwargs)
        with pytest.raises(ValueError):
            send_template(state, session, "12345", "confirmation", **kwargs)
        with pytest.raises(LookupError):
            send_template(state, session, USER, "missing", **kwargs)
        message = send_template(state, session, USER, "confirmation", **kwargs)
        assert message.template == "confirmation" and message.body == "Hi"
        assert polysms.outbox[-1]["body"] == "Hi"
