"""Scheduled sends: ``send_at`` on the outbound API, the message's read and cancel routes, the
release at ``send_at`` (by its job or, the job lost, by the sweep), the opt-out checked again
then, and the session's timers starting when the greeting goes out. Every backend."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from freezegun import freeze_time
from store_backends import BACKENDS, storage_url

from flask_polysms.clock import utcnow
from flask_polysms.services import provisioning, scheduled
from flask_polysms.services.lifecycle import sweep
from flask_polysms.services.operators import end_session
from flask_polysms.services.sending import send_job
from flask_polysms.services.tenancy import CONNECTOR_HEADER

AGENT = "+14155552671"
USER = "+14155552674"
OTHER_USER = "+14155552675"
START = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(params=BACKENDS)
def backend_url(request, tmp_path) -> str:
    return storage_url(request, request.param, tmp_path)


@pytest.fixture
def sms(make_sms, backend_url):
    harness = make_sms(numbers=(AGENT,), POLYSMS_STORAGE_URL=backend_url)
    yield harness
    harness.store.disconnect()


def iso(moment: datetime) -> str:
    return moment.isoformat()


def greeting(sms, conversation_id: str) -> dict:
    return sms.conversation(conversation_id)["messages"][0]


def cancel(sms, message_id: str, tenant=None):
    headers = (tenant or sms.tenant).headers
    return sms.client.post(f"/v1/messages/{message_id}/cancel", headers=headers)


def get_message(sms, message_id: str, tenant=None):
    headers = (tenant or sms.tenant).headers
    return sms.client.get(f"/v1/messages/{message_id}", headers=headers)


def schedule(sms, send_at: datetime, user: str = USER, **extra) -> dict:
    """A scheduled send; returns the 202 body and the greeting's id."""
    body = sms.send_ok(user, "See you tomorrow", send_at=iso(send_at), **extra)
    body["message_id"] = greeting(sms, body["conversation_id"])["id"]
    return body


def test_a_scheduled_send_waits_and_its_timers_start_when_it_goes_out(sms):
    idle = sms.state.settings.idle_timeout
    send_at = START + timedelta(days=2)
    with freeze_time(START) as frozen:
        accepted = schedule(sms, send_at.astimezone(timezone(timedelta(hours=-5))))
        assert accepted["status"] == "scheduled"
        conversation = sms.conversation(accepted["conversation_id"])
        assert conversation["state"] == "scheduled"
        (message,) = conversation["messages"]
        assert (message["status"], message["send_at"]) == ("scheduled", iso(send_at))
        assert sms.outbox == []
        # Longer than the idle timeout before it goes out: no timer runs for it yet.
        frozen.move_to(START + idle + timedelta(hours=1))
        sms.run_due_timers()
        assert sms.conversation(accepted["conversation_id"])["state"] == "scheduled"
        assert sms.outbox == []

        frozen.move_to(send_at)
        sms.run_due_timers()
        conversation = sms.conversation(accepted["conversation_id"])
        assert conversation["state"] == "active"
        assert conversation["messages"][0]["status"] == "sent"
        assert conversation["messages"][0]["send_at"] == iso(send_at)
        assert [m["body"] for m in sms.outbox] == ["See you tomorrow"]
        # The idle timer runs from the send: closed (unengaged) 24 h after it, not before.
        frozen.move_to(send_at + idle - timedelta(seconds=1))
        sms.run_due_timers()
        assert sms.conversation(accepted["conversation_id"])["state"] == "active"
        frozen.move_to(send_at + idle + timedelta(seconds=1))
        sms.run_due_timers()
        closed = sms.conversation(accepted["conversation_id"])
        assert (closed["state"], closed["end_reason"]) == ("closed", "unengaged")
    assert len(sms.outbox) == 1


def test_messages_carry_send_at_null_unless_scheduled(sms):
    conversation_id = sms.send_ok(USER)["conversation_id"]
    message = greeting(sms, conversation_id)
    assert message["send_at"] is None
    assert get_message(sms, message["id"]).get_json()["send_at"] is None


@pytest.mark.parametrize(
    "send_at, problem",
    [
        ("2026-12-07T09:00:30+00:00", "at least 1 minute"),
        ("2027-01-11T09:00:01+00:00", "at most 35 days"),
        ("2026-12-07T09:00:00+00:00", "at least 1 minute"),
        ("2026-12-08T09:00:00", "offset"),  # no offset
        ("2026-12-08 09:00+01:00", "offset"),  # no seconds
        ("2026-12-08", "offset"),
        ("tomorrow", "offset"),
        ("2026-02-30T09:00:00Z", "not a valid date-time"),
        (1765098000, "offset"),
    ],
)
def test_a_bad_send_at_is_400_on_the_field_and_changes_nothing(make_sms, send_at, problem):
    sms = make_sms(numbers=(AGENT,), POLYSMS_RATE_LIMIT="1 per minute")
    with freeze_time(START):
        response = sms.send(USER, "later", send_at=send_at)
        assert response.status_code == 400, response.get_json()
        body = response.get_json()
        assert problem in body["errors"]["send_at"][0], body
        assert sms.conversations() == []
        # Nothing was counted either: the project's one message a minute is still there.
        assert sms.send(USER, "now").status_code == 202


def test_the_window_is_one_minute_to_35_days_inclusive(sms):
    with freeze_time(START):
        for send_at in (START + timedelta(minutes=1), START + timedelta(days=35)):
            assert schedule(sms, send_at)["status"] == "scheduled"
    with freeze_time(START):  # Z and a fraction of a second are RFC 3339 too
        response = sms.send(USER, "later", send_at="2026-12-08T09:00:00.123456789Z")
        assert response.status_code == 202, response.get_json()


def test_cancel_before_send_at_never_sends_and_closes_the_conversation(sms):
    send_at = START + timedelta(hours=3)
    with freeze_time(START) as frozen:
        accepted = schedule(sms, send_at)
        response = cancel(sms, accepted["message_id"])
        assert response.status_code == 200, response.get_json()
        message = response.get_json()
        assert (message["id"], message["status"]) == (accepted["message_id"], "canceled")
        assert message["drop_reason"] == "canceled"
        conversation = sms.conversation(accepted["conversation_id"])
        assert (conversation["state"], conversation["end_reason"]) == ("closed", "canceled")
        # Again: the same answer.
        again = cancel(sms, accepted["message_id"])
        assert (again.status_code, again.get_json()["status"]) == (200, "canceled")
        # Its release job is still waiting in the scheduler: it comes and sends nothing.
        frozen.move_to(send_at + timedelta(minutes=1))
        sms.run_due_timers()
    assert sms.outbox == []
    assert get_message(sms, accepted["message_id"]).get_json()["status"] == "canceled"


def test_a_canceled_message_is_never_claimed_by_a_send_job_already_queued(sms):
    with freeze_time(START):
        accepted = schedule(sms, START + timedelta(hours=1))
        assert cancel(sms, accepted["message_id"]).status_code == 200
        # A send job for it (a duplicate, a stale one) finds nothing to claim.
        with sms.app.app_context():
            assert send_job(sms.state, accepted["message_id"]) is False
            assert scheduled.release(sms.state, accepted["message_id"], utcnow()) is False
    assert sms.outbox == []


def test_cancel_once_sent_or_not_scheduled_is_409(sms):
    send_at = START + timedelta(minutes=5)
    with freeze_time(START) as frozen:
        accepted = schedule(sms, send_at)
        frozen.move_to(send_at)
        sms.run_due_timers()
        response = cancel(sms, accepted["message_id"])
        assert response.status_code == 409, response.get_json()
        assert "sent" in response.get_json()["detail"]
        immediate = sms.send_ok(OTHER_USER)["conversation_id"]
        assert cancel(sms, greeting(sms, immediate)["id"]).status_code == 409
    assert len(sms.outbox) == 2


def test_a_message_released_to_its_send_can_no_longer_be_canceled(sms):
    with freeze_time(START):
        accepted = schedule(sms, START + timedelta(minutes=5))
        with sms.app.app_context():
            # Released (queued) but its send job not run yet: it is going out.
            sms.store.update_message(accepted["message_id"], status="queued")
        assert cancel(sms, accepted["message_id"]).status_code == 409


def test_messages_of_another_project_or_environment_are_404(sms):
    with freeze_time(START):
        accepted = schedule(sms, START + timedelta(hours=1))
        other_project = sms.provision(numbers=("+14155552672",))
        with sms.app.app_context():
            connector = provisioning.create_connector(sms.state, sms.tenant.project_id, "sandbox")
        other_environment = SimpleNamespace(
            headers={**sms.tenant.headers, CONNECTOR_HEADER: connector.id}
        )
        for tenant in (other_project, other_environment):
            assert get_message(sms, accepted["message_id"], tenant).status_code == 404
            assert cancel(sms, accepted["message_id"], tenant).status_code == 404
        assert get_message(sms, "msg_nothing").status_code == 404
        assert cancel(sms, "msg_nothing").status_code == 404
        # Still scheduled for its own project.
        mine = get_message(sms, accepted["message_id"])
        assert (mine.status_code, mine.get_json()["status"]) == (200, "scheduled")


def test_an_opt_out_before_send_at_suppresses_it_when_it_goes_out(sms):
    send_at = START + timedelta(hours=2)
    with freeze_time(START) as frozen:
        accepted = schedule(sms, send_at)
        sms.inbound_ok(USER, "STOP")
        frozen.move_to(send_at)
        sms.run_due_timers()
        message = get_message(sms, accepted["message_id"]).get_json()
        assert (message["status"], message["drop_reason"]) == ("suppressed", "opted_out")
    # Only the keyword's confirmation went out.
    assert [m["body"] for m in sms.outbox] == [
        "You have been unsubscribed and will not receive further messages. "
        "Reply START to resubscribe."
    ]


def test_opted_out_when_accepted_it_is_suppressed_at_once(sms):
    with freeze_time(START) as frozen:
        sms.inbound_ok(USER, "STOP")
        accepted = sms.send_ok(USER, "later", send_at=iso(START + timedelta(hours=1)))
        assert accepted["status"] == "suppressed"
        frozen.move_to(START + timedelta(hours=2))
        sms.run_due_timers()
    assert len(sms.outbox) == 1  # the STOP confirmation only


def test_the_sweep_releases_a_due_message_whose_job_was_lost(sms):
    send_at = START + timedelta(minutes=10)
    with freeze_time(START) as frozen:
        accepted = schedule(sms, send_at)
        sms.state.scheduler.forget_pending()  # the release job is gone (a Redis restart)
        frozen.move_to(send_at - timedelta(seconds=1))
        with sms.app.app_context():
            sweep(sms.state)
        assert sms.outbox == []  # not early
        frozen.move_to(send_at + timedelta(seconds=1))
        with sms.app.app_context():
            sweep(sms.state)
        assert get_message(sms, accepted["message_id"]).get_json()["status"] == "sent"
        assert sms.conversation(accepted["conversation_id"])["state"] == "active"
        with sms.app.app_context():  # released once: a second sweep finds nothing
            sweep(sms.state)
    assert len(sms.outbox) == 1


def test_a_release_job_that_comes_early_does_nothing(sms):
    with freeze_time(START):
        accepted = schedule(sms, START + timedelta(minutes=10))
        with sms.app.app_context():
            assert scheduled.release(sms.state, accepted["message_id"]) is False
        assert get_message(sms, accepted["message_id"]).get_json()["status"] == "scheduled"
    assert sms.outbox == []


def test_a_conversation_ended_before_send_at_takes_its_greeting_with_it(sms):
    send_at = START + timedelta(minutes=10)
    with freeze_time(START) as frozen:
        accepted = schedule(sms, send_at)
        with sms.app.app_context():
            end_session(sms.state, accepted["conversation_id"], "agent")
        frozen.move_to(send_at)
        sms.run_due_timers()
        message = get_message(sms, accepted["message_id"]).get_json()
        assert (message["status"], message["drop_reason"]) == ("canceled", "conversation_closed")
    assert sms.outbox == []


def test_the_rate_limit_counts_a_scheduled_send_when_accepted(make_sms, backend_url):
    sms = make_sms(
        numbers=(AGENT,), POLYSMS_STORAGE_URL=backend_url, POLYSMS_RATE_LIMIT="1 per minute"
    )
    # Frozen at the real time: the limits library's memory storage expires counts from a timer
    # thread that reads the real clock, so a clock frozen in the past would lose the first count.
    now = utcnow()
    with freeze_time(now):
        assert schedule(sms, now + timedelta(days=1))["status"] == "scheduled"
        response = sms.send(OTHER_USER, "now")
        assert response.status_code == 429, response.get_json()
    sms.store.disconnect()


def test_scheduled_conversations_can_be_listed_by_state(sms):
    with freeze_time(START):
        accepted = schedule(sms, START + timedelta(hours=1))
        sms.send_ok(OTHER_USER)
        found = sms.conversations(state="scheduled")
        assert [c["id"] for c in found] == [accepted["conversation_id"]]


# -- the dashboard ---------------------------------------------------------------------------------
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(harness):
    """A browser signed in to the dashboard (at the clock's time)."""
    browser = harness.app.test_client()
    token = CSRF.search(browser.get("/dashboard/sign-in").get_data(as_text=True)).group(1)
    signed_in = browser.post(
        "/dashboard/sign-in",
        data={
            "api_key": harness.tenant.api_key,
            "connector_id": harness.tenant.connector_id,
            "csrf_token": token,
        },
    )
    assert signed_in.status_code == 302
    return browser


@pytest.fixture
def dashboard(make_sms, backend_url):
    harness = make_sms(numbers=(AGENT,), POLYSMS_STORAGE_URL=backend_url, POLYSMS_DASHBOARD=True)
    yield harness
    harness.store.disconnect()


def test_the_dashboard_lists_scheduled_messages_and_cancels_one(dashboard):
    sms = dashboard
    with freeze_time(START):
        browser = sign_in(sms)
        first = schedule(sms, START + timedelta(hours=2))
        second = schedule(sms, START + timedelta(hours=1), user=OTHER_USER)
        sms.send_ok(USER, "not scheduled")
        page = browser.get("/dashboard/scheduled")
        html = page.get_data(as_text=True)
        assert page.status_code == 200
        rows = re.findall(r'data-message="([^"]+)"', html)
        assert rows == [second["message_id"], first["message_id"]]  # soonest first
        assert "2026-12-07 10:00:00 UTC" in html

        action = f"/dashboard/scheduled/{first['message_id']}/cancel"
        # Without the form's CSRF token: refused, nothing canceled.
        assert browser.post(action).status_code == 400
        assert get_message(sms, first["message_id"]).get_json()["status"] == "scheduled"
        token = CSRF.search(html).group(1)
        done = browser.post(action, data={"csrf_token": token})
        assert done.status_code == 302
        assert get_message(sms, first["message_id"]).get_json()["status"] == "canceled"
        html = browser.get("/dashboard/scheduled").get_data(as_text=True)
        assert re.findall(r'data-message="([^"]+)"', html) == [second["message_id"]]
        # Another project's message is not found; a message that went out is a conflict.
        other = sms.provision(numbers=("+14155552672",))
        foreign = sms.send_ok(USER, "theirs", send_at=iso(START + timedelta(hours=1)), tenant=other)
        with sms.app.app_context():
            (foreign_message,) = sms.store.list_messages(foreign["conversation_id"])
        foreign_id = foreign_message.id
        refused = browser.post(
            f"/dashboard/scheduled/{foreign_id}/cancel", data={"csrf_token": token}
        )
        assert refused.status_code == 404
        assert sms.store.get_message(foreign_id).status == "scheduled"


def test_the_dashboard_page_needs_a_sign_in(make_sms):
    sms = make_sms(numbers=(AGENT,), POLYSMS_DASHBOARD=True)
    response = sms.app.test_client().get("/dashboard/scheduled")
    assert response.status_code == 302 and "/sign-in" in response.headers["Location"]


def test_the_openapi_document_describes_send_at_and_the_message_routes(make_sms):
    sms = make_sms(numbers=(AGENT,))
    document = sms.client.get("/v1/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    send_at = schemas["OutboundRequest"]["properties"]["send_at"]
    assert (send_at["format"], send_at["nullable"]) == ("date-time", True)
    assert "35 days" in send_at["description"]
    assert schemas["Message"]["properties"]["send_at"]["nullable"] is True
    assert "scheduled" in schemas["Conversation"]["properties"]["state"]["enum"]
    paths = document["paths"]
    assert {"200", "404"} <= set(paths["/v1/messages/{message_id}"]["get"]["responses"])
    assert {"200", "404", "409"} <= set(
        paths["/v1/messages/{message_id}/cancel"]["post"]["responses"]
    )


def test_a_user_who_writes_before_send_at_starts_the_conversation(sms):
    send_at = START + timedelta(hours=1)
    with freeze_time(START) as frozen:
        accepted = schedule(sms, send_at)
        sms.inbound_ok(USER, "hello?")
        conversation = sms.conversation(accepted["conversation_id"])
        assert (conversation["state"], conversation["engaged"]) == ("active", True)
        frozen.move_to(send_at)
        sms.run_due_timers()  # the greeting still goes out, as asked
        assert get_message(sms, accepted["message_id"]).get_json()["status"] == "sent"
    assert [m["body"] for m in sms.outbox] == ["See you tomorrow"]
