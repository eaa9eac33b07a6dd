"""Operators (handoff, a person's messages, resume, end), on every backend (memory, SQLite,
PostgreSQL, MariaDB).

- ``conv.handoff()`` and ``POST .../handoff`` pause the agent: the user's messages are recorded,
  not given to it; the inactivity warning and close do not run; the reply of the turn that hands
  off is still sent. ``POST .../resume`` gives it back and starts the timers again.
- ``POST .../messages`` sends a person's message (kind ``human``) through the one send path:
  suppressed when opted out, counted by the outbound rate limit, ``Idempotency-Key`` honoured.
- ``POST .../end`` closes with ``end_reason`` ``api`` and no closing text. Every operator route
  answers 409 on a closed conversation and 404 across projects and environments.
- Concurrent handoffs and ends on the database servers take effect, and signal, once.

The signals themselves are tested in test_signals.py.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
import store_backends
from freezegun import freeze_time
from operators_support import (
    AGENT,
    START,
    USER,
    agent_fixture,  # noqa: F401
    fire,
    ok,
    post,
    recorder_fixture,  # noqa: F401
    sms_fixture,  # noqa: F401
    storage_url_fixture,  # noqa: F401
)
from signal_recorder import Recorder
from store_backends import BACKENDS

from flask_polysms.services import provisioning
from flask_polysms.services.state import get_state
from flask_polysms.services.tenancy import CONNECTOR_HEADER
from flask_polysms.services.units import unit_of_work

SANDBOX_NUMBER = "+14155552678"
OTHER_USER = "+14155552675"


def start(sms, user: str = USER) -> str:
    """An outbound conversation the user replied to (engaged); its id."""
    conversation_id = sms.send_ok(user)["conversation_id"]
    sms.inbound_ok(user, "hello")
    return conversation_id


def messages(sms, conversation_id: str) -> list[dict]:
    return sms.conversation(conversation_id)["messages"]


# -- handoff --------------------------------------------------------------------------------------
def test_handoff_pauses_the_agent_and_the_messages_are_still_recorded(sms, agent):
    with freeze_time(START):
        conversation_id = start(sms)
        assert agent.texts == ["hello"]
        outbox_before = len(sms.outbox)

        body = ok(post(sms, conversation_id, "handoff", {"reason": "billing question"}))
        assert body["id"] == conversation_id
        assert body["handoff"] == {"reason": "billing question", "since": START.isoformat()}
        assert sms.conversation(conversation_id)["handoff"] == body["handoff"]

        sms.inbound_ok(USER, "are you a person?")
        assert agent.texts == ["hello"]  # not given to the agent
        assert len(sms.outbox) == outbox_before  # and nothing answered
        last = messages(sms, conversation_id)[-1]
        assert (last["kind"], last["body"], last["status"]) == (
            "user",
            "are you a person?",
            "handled",
        )


def test_a_conversation_not_handed_off_shows_null(sms):
    conversation_id = sms.send_ok(USER)["conversation_id"]
    assert sms.conversation(conversation_id)["handoff"] is None
    (listed,) = sms.conversations()
    assert listed["handoff"] is None


def test_handoff_without_a_body_and_twice_keeps_the_first(sms, recorder):
    with freeze_time(START) as clock:
        conversation_id = start(sms)
        first = ok(post(sms, conversation_id, "handoff"))
        assert first["handoff"] == {"reason": None, "since": START.isoformat()}
        clock.tick(timedelta(minutes=5))
        again = ok(post(sms, conversation_id, "handoff", {"reason": "later"}))
        assert again["handoff"] == first["handoff"]
    assert len(recorder.kwargs("handoff_requested")) == 1


def test_the_agent_hands_off_and_its_reply_is_still_sent(sms, agent, recorder):
    def hand_off(conv, text):
        conv.handoff("wants a human")
        return "Connecting you with a person"

    conversation_id = sms.send_ok(USER)["conversation_id"]
    agent.action = hand_off
    sms.inbound_ok(USER, "human please")
    assert sms.outbox[-1]["body"] == "Connecting you with a person"
    assert sms.outbox[-1]["from"] == AGENT

    conversation = sms.conversation(conversation_id)
    assert conversation["handoff"]["reason"] == "wants a human"
    (handed,) = recorder.kwargs("handoff_requested")
    assert handed["conversation"]["id"] == conversation_id
    assert handed["conversation"]["handoff"]["reason"] == "wants a human"
    assert handed["project_id"] == sms.tenant.project_id

    sms.inbound_ok(USER, "hello?")
    assert agent.texts == ["human please"]


def test_a_message_waiting_for_its_turn_when_the_handoff_comes_is_not_given_to_the_agent(
    sms, agent
):
    # The manual scheduler holds jobs while a unit of work runs: the message is recorded for
    # the agent, then the conversation is handed off before its turn runs.
    conversation_id = start(sms)
    state = get_state(sms.app)
    from flask_polysms.services import operators

    with sms.app.app_context():

        def both():
            sms.inbound_ok(USER, "one more thing")
            operators.hand_off(state, conversation_id, "racing")

        unit_of_work(state, both)
    assert agent.texts == ["hello"]
    last = [m for m in messages(sms, conversation_id) if m["kind"] == "user"][-1]
    assert (last["body"], last["status"]) == ("one more thing", "handled")


def test_timers_do_not_fire_while_handed_off_and_start_again_on_resume(sms, agent):
    settings = get_state(sms.app).settings
    with freeze_time(START) as clock:
        conversation_id = start(sms)
        ok(post(sms, conversation_id, "handoff", {"reason": "x"}))
        clock.tick(timedelta(days=3))
        assert fire(sms) == 0
        sms.inbound_ok(USER, "still there?")  # activity during the handoff sets no timer
        clock.tick(timedelta(days=3))
        assert fire(sms) == 0
        conversation = sms.conversation(conversation_id)
        assert conversation["state"] == "active"
        assert [m["kind"] for m in conversation["messages"]].count("warning") == 0

        resumed = ok(post(sms, conversation_id, "resume"))
        assert resumed["handoff"] is None
        assert resumed["state"] == "active"
        clock.tick(settings.idle_timeout - timedelta(seconds=1))
        assert fire(sms) == 0
        clock.tick(timedelta(seconds=1))
        assert fire(sms) == 1
        conversation = sms.conversation(conversation_id)
        assert conversation["state"] == "warned"
        assert conversation["messages"][-1]["kind"] == "warning"
        clock.tick(settings.grace_period)
        assert fire(sms) == 1
        closed = sms.conversation(conversation_id)
        assert (closed["state"], closed["end_reason"]) == ("closed", "inactivity")


def test_a_handoff_during_the_warning_stops_the_close(sms):
    settings = get_state(sms.app).settings
    with freeze_time(START) as clock:
        conversation_id = start(sms)
        clock.tick(settings.idle_timeout)
        assert fire(sms) == 1
        assert sms.conversation(conversation_id)["state"] == "warned"
        handed = ok(post(sms, conversation_id, "handoff"))
        assert handed["state"] == "active"
        clock.tick(settings.grace_period * 10)
        assert fire(sms) == 0
        conversation = sms.conversation(conversation_id)
        assert conversation["state"] == "active"
        assert "closing" not in [m["kind"] for m in conversation["messages"]]


def test_after_resume_the_agent_answers_the_next_message(sms, agent):
    conversation_id = start(sms)
    ok(post(sms, conversation_id, "handoff"))
    sms.inbound_ok(USER, "for the person")
    ok(post(sms, conversation_id, "resume"))
    sms.inbound_ok(USER, "for the agent")
    assert agent.texts == ["hello", "for the agent"]
    assert sms.outbox[-1]["body"] == "Got it"


def test_resume_of_a_conversation_not_handed_off_changes_nothing(sms):
    with freeze_time(START) as clock:
        conversation_id = start(sms)
        before = sms.conversation(conversation_id)
        clock.tick(timedelta(hours=1))
        after = ok(post(sms, conversation_id, "resume"))
        assert after == before


# -- a person's messages --------------------------------------------------------------------------
def test_a_person_writes_without_a_handoff(sms, recorder):
    conversation_id = start(sms)
    body = ok(post(sms, conversation_id, "messages", {"message": "Hi, Sam here"}), 202)
    assert body["kind"] == "human"
    assert body["direction"] == "outbound"
    assert body["body"] == "Hi, Sam here"
    assert body["status"] == "sent"  # the manual scheduler sent it already
    sent = sms.outbox[-1]
    assert (sent["to"], sent["from"], sent["body"]) == (USER, AGENT, "Hi, Sam here")
    assert messages(sms, conversation_id)[-1]["id"] == body["id"]
    (changed,) = [
        k for k in recorder.kwargs("message_status_changed") if k["message"]["id"] == body["id"]
    ]
    assert changed["message"]["status"] == "sent"


def test_a_person_writes_during_a_handoff_with_pictures(sms):
    conversation_id = start(sms)
    ok(post(sms, conversation_id, "handoff"))
    pictures = ["https://example.org/map.png"]
    body = ok(
        post(sms, conversation_id, "messages", {"message": "Here", "media_urls": pictures}), 202
    )
    assert body["media"] == [{"url": pictures[0], "content_type": None}]
    assert sms.outbox[-1]["media_urls"] == pictures


@pytest.mark.parametrize(
    "body",
    [
        {"message": "hi", "unknown": 1},
        {},
        {"message": ""},
        {"message": "x" * 1601},
        {"message": "hi", "media_urls": []},
        {"message": "hi", "media_urls": ["http://example.org/a.png"]},
    ],
)
def test_a_bad_message_body_is_400_and_sends_nothing(sms, body):
    conversation_id = start(sms)
    before = messages(sms, conversation_id)
    outbox = len(sms.outbox)
    response = post(sms, conversation_id, "messages", body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert set(response.get_json()) <= {"detail", "errors"}
    assert messages(sms, conversation_id) == before
    assert len(sms.outbox) == outbox


def test_a_bad_handoff_body_is_400(sms):
    conversation_id = start(sms)
    for body in ({"reason": "x", "other": 1}, {"reason": 5}, {"reason": "x" * 501}):
        response = post(sms, conversation_id, "handoff", body)
        assert response.status_code == 400, body
    assert sms.conversation(conversation_id)["handoff"] is None


def test_a_person_s_message_to_an_opted_out_user_is_suppressed(sms):
    conversation_id = start(sms)
    sms.inbound_ok(USER, "STOP")
    outbox = len(sms.outbox)
    body = ok(post(sms, conversation_id, "messages", {"message": "Are you sure?"}), 202)
    assert (body["status"], body["drop_reason"]) == ("suppressed", "opted_out")
    assert len(sms.outbox) == outbox


def test_a_person_s_message_is_idempotent_with_a_key(sms):
    conversation_id = start(sms)
    key = {"Idempotency-Key": "operator-msg-1"}
    first = post(sms, conversation_id, "messages", {"message": "Once"}, headers=key)
    again = post(sms, conversation_id, "messages", {"message": "Once"}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = post(sms, conversation_id, "messages", {"message": "Another"}, headers=key)
    assert other.status_code == 422
    assert [m["body"] for m in sms.outbox].count("Once") == 1
    assert [m["body"] for m in messages(sms, conversation_id)].count("Once") == 1


def test_a_person_s_message_counts_against_the_outbound_rate_limit(make_sms, storage_url):
    sms = make_sms(
        numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url, POLYSMS_RATE_LIMIT="2 per hour"
    )
    try:
        conversation_id = sms.send_ok(USER)["conversation_id"]  # 1
        ok(post(sms, conversation_id, "messages", {"message": "two"}), 202)  # 2
        refused = post(sms, conversation_id, "messages", {"message": "three"})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert "three" not in [m["body"] for m in messages(sms, conversation_id)]
        assert sms.send(OTHER_USER).status_code == 429  # the same budget
    finally:
        get_state(sms.app).store.disconnect()


# -- end ------------------------------------------------------------------------------------------
def test_end_closes_with_reason_api_and_no_closing_text(sms, recorder):
    with freeze_time(START):
        conversation_id = start(sms)
        outbox = len(sms.outbox)
        body = ok(post(sms, conversation_id, "end"))
    assert (body["state"], body["end_reason"]) == ("closed", "api")
    assert body["closed_at"] == START.isoformat()
    assert len(sms.outbox) == outbox
    assert "closing" not in [m["kind"] for m in body["messages"]]
    (closed,) = recorder.kwargs("conversation_closed")
    assert closed["conversation"]["end_reason"] == "api"


def test_end_during_a_handoff(sms):
    conversation_id = start(sms)
    ok(post(sms, conversation_id, "handoff"))
    assert ok(post(sms, conversation_id, "end"))["state"] == "closed"
    assert fire(sms) == 0


@pytest.mark.parametrize(
    "action,body",
    [
        ("handoff", {"reason": "x"}),
        ("messages", {"message": "hi"}),
        ("resume", None),
        ("end", None),
    ],
)
def test_operator_routes_on_a_closed_conversation_are_409(sms, action, body):
    conversation_id = start(sms)
    ok(post(sms, conversation_id, "end"))
    before = sms.conversation(conversation_id)
    outbox = len(sms.outbox)
    response = post(sms, conversation_id, action, body)
    assert response.status_code == 409, response.get_data(as_text=True)
    assert response.get_json()["detail"]
    assert sms.conversation(conversation_id) == before
    assert len(sms.outbox) == outbox


def test_a_closed_conversation_refuses_conv_handoff(sms, agent):
    from flask_polysms.errors import ConflictError
    from flask_polysms.services.conversation import Conversation

    conversation_id = start(sms)
    ok(post(sms, conversation_id, "end"))
    with sms.app.app_context():
        state = get_state(sms.app)
        conv = Conversation(state, state.store.get_session(conversation_id))
        with pytest.raises(ConflictError):
            conv.handoff("too late")


@pytest.mark.parametrize(
    "action,body",
    [
        ("handoff", {"reason": "x"}),
        ("messages", {"message": "hi"}),
        ("resume", None),
        ("end", None),
    ],
)
def test_operator_routes_across_projects_and_environments_are_404(sms, action, body):
    conversation_id = start(sms)
    other = sms.provision(numbers=("+14155552679",))
    with sms.app.app_context():
        state = get_state(sms.app)
        provisioning.add_sender(state, sms.tenant.project_id, SANDBOX_NUMBER, "sandbox")
        connector = provisioning.create_connector(state, sms.tenant.project_id, "sandbox")
    sandbox = SimpleNamespace(headers={**sms.tenant.headers, CONNECTOR_HEADER: connector.id})
    before = sms.conversation(conversation_id)
    outbox = len(sms.outbox)
    for tenant in (other, sandbox):
        response = post(sms, conversation_id, action, body, tenant=tenant)
        assert response.status_code == 404, response.get_data(as_text=True)
    assert post(sms, "conv_does_not_exist", action, body).status_code == 404
    assert sms.conversation(conversation_id) == before
    assert len(sms.outbox) == outbox


# -- concurrency (real threads, on the database servers) -------------------------------------------
SERVERS = [b for b in BACKENDS if b not in ("memory", "sqlite")]
THREADS = 8


@pytest.fixture(params=SERVERS)
def server_sms(request, make_sms, tmp_path, agent):
    harness = make_sms(
        agent=agent,
        numbers=(AGENT,),
        POLYSMS_STORAGE_URL=store_backends.storage_url(request, request.param, tmp_path),
        POLYSMS_READ_RATE_LIMIT="10000 per second",
    )
    yield harness
    get_state(harness.app).store.disconnect()


def _at_once(sms, conversation_id: str, actions: list[str]) -> list:
    barrier = threading.Barrier(len(actions))
    responses = []
    lock = threading.Lock()

    def attempt(action):
        client = sms.app.test_client()
        barrier.wait()
        response = client.post(
            f"/v1/conversations/{conversation_id}/{action}", headers=sms.tenant.headers
        )
        with lock:
            responses.append((action, response.status_code))

    threads = [threading.Thread(target=attempt, args=(a,)) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(responses) == len(actions)
    return responses


def test_concurrent_handoffs_signal_once(server_sms):
    sms = server_sms
    conversation_id = start(sms)
    recorder = Recorder(sms.app)
    try:
        responses = _at_once(sms, conversation_id, ["handoff"] * THREADS)
        assert {code for _, code in responses} == {200}
        assert len(recorder.kwargs("handoff_requested")) == 1
    finally:
        recorder.disconnect()


def test_concurrent_ends_close_once(server_sms):
    sms = server_sms
    conversation_id = start(sms)
    recorder = Recorder(sms.app)
    try:
        responses = _at_once(sms, conversation_id, ["end"] * THREADS)
        codes = sorted(code for _, code in responses)
        assert codes == [200] + [409] * (THREADS - 1)
        assert len(recorder.kwargs("conversation_closed")) == 1
    finally:
        recorder.disconnect()
