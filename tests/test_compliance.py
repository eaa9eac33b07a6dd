"""Compliance keywords and opt-outs and the inbound abuse limits, driven by
signed Twilio webhooks. The keyword normaliser itself is covered in test_keywords.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time

from flask_polysms.clock import utcnow

AGENT = "+14155552671"
OTHER_AGENT = "+14155552672"
USER = "+14155552674"
OTHER_USER = "+14155552675"
STOP_REPLY = (
    "You have been unsubscribed and will not receive further messages. Reply START to resubscribe."
)
START_REPLY = "You have been resubscribed and will receive messages again."
HELP_REPLY = "Reply STOP to unsubscribe or START to resubscribe."
START = "2026-05-04 10:00:00"
DAY = {"start": "2026-05-01", "end": "2026-05-31"}


class Agent:
    """The host app's agent: records what it was given and answers with a fixed text."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.extra_sends: list[tuple[str, str]] = []  # (to, from) sent with conv.send_sms
        self.before_reply = None

    def __call__(self, conv, text):
        self.calls.append(text)
        for to, sender in self.extra_sends:
            conv.send_sms(to, sender, f"extra to {to}")
        if self.before_reply is not None:
            self.before_reply(conv)
        return f"agent: {text}"


@pytest.fixture
def agent():
    return Agent()


@pytest.fixture
def sms(make_sms, agent):
    return make_sms(agent=agent, numbers=(AGENT, OTHER_AGENT))


def opted_out(sms, user: str = USER, sender: str = AGENT) -> bool:
    with sms.app.app_context():
        return sms.store.is_opted_out(user, sender)


def replies(sms) -> list[tuple[str, str, str]]:
    """(from, to, body) of everything handed to the gateway."""
    return [(m["from"], m["to"], m["body"]) for m in sms.outbox]


# -- STOP / START / HELP ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        " Stop! ",
        "STOP.",
        "STOPALL",
        "unsubscribe",
        "Cancel",
        "END",
        "quit?",
        "REVOKE",
        "optout;",
    ],
)
def test_stop_opts_the_pair_out_and_confirms(sms, agent, text):
    sms.inbound_ok(USER, text, to=AGENT)

    assert opted_out(sms)
    assert replies(sms) == [(AGENT, USER, STOP_REPLY)]
    assert agent.calls == []
    with sms.app.app_context():
        [event] = sms.store.opt_out_history(sms.tenant.project_id, USER, AGENT)
    assert (event.recipient, event.sender, event.action) == (USER, AGENT, "opt_out")
    assert event.keyword


@pytest.mark.parametrize("text", ["START", "yes", "Unstop."])
def test_start_opts_the_pair_back_in_and_confirms(sms, agent, text):
    sms.inbound_ok(USER, "STOP", to=AGENT)

    sms.inbound_ok(USER, text, to=AGENT)

    assert not opted_out(sms)
    assert replies(sms) == [(AGENT, USER, STOP_REPLY), (AGENT, USER, START_REPLY)]
    assert agent.calls == []
    with sms.app.app_context():
        history = sms.store.opt_out_history(sms.tenant.project_id, USER, AGENT)
    assert [e.action for e in history] == ["opt_out", "opt_in"]
    assert history[0].at <= history[1].at


@pytest.mark.parametrize("text", ["HELP", "help!", "Info"])
def test_help_answers_and_changes_nothing(sms, agent, text):
    sms.inbound_ok(USER, text, to=AGENT)

    assert replies(sms) == [(AGENT, USER, HELP_REPLY)]
    assert not opted_out(sms)
    assert agent.calls == []


def test_help_while_opted_out_is_answered_and_keeps_the_opt_out(sms):
    sms.inbound_ok(USER, "STOP", to=AGENT)

    sms.inbound_ok(USER, "HELP", to=AGENT)

    assert replies(sms)[-1] == (AGENT, USER, HELP_REPLY)
    assert opted_out(sms)


@pytest.mark.parametrize("text", ["STOP!!", "STOP PLEASE", "please stop", "S TOP", "starting"])
def test_a_message_that_only_contains_a_keyword_goes_to_the_agent(sms, agent, text):
    sms.inbound_ok(USER, text, to=AGENT)

    assert agent.calls == [text]
    assert not opted_out(sms)
    assert replies(sms) == [(AGENT, USER, f"agent: {text}")]


def test_a_second_stop_does_not_add_history(sms):
    sms.inbound_ok(USER, "STOP", to=AGENT)
    sms.inbound_ok(USER, "stop", to=AGENT)

    with sms.app.app_context():
        assert len(sms.store.opt_out_history(sms.tenant.project_id, USER, AGENT)) == 1
    # Each keyword message is still answered.
    assert replies(sms) == [(AGENT, USER, STOP_REPLY)] * 2


def test_keywords_in_a_session_are_recorded_there_but_never_reach_the_agent(sms, agent):
    conversation_id = sms.send_ok(USER, "Hi from the shop", agent_number=AGENT)["conversation_id"]

    for text in ("HELP", "STOP", "START"):
        sms.inbound_ok(USER, text, to=AGENT)

    assert agent.calls == []
    conversation = sms.conversation(conversation_id)
    assert conversation["engaged"] is False  # keywords do not engage the session
    assert [(m["direction"], m["kind"], m["body"]) for m in conversation["messages"]] == [
        ("outbound", "greeting", "Hi from the shop"),
        ("inbound", "compliance", "HELP"),
        ("outbound", "compliance", HELP_REPLY),
        ("inbound", "compliance", "STOP"),
        ("outbound", "compliance", STOP_REPLY),
        ("inbound", "compliance", "START"),
        ("outbound", "compliance", START_REPLY),
    ]


def test_keyword_replies_are_configurable_per_project(sms):
    other = sms.provision(numbers=("+14155552678",))
    with sms.app.app_context():
        sms.store.update_project(
            sms.tenant.project_id,
            settings={"keyword_replies": {"STOP": "Bye from the bistro.", "HELP": "Call 555."}},
        )

    sms.inbound_ok(USER, "HELP", to=AGENT)
    sms.inbound_ok(USER, "STOP", to=AGENT)
    sms.inbound_ok(USER, "START", to=AGENT)
    # The other project keeps the defaults.
    sms.inbound_ok(USER, "STOP", to="+14155552678", token=other.twilio_auth_token)

    assert replies(sms) == [
        (AGENT, USER, "Call 555."),
        (AGENT, USER, "Bye from the bistro."),
        (AGENT, USER, START_REPLY),  # not configured: the default
        ("+14155552678", USER, STOP_REPLY),
    ]
    assert not opted_out(sms) and opted_out(sms, USER, "+14155552678")


# -- the pair-level opt-out ------------------------------------------------------------------------


def test_the_opt_out_is_per_pair(sms, agent):
    sms.inbound_ok(USER, "STOP", to=AGENT)
    agent.extra_sends = []

    # Another number of the same project still reaches this user.
    other_number = sms.send_ok(USER, "From the other line", agent_number=OTHER_AGENT)
    # Another user still gets messages from the number.
    other_user = sms.send_ok(OTHER_USER, "Hello you", agent_number=AGENT)
    # And the opted-out pair does not.
    stopped = sms.send_ok(USER, "Hello again", agent_number=AGENT)

    assert (other_number["status"], other_user["status"], stopped["status"]) == (
        "sent",
        "sent",
        "suppressed",
    )
    assert replies(sms)[1:] == [
        (OTHER_AGENT, USER, "From the other line"),
        (AGENT, OTHER_USER, "Hello you"),
    ]
    assert not opted_out(sms, USER, OTHER_AGENT) and not opted_out(sms, OTHER_USER, AGENT)


def test_inbound_from_an_opted_out_pair_is_dropped_and_recorded(sms, agent):
    conversation_id = sms.send_ok(USER, "Hi", agent_number=AGENT)["conversation_id"]
    sms.inbound_ok(USER, "STOP", to=AGENT)
    sent_before = len(sms.outbox)

    response = sms.inbound(USER, "Actually, one more question", to=AGENT)

    assert response.status_code == 200  # Twilio always gets 200
    assert agent.calls == []
    assert len(sms.outbox) == sent_before  # not answered
    conversation = sms.conversation(conversation_id)
    dropped = conversation["messages"][-1]
    assert (dropped["direction"], dropped["body"]) == ("inbound", "Actually, one more question")
    assert dropped["status"] == "dropped" and dropped["drop_reason"] == "opted_out"
    assert conversation["engaged"] is False
    # The same user writing to the project's other number is served as usual.
    sms.inbound_ok(USER, "Hello other line", to=OTHER_AGENT)
    assert agent.calls == ["Hello other line"]
    assert replies(sms)[-1] == (OTHER_AGENT, USER, "agent: Hello other line")


def test_after_start_messages_flow_again(sms, agent):
    sms.inbound_ok(USER, "STOP", to=AGENT)
    sms.inbound_ok(USER, "START", to=AGENT)

    sms.inbound_ok(USER, "Hi again", to=AGENT)
    body = sms.send_ok(USER, "Welcome back", agent_number=AGENT)

    assert agent.calls == ["Hi again"]
    assert body["status"] == "sent"
    assert replies(sms)[-2:] == [
        (AGENT, USER, "agent: Hi again"),
        (AGENT, USER, "Welcome back"),
    ]


# -- every kind of outbound send to an opted-out pair is suppressed --------------------------------


def test_an_api_greeting_to_an_opted_out_pair_is_suppressed(sms):
    sms.inbound_ok(USER, "STOP", to=AGENT)

    response = sms.send(USER, "Big sale!", agent_number=AGENT)

    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "suppressed"
    [greeting] = sms.conversation(body["conversation_id"])["messages"]
    assert greeting["status"] == "suppressed"
    assert replies(sms) == [(AGENT, USER, STOP_REPLY)]
    assert sms.metrics()["suppressed"] == 1


def test_a_conv_send_sms_to_an_opted_out_pair_returns_success_and_is_suppressed(sms, agent):
    sms.inbound_ok(USER, "STOP", to=OTHER_AGENT)
    results = []
    agent.before_reply = lambda conv: results.append(
        conv.send_sms(conv.caller_number, OTHER_AGENT, "A coupon from the other line")
    )

    sms.inbound_ok(USER, "What's new?", to=AGENT)

    [result] = results
    assert result["status"] == "suppressed"
    assert result["body"] == "A coupon from the other line"
    # The agent's own reply, from the number not opted out, went out.
    assert replies(sms) == [
        (OTHER_AGENT, USER, STOP_REPLY),
        (AGENT, USER, "agent: What's new?"),
    ]
    [conversation] = sms.conversations(user_number=USER)
    sends = {s["from"]: s["status"] for s in conversation["metadata"]["sms_sends"]}
    assert sends == {OTHER_AGENT: "suppressed", AGENT: "sent"}


def test_an_agent_reply_is_checked_at_send_time(sms, agent):
    # The user's STOP lands while the agent is still thinking about their previous message.
    def stop_arrives(conv):
        sms.inbound_ok(USER, "STOP", to=AGENT)

    agent.before_reply = stop_arrives

    sms.inbound_ok(USER, "Tell me about the menu", to=AGENT)

    assert agent.calls == ["Tell me about the menu"]
    assert replies(sms) == [(AGENT, USER, STOP_REPLY)]
    [conversation] = sms.conversations()
    reply = conversation["messages"][-1]
    assert (reply["kind"], reply["body"]) == ("agent", "agent: Tell me about the menu")
    assert reply["status"] == "suppressed"


def test_the_inactivity_warning_to_an_opted_out_pair_is_suppressed(sms):
    with freeze_time(START) as clock:
        conversation_id = sms.send_ok(USER, "Hi", agent_number=AGENT)["conversation_id"]
        sms.inbound_ok(USER, "Hello", to=AGENT)  # engaged
        sms.inbound_ok(USER, "STOP", to=AGENT)
        handed = len(sms.outbox)

        clock.tick(timedelta(hours=24, seconds=1))
        sms.run_due_timers()

        conversation = sms.conversation(conversation_id)
        metrics = sms.metrics(**DAY)

    assert conversation["state"] == "warned"
    warning = conversation["messages"][-1]
    assert warning["kind"] == "warning" and warning["status"] == "suppressed"
    assert len(sms.outbox) == handed
    assert metrics["suppressed"] == 1


# -- inbound abuse limits --------------------------------------------------------------------------


def real_now():
    # The `limits` memory storage expires entries from a threading.Timer, and freezegun gives
    # threads started by `threading` the real time: freezing at the real time and only moving
    # forward keeps the two clocks from disagreeing about what has expired.
    return utcnow()


def dropped_reasons(sms) -> list[str]:
    with sms.app.app_context():
        sessions, _ = sms.store.list_sessions(sms.tenant.project_id, limit=200)
        messages = [m for s in sessions for m in sms.store.list_messages(s.id)]
    return [m.drop_reason for m in messages if m.status == "dropped"]


def test_a_sender_is_limited_to_10_messages_a_minute(sms, agent):
    with freeze_time(real_now()) as clock:
        for n in range(10):
            sms.inbound_ok(USER, f"question {n}", to=AGENT)
            clock.tick(timedelta(seconds=1))

        response = sms.inbound(USER, "question 10", to=AGENT)

        assert response.status_code == 200
        assert len(agent.calls) == 10
        assert dropped_reasons(sms) == ["sender_rate_limited"]
        # Keywords are exempt, and other senders are not affected.
        sms.inbound_ok(USER, "HELP", to=AGENT)
        sms.inbound_ok(OTHER_USER, "my first question", to=AGENT)
        assert replies(sms)[-2:] == [
            (AGENT, USER, HELP_REPLY),
            (AGENT, OTHER_USER, "agent: my first question"),
        ]
        # A minute after the first message, the sender has room again.
        clock.tick(timedelta(seconds=55))
        sms.inbound_ok(USER, "question 11", to=AGENT)
        assert agent.calls[-1] == "question 11"
        metrics = sms.metrics()

    assert metrics["inbound_dropped"] == 1


def test_a_stop_is_honoured_even_when_the_sender_is_over_the_limit(sms, agent):
    with freeze_time(real_now()):
        for n in range(12):
            sms.inbound_ok(USER, f"spam {n}", to=AGENT)

        sms.inbound_ok(USER, "STOP", to=AGENT)

    assert len(agent.calls) == 10
    assert opted_out(sms)
    assert replies(sms)[-1] == (AGENT, USER, STOP_REPLY)


def test_a_project_is_limited_to_100_inbound_messages_a_minute(make_sms, agent):
    sms = make_sms(agent=agent, numbers=(AGENT,), POLYSMS_RATE_LIMIT="1000 per second")
    other = sms.provision(numbers=("+14155552678",))
    users = [f"+1415555{2700 + n}" for n in range(11)]
    with freeze_time(real_now()):
        for user in users[:10]:
            for n in range(10):
                sms.inbound_ok(user, f"{user} question {n}", to=AGENT)
        assert len(agent.calls) == 100

        sid = sms.new_sid()
        response = sms.inbound(users[10], "one more", to=AGENT, sid=sid)

        assert response.status_code == 200
        assert len(agent.calls) == 100
        # Recorded, with the reason, though the sender has no session to put it in.
        with sms.app.app_context():
            dropped = sms.store.get_message_by_sid(sid)
        assert (dropped.status, dropped.drop_reason) == ("dropped", "project_rate_limited")
        assert (dropped.from_, dropped.body) == (users[10], "one more")
        # Keywords still work for the project, and another project has its own allowance.
        sms.inbound_ok(users[10], "STOP", to=AGENT)
        assert opted_out(sms, users[10], AGENT)
        sms.inbound_ok(
            users[10], "hello other project", to=other.numbers[0], token=other.twilio_auth_token
        )
        assert agent.calls[-1] == "hello other project"


def test_the_same_text_five_times_blocks_the_sender_for_ten_minutes(sms, agent):
    with freeze_time(real_now()) as clock:
        for _ in range(5):
            sms.inbound_ok(USER, "WIN A PRIZE", to=AGENT)
            clock.tick(timedelta(seconds=30))
        accepted = len(agent.calls)

        sms.inbound_ok(USER, "win a prize", to=AGENT)
        assert dropped_reasons(sms) == ["duplicate_text"]

        # Blocked: even a different text is dropped, for ten minutes.
        clock.tick(timedelta(minutes=5))
        sms.inbound_ok(USER, "a real question", to=AGENT)
        assert len(agent.calls) == accepted
        assert sorted(dropped_reasons(sms)) == ["blocked", "duplicate_text"]
        # Keywords are exempt from the block.
        sms.inbound_ok(USER, "HELP", to=AGENT)
        assert replies(sms)[-1] == (AGENT, USER, HELP_REPLY)
        # Another sender is not blocked.
        sms.inbound_ok(OTHER_USER, "WIN A PRIZE", to=AGENT)
        assert agent.calls[-1] == "WIN A PRIZE"

        clock.tick(timedelta(minutes=5, seconds=30))
        sms.inbound_ok(USER, "a real question", to=AGENT)
        assert agent.calls[-1] == "a real question"

    assert accepted == 5
