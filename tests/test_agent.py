"""Sessions and the host app's agent: which session an inbound message joins,
the engaged flag, the agent as a job with its ``conv``, persisted ``conv.state``,
``conv.send_sms``, and an agent that raises."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest
from freezegun import freeze_time

AGENT = "+14155552671"
OTHER_AGENT = "+14155552672"
USER = "+14155552674"
OTHER_USER = "+14155552675"


def wait_until(predicate, timeout: float = 10.0):
    """Poll until ``predicate()`` is truthy; fail (not time) the test if it never is."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)
    return value


class Recorder:
    """An agent that records every ``conv`` it is given and answers ``reply(conv, text)``."""

    def __init__(self, reply=None) -> None:
        self.seen: list[dict] = []
        self.reply = reply or (lambda conv, text: f"you said: {text}")

    def __call__(self, conv, text):
        self.seen.append(
            {
                "text": text,
                "id": conv.id,
                "project_id": conv.project_id,
                "env": conv.env,
                "channel_type": conv.channel_type,
                "caller_number": conv.caller_number,
                "agent_number": conv.agent_number,
                "history": [(m["direction"], m["kind"], m["body"]) for m in conv.history],
                "state": dict(conv.state),
            }
        )
        return self.reply(conv, text)


@pytest.fixture
def agent():
    return Recorder()


@pytest.fixture
def sms(make_sms, agent):
    return make_sms(agent=agent, numbers=(AGENT, OTHER_AGENT))


# -- which session an inbound message joins --------------------------------------------------------


def test_a_reply_joins_the_open_session_and_the_agent_sees_the_greeting_first(sms, agent):
    conversation_id = sms.send_ok(USER, "Your table for 2 is at 8pm", agent_number=AGENT)[
        "conversation_id"
    ]

    sms.inbound_ok(USER, "Can we make it 9?", to=AGENT)

    [seen] = agent.seen
    assert seen["id"] == conversation_id
    assert seen["history"] == [
        ("outbound", "greeting", "Your table for 2 is at 8pm"),
        ("inbound", "user", "Can we make it 9?"),
    ]
    assert (seen["caller_number"], seen["agent_number"]) == (USER, AGENT)
    assert (seen["env"], seen["channel_type"]) == ("live", "sms")
    assert seen["project_id"] == sms.tenant.project_id
    conversation = sms.conversation(conversation_id)
    assert [(m["direction"], m["kind"], m["body"]) for m in conversation["messages"]] == [
        ("outbound", "greeting", "Your table for 2 is at 8pm"),
        ("inbound", "user", "Can we make it 9?"),
        ("outbound", "agent", "you said: Can we make it 9?"),
    ]
    assert len(sms.conversations()) == 1


def test_the_reply_goes_out_from_the_sessions_number(sms):
    sms.send_ok(USER, "Hello", agent_number=OTHER_AGENT)

    sms.inbound_ok(USER, "Hi", to=OTHER_AGENT)

    assert [(m["from"], m["to"], m["body"]) for m in sms.outbox] == [
        (OTHER_AGENT, USER, "Hello"),
        (OTHER_AGENT, USER, "you said: Hi"),
    ]


def test_a_message_to_another_number_opens_another_session(sms, agent):
    first = sms.send_ok(USER, "Hello", agent_number=AGENT)["conversation_id"]

    sms.inbound_ok(USER, "Who is this?", to=OTHER_AGENT)

    [seen] = agent.seen
    assert seen["id"] != first
    assert seen["agent_number"] == OTHER_AGENT
    assert seen["history"] == [("inbound", "user", "Who is this?")]
    assert len(sms.conversation(first)["messages"]) == 1
    assert sms.outbox[-1]["from"] == OTHER_AGENT


def test_another_user_gets_another_session(sms, agent):
    sms.send_ok(USER, "Hello", agent_number=AGENT)

    sms.inbound_ok(OTHER_USER, "Hi there", to=AGENT)

    assert agent.seen[0]["caller_number"] == OTHER_USER
    assert agent.seen[0]["history"] == [("inbound", "user", "Hi there")]
    assert len(sms.conversations()) == 2


def test_without_an_open_session_an_inbound_message_opens_one(sms, agent):
    sms.inbound_ok(USER, "Hi, are you open today?", to=AGENT)
    sms.inbound_ok(USER, "And tomorrow?", to=AGENT)

    [conversation] = sms.conversations()
    assert (conversation["user_number"], conversation["agent_number"]) == (USER, AGENT)
    assert conversation["state"] == "active" and conversation["engaged"] is True
    assert [m["kind"] for m in conversation["messages"]] == ["user", "agent", "user", "agent"]
    assert agent.seen[1]["history"][:3] == [
        ("inbound", "user", "Hi, are you open today?"),
        ("outbound", "agent", "you said: Hi, are you open today?"),
        ("inbound", "user", "And tomorrow?"),
    ]
    assert sms.metrics()["conversations"] == 1


def test_a_session_closed_by_the_agent_is_never_reopened(make_sms):
    def answer(conv, text):
        if text == "bye":
            conv.end()
            return None
        return "ok"

    sms = make_sms(agent=answer, numbers=(AGENT,))
    first = sms.send_ok(USER, "Hello", agent_number=AGENT)["conversation_id"]
    sms.inbound_ok(USER, "bye", to=AGENT)
    closed = sms.conversation(first)
    assert (closed["state"], closed["end_reason"]) == ("closed", "agent")
    assert closed["closed_at"] is not None

    sms.inbound_ok(USER, "wait, one more thing", to=AGENT)

    assert sms.conversation(first) == closed
    [new] = sms.conversations(state="active")
    assert new["id"] != first
    assert [m["body"] for m in new["messages"]] == ["wait, one more thing", "ok"]


def test_a_session_closed_by_inactivity_is_never_reopened(sms, agent):
    with freeze_time("2026-06-01 12:00:00") as clock:
        first = sms.send_ok(USER, "Hello", agent_number=AGENT)["conversation_id"]
        clock.tick(timedelta(hours=24, seconds=1))
        sms.run_due_timers()
        assert sms.conversation(first)["end_reason"] == "unengaged"

        sms.inbound_ok(USER, "Sorry, only saw this now", to=AGENT)

        closed = sms.conversation(first)
        active = sms.conversations(state="active")
    assert closed["state"] == "closed" and len(closed["messages"]) == 1
    assert [c["id"] for c in active] == [agent.seen[0]["id"]]
    assert agent.seen[0]["id"] != first


def test_the_engaged_flag_is_set_by_the_users_first_message(sms):
    conversation_id = sms.send_ok(USER, "Hello", agent_number=AGENT)["conversation_id"]
    assert sms.conversation(conversation_id)["engaged"] is False

    sms.inbound_ok(USER, "HELP", to=AGENT)
    assert sms.conversation(conversation_id)["engaged"] is False

    sms.inbound_ok(USER, "Hi!", to=AGENT)
    assert sms.conversation(conversation_id)["engaged"] is True


# -- the agent and its conv ------------------------------------------------------------------------


def test_conv_state_is_kept_across_messages(make_sms):
    def count(conv, text):
        conv.state["turns"] = conv.state.get("turns", 0) + 1
        conv.state.setdefault("first", text)
        if text == "quiet":
            return None  # no reply, but the state is still saved
        return f"turn {conv.state['turns']}, first was {conv.state['first']}"

    sms = make_sms(agent=count, numbers=(AGENT,))
    for text in ("hello", "quiet", "again"):
        sms.inbound_ok(USER, text, to=AGENT)

    assert [m["body"] for m in sms.outbox] == ["turn 1, first was hello", "turn 3, first was hello"]
    [conversation] = sms.conversations()
    with sms.app.app_context():
        assert sms.store.get_session(conversation["id"]).data == {"turns": 3, "first": "hello"}


def test_conv_state_is_per_session(make_sms):
    def count(conv, text):
        conv.state["turns"] = conv.state.get("turns", 0) + 1
        return f"turn {conv.state['turns']}"

    sms = make_sms(agent=count, numbers=(AGENT,))
    sms.inbound_ok(USER, "a", to=AGENT)
    sms.inbound_ok(OTHER_USER, "b", to=AGENT)
    sms.inbound_ok(USER, "c", to=AGENT)

    assert [(m["to"], m["body"]) for m in sms.outbox] == [
        (USER, "turn 1"),
        (OTHER_USER, "turn 1"),
        (USER, "turn 2"),
    ]


def test_conv_send_sms_sends_and_is_logged_in_the_session(make_sms):
    results = []

    def answer(conv, text):
        results.append(conv.send_sms(conv.caller_number, OTHER_AGENT, "Here is the menu link"))
        return "I sent you the menu from our other line"

    sms = make_sms(agent=answer, numbers=(AGENT, OTHER_AGENT))
    conversation_id = sms.send_ok(USER, "Hello", agent_number=AGENT)["conversation_id"]

    sms.inbound_ok(USER, "menu please", to=AGENT)

    [result] = results
    assert result["status"] == "sent"
    assert (result["to"], result["from"], result["body"]) == (
        USER,
        OTHER_AGENT,
        "Here is the menu link",
    )
    assert [(m["from"], m["body"]) for m in sms.outbox[1:]] == [
        (OTHER_AGENT, "Here is the menu link"),
        (AGENT, "I sent you the menu from our other line"),
    ]
    assert result["twilio_sid"] == sms.outbox[1]["sid"]
    sends = sms.conversation(conversation_id)["metadata"]["sms_sends"]
    assert [(s["from"], s["status"]) for s in sends] == [
        (AGENT, "sent"),
        (OTHER_AGENT, "sent"),
        (AGENT, "sent"),
    ]


def test_conv_send_sms_refuses_a_sender_of_another_project(make_sms):
    attempts = []

    def answer(conv, text):
        try:
            conv.send_sms(conv.caller_number, "+14155552678", "sneaky")
        except ValueError as exc:
            attempts.append(str(exc))
        return "fine"

    sms = make_sms(agent=answer, numbers=(AGENT,))
    sms.provision(numbers=("+14155552678",))

    sms.inbound_ok(USER, "hi", to=AGENT)

    assert len(attempts) == 1 and "+14155552678" in attempts[0]
    assert [m["body"] for m in sms.outbox] == ["fine"]


def test_an_agent_that_raises_is_logged_counted_and_the_session_stays_usable(make_sms, caplog):
    def answer(conv, text):
        conv.state["seen"] = conv.state.get("seen", 0) + 1
        if text == "boom":
            raise RuntimeError("the agent fell over")
        return f"seen {conv.state['seen']}"

    sms = make_sms(agent=answer, numbers=(AGENT,))
    conversation_id = sms.send_ok(USER, "Hello", agent_number=AGENT)["conversation_id"]

    with caplog.at_level(logging.ERROR, logger="flask_polysms"):
        response = sms.inbound(USER, "boom", to=AGENT)

    assert response.status_code == 200  # Twilio is never told about the agent's trouble
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert conversation_id in record.getMessage()
    assert record.exc_info and isinstance(record.exc_info[1], RuntimeError)
    assert sms.metrics()["agent_errors"] == 1
    conversation = sms.conversation(conversation_id)
    assert conversation["state"] == "active"
    assert [m["body"] for m in conversation["messages"]] == ["Hello", "boom"]

    sms.inbound_ok(USER, "still there?", to=AGENT)

    conversation = sms.conversation(conversation_id)
    assert [m["body"] for m in conversation["messages"]][-2:] == ["still there?", "seen 2"]
    assert sms.metrics()["agent_errors"] == 1


def test_without_an_agent_inbound_messages_are_recorded_only(make_sms):
    sms = make_sms(numbers=(AGENT,))

    sms.inbound_ok(USER, "anyone there?", to=AGENT)

    [conversation] = sms.conversations()
    assert [m["body"] for m in conversation["messages"]] == ["anyone there?"]
    assert sms.outbox == []


def test_the_agent_runs_as_a_job_after_twilio_has_its_answer(make_sms):
    started, release = threading.Event(), threading.Event()

    def slow(conv, text):
        started.set()
        release.wait(timeout=30)
        return f"answer to {text}"

    sms = make_sms(
        agent=slow,
        numbers=(AGENT,),
        POLYSMS_SCHEDULER="thread",
        POLYSMS_PUBLIC_URL="http://localhost",
    )
    # A testing app's requests start no background thread: the test starts it, as a server would.
    sms.state.scheduler.start()
    try:
        response = sms.inbound(USER, "a hard question", to=AGENT)

        # Twilio got its TwiML while the agent had not finished.
        assert response.status_code == 200
        assert not release.is_set()
        assert sms.outbox == []
        [conversation] = sms.conversations()
        assert [m["body"] for m in conversation["messages"]] == ["a hard question"]
        assert started.wait(timeout=30)
    finally:
        release.set()

    [reply] = wait_until(lambda: sms.outbox)
    assert (reply["from"], reply["to"], reply["body"]) == (AGENT, USER, "answer to a hard question")
    # The job ran outside the webhook's request: its message still asks for status callbacks.
    assert reply["status_callback"].startswith("http://localhost/v1/twilio/status?message_id=")


def test_a_reply_that_cannot_be_sent_counts_as_an_agent_error(make_sms, caplog):
    def verbose(conv, text):
        return "blah " * 400 if text == "tell me everything" else "short answer"

    sms = make_sms(agent=verbose, numbers=(AGENT,))

    with caplog.at_level(logging.ERROR, logger="flask_polysms"):
        response = sms.inbound(USER, "tell me everything", to=AGENT)

    assert response.status_code == 200  # Twilio still gets its TwiML
    assert sms.outbox == []
    assert sms.metrics()["agent_errors"] == 1
    assert any(r.levelno >= logging.ERROR for r in caplog.records)
    sms.inbound_ok(USER, "ok, briefly", to=AGENT)
    assert [m["body"] for m in sms.outbox] == ["short answer"]
