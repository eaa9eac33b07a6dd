"""Session inactivity lifecycle with the manual scheduler under freezegun."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from freezegun import freeze_time

from flask_polysms import PolySMS, get_state
from flask_polysms.config import DEFAULT_CLOSING_MESSAGE
from flask_polysms.testing import provision, sign_twilio_request

AGENT = "+14155552671"
USER = "+14155552672"
START = "2026-03-02 09:00:00"


@pytest.fixture
def polysms():
    ext = PolySMS()

    @ext.agent
    def answer(conv, text):
        return f"you said {text}"

    return ext


@pytest.fixture
def app(polysms):
    app = Flask(__name__)
    app.testing = True
    app.config.update(SECRET_KEY="test", POLYSMS_GATEWAY="outbox")
    polysms.init_app(app)
    return app


@pytest.fixture
def tenant(app):
    return provision(app, numbers=(AGENT,))


class Phone:
    """The user's side: sends signed inbound webhooks."""

    def __init__(self, app, tenant):
        self.client = app.test_client()
        self.tenant = tenant
        self.count = 0

    def send(self, body: str, user: str = USER) -> None:
        self.count += 1
        params = {
            "MessageSid": f"SM{self.count:032x}",
            "From": user,
            "To": AGENT,
            "Body": body,
        }
        url = "http://localhost/v1/twilio/sms"
        signature = sign_twilio_request(url, params, self.tenant.twilio_auth_token)
        response = self.client.post(
            "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
        )
        assert response.status_code == 200


@pytest.fixture
def phone(app, tenant):
    return Phone(app, tenant)


def start_conversation(app, tenant) -> str:
    response = app.test_client().post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "Hello!"}, headers=tenant.headers
    )
    assert response.status_code == 202
    return response.json["conversation_id"]


def session(app, conversation_id):
    with app.app_context():
        return get_state(app).store.get_session(conversation_id)


def bodies(app, polysms):
    with app.app_context():
        return [m["body"] for m in polysms.outbox]


def kinds(app, conversation_id):
    with app.app_context():
        return [m.kind for m in get_state(app).store.list_messages(conversation_id)]


def fire(app, polysms) -> int:
    with app.app_context():
        return polysms.run_due_timers()


def test_engaged_session_warned_at_exactly_24h_not_before(app, tenant, phone, polysms):
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        phone.send("hi there")
        clock.tick(timedelta(hours=24) - timedelta(seconds=1))
        assert fire(app, polysms) == 0
        assert session(app, conv).state == "active"
        clock.tick(timedelta(seconds=1))
        assert fire(app, polysms) == 1
        s = session(app, conv)
        assert s.state == "warned"
        assert bodies(app, polysms)[-1] == get_state(app).settings.warning_message
        assert kinds(app, conv)[-1] == "warning"


def test_no_reply_in_grace_closes_with_closing_message_at_10_minutes(app, tenant, phone, polysms):
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        phone.send("hi")
        clock.tick(timedelta(hours=24))
        assert fire(app, polysms) == 1
        clock.tick(timedelta(minutes=9, seconds=59))
        assert fire(app, polysms) == 0
        assert session(app, conv).state == "warned"
        clock.tick(timedelta(seconds=1))
        assert fire(app, polysms) == 1
        s = session(app, conv)
        assert (s.state, s.end_reason) == ("closed", "inactivity")
        assert s.closed_at is not None
        with app.app_context():
            last = polysms.outbox[-1]
        assert last["body"] == DEFAULT_CLOSING_MESSAGE == "I am going to end conversation now"
        assert last["from"] == AGENT and last["to"] == USER
        # Nothing more happens to a closed session.
        clock.tick(timedelta(days=3))
        assert fire(app, polysms) == 0


def test_reply_during_grace_returns_to_active_reaches_agent_and_restarts_24h(
    app, tenant, phone, polysms
):
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        phone.send("hi")
        clock.tick(timedelta(hours=24))
        fire(app, polysms)
        clock.tick(timedelta(minutes=9, seconds=59))
        phone.send("still here")
        s = session(app, conv)
        assert s.state == "active"
        assert bodies(app, polysms)[-1] == "you said still here"
        # The old grace deadline passes: nothing happens.
        clock.tick(timedelta(minutes=1))
        assert fire(app, polysms) == 0
        assert session(app, conv).state == "active"
        # A new 24 h from the reply.
        clock.tick(timedelta(hours=24) - timedelta(minutes=1, seconds=1))
        assert fire(app, polysms) == 0
        clock.tick(timedelta(seconds=1))
        assert fire(app, polysms) == 1
        assert session(app, conv).state == "warned"


def test_unengaged_session_closed_silently_after_24h(app, tenant, polysms):
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        clock.tick(timedelta(hours=23, minutes=59, seconds=59))
        assert fire(app, polysms) == 0
        clock.tick(timedelta(seconds=1))
        assert fire(app, polysms) == 1
        s = session(app, conv)
        assert (s.state, s.end_reason) == ("closed", "unengaged")
        assert bodies(app, polysms) == ["Hello!"]  # no warning, no closing


def test_activity_in_either_direction_restarts_idle_timer(app, tenant, phone, polysms):
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        phone.send("hi")  # agent answers at once: last activity now
        clock.tick(timedelta(hours=12))
        with app.app_context():
            from flask_polysms.services.conversation import Conversation

            Conversation(get_state(app), session(app, conv)).send_sms(USER, AGENT, "reminder")
        clock.tick(timedelta(hours=23))
        assert fire(app, polysms) == 0
        clock.tick(timedelta(hours=1))
        assert fire(app, polysms) == 1
        assert session(app, conv).state == "warned"


def test_stop_during_warning_closes_without_closing_text(app, tenant, phone, polysms):
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        phone.send("hi")
        clock.tick(timedelta(hours=24))
        fire(app, polysms)
        phone.send("STOP")
        sent_before = len(bodies(app, polysms))
        clock.tick(timedelta(minutes=10))
        assert fire(app, polysms) == 1
        s = session(app, conv)
        assert (s.state, s.end_reason) == ("closed", "inactivity")
        assert len(bodies(app, polysms)) == sent_before  # the closing text was suppressed
        with app.app_context():
            closing = get_state(app).store.list_messages(conv)[-1]
        assert (closing.kind, closing.status) == ("closing", "suppressed")


def test_opted_out_pair_gets_no_warning(app, tenant, phone, polysms):
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        phone.send("hi")
        phone.send("STOP")
        sent_before = len(bodies(app, polysms))
        clock.tick(timedelta(hours=24))
        assert fire(app, polysms) == 1
        assert session(app, conv).state == "warned"
        assert len(bodies(app, polysms)) == sent_before


def test_closed_session_is_never_reopened(app, tenant, phone, polysms):
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        clock.tick(timedelta(hours=24))
        fire(app, polysms)
        assert session(app, conv).state == "closed"
        phone.send("are you there?")
        s = session(app, conv)
        assert s.state == "closed"
        with app.app_context():
            sessions, _ = get_state(app).store.list_sessions(tenant.project_id)
        assert len(sessions) == 2
        newest = sessions[0]
        assert newest.id != conv and newest.state == "active" and newest.engaged


def test_timer_fires_once_when_run_twice(app, tenant, phone, polysms):
    """Two wake-ups of the same due timer (two workers, a job run twice): one transition."""
    from flask_polysms.services.lifecycle import fire_due

    with freeze_time(START) as clock:
        start_conversation(app, tenant)
        phone.send("hi")
        clock.tick(timedelta(hours=24))
        with app.app_context():
            state = get_state(app)
            results = [fire_due(state), fire_due(state)]
        assert results == [1, 0]
        assert bodies(app, polysms).count(state.settings.warning_message) == 1


def test_sweep_fires_overdue_deadline_without_a_scheduled_job(app, tenant, phone, polysms):
    """The deadline lives in the Store: losing every scheduled job (a Redis flush) loses nothing."""
    from flask_polysms.services.lifecycle import sweep

    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        phone.send("hi")
        get_state(app).scheduler._timed.clear()  # every scheduled wake-up lost
        clock.tick(timedelta(hours=25))
        with app.app_context():
            assert sweep(get_state(app)) == 1
        assert session(app, conv).state == "warned"


def test_message_moving_deadline_later_schedules_nothing(app, tenant, phone, polysms):
    """Constant work per message: a reply only moves the deadline; the one wake-up waits."""
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        scheduler = get_state(app).scheduler
        before = scheduler.pending()
        assert [job for _, job, _ in before] == ["wake"]
        clock.tick(timedelta(hours=1))
        phone.send("one")
        phone.send("two")
        assert scheduler.pending() == before
        # The early wake-up re-reads the session and sleeps until the new deadline.
        clock.move_to("2026-03-03 09:00:00")
        assert fire(app, polysms) == 0
        assert [when for when, _, _ in scheduler.pending()] == [session(app, conv).deadline_at]


def test_custom_timeouts_and_messages(polysms):
    app = Flask(__name__)
    app.testing = True
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_GATEWAY="outbox",
        POLYSMS_IDLE_TIMEOUT=60,
        POLYSMS_GRACE_PERIOD=timedelta(seconds=30),
        POLYSMS_WARNING_MESSAGE="Still there?",
        POLYSMS_CLOSING_MESSAGE="Bye.",
    )
    polysms.init_app(app)
    tenant = provision(app, numbers=(AGENT,))
    phone = Phone(app, tenant)
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        phone.send("hi")
        clock.tick(60)
        assert fire(app, polysms) == 1
        clock.tick(30)
        assert fire(app, polysms) == 1
    assert bodies(app, polysms)[-2:] == ["Still there?", "Bye."]
    assert session(app, conv).end_reason == "inactivity"


def test_older_session_superseded_by_a_new_outbound_closes_quietly(app, tenant, phone, polysms):
    """Two open sessions for one user and number: only the newest one warns."""
    with freeze_time(START) as clock:
        old = start_conversation(app, tenant)
        phone.send("hi")
        clock.tick(timedelta(hours=1))
        new = start_conversation(app, tenant)
        phone.send("hello again")  # joins the newest
        sent = len(bodies(app, polysms))
        clock.tick(timedelta(hours=23))
        assert fire(app, polysms) == 1  # the old one, quietly
        s = session(app, old)
        assert (s.state, s.end_reason) == ("closed", "inactivity")
        assert len(bodies(app, polysms)) == sent
        assert session(app, new).state == "active"
        clock.tick(timedelta(hours=1))
        assert fire(app, polysms) == 1
        assert session(app, new).state == "warned"


def test_agent_goodbye_is_sent_when_it_ends_the_conversation(app, tenant, phone, polysms):
    @polysms.agent
    def answer(conv, text):
        conv.end()
        return "Goodbye!"

    conv = start_conversation(app, tenant)
    phone.send("bye")
    assert bodies(app, polysms)[-1] == "Goodbye!"
    assert (session(app, conv).state, session(app, conv).end_reason) == ("closed", "agent")
    phone.send("hello?")  # a new session; the closed one stays closed and silent
    assert session(app, conv).state == "closed"


def test_sweep_leaves_a_message_waiting_for_its_retry_alone(app, tenant, polysms):
    """A queued retry whose backoff has not run out is not 'stuck' (no early resend)."""
    from flask_polysms.services.lifecycle import reap_stuck_messages

    state = get_state(app)
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        with app.app_context():
            [greeting] = state.store.list_messages(conv)
            state.store.update_message(greeting.id, status="queued", attempts=4)
        # Backoff after try 4 is 8x the base (16 s); POLYSMS_STUCK_AFTER is 5 min.
        clock.tick(timedelta(minutes=5, seconds=10))
        with app.app_context():
            assert reap_stuck_messages(state) == 0
        clock.tick(timedelta(seconds=10))
        with app.app_context():
            assert reap_stuck_messages(state) == 1


@pytest.mark.parametrize("left_as", ["received", "processing"])
def test_sweep_runs_a_lost_agent_turn_again(app, tenant, phone, polysms, left_as):
    """An agent job lost with Redis (received) or with a killed worker (processing) is run again
    by the sweep once it is POLYSMS_STUCK_AFTER old; the user gets one answer."""
    from flask_polysms.services.lifecycle import sweep

    state = get_state(app)
    with freeze_time(START) as clock:
        conv = start_conversation(app, tenant)
        phone.send("hello")
        with app.app_context():
            user_message = [m for m in state.store.list_messages(conv) if m.kind == "user"][0]
            assert user_message.status == "handled"
            state.store.update_message(user_message.id, status=left_as)  # the job was lost
        answers = bodies(app, polysms).count("you said hello")
        clock.tick(timedelta(minutes=4))
        with app.app_context():
            sweep(state)
        assert bodies(app, polysms).count("you said hello") == answers
        clock.tick(timedelta(minutes=2))
        with app.app_context():
            sweep(state)
            assert state.store.get_message(user_message.id).status == "handled"
        assert bodies(app, polysms).count("you said hello") == answers + 1
        with app.app_context():
            sweep(state)  # handled: nothing more
        assert bodies(app, polysms).count("you said hello") == answers + 1


def test_agent_job_run_twice_answers_once(app, tenant, phone, polysms):
    from flask_polysms.services.inbound import agent_job

    conv = start_conversation(app, tenant)
    phone.send("hello")
    state = get_state(app)
    with app.app_context():
        user_message = [m for m in state.store.list_messages(conv) if m.kind == "user"][0]
        assert agent_job(state, conv, user_message.id) is False
    assert bodies(app, polysms).count("you said hello") == 1


def test_one_wake_up_fires_every_timer_due_with_it(app, tenant, polysms):
    """Wake-ups come due in crowds: the first drains them; the others find nothing left."""
    from flask_polysms.jobs import run_job_in_app

    users = ["+14155552673", "+14155552674", "+14155552675"]
    with freeze_time(START) as clock:
        convs = []
        for user in users:
            response = app.test_client().post(
                "/v1/outbound-sms",
                json={"user_number": user, "message": "Hi"},
                headers=tenant.headers,
            )
            convs.append(response.json["conversation_id"])
        clock.tick(timedelta(hours=24))
        with app.app_context():
            # 0.1.0's one-session `timer` job is the same wake-up as the shared `wake` job.
            assert run_job_in_app(app, "timer", convs[0]) == 3
            assert [run_job_in_app(app, "timer", c) for c in convs] == [0, 0, 0]
            assert run_job_in_app(app, "wake") == 0
        assert {session(app, c).end_reason for c in convs} == {"unengaged"}
        # Through the scheduler: the wake-ups still waiting there fire nothing more.
        assert fire(app, polysms) == 0
