"""How a host app tests its SMS flows: a few lines each, memory backend and freezegun."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time

from example_app import polysms
from flask_polysms import get_state
from flask_polysms.services.templates import create_template

REMINDER = "You have an appointment tomorrow at 10:00. Reply 1 to confirm."


@pytest.fixture
def reminder(app, polysms_tenant):
    """Templates and variant the agent uses, then the outbound reminder to the user."""
    with app.app_context():
        state = get_state(app)
        state.store.update_project(
            polysms_tenant.project_id, settings={"variants": {"live": {"clinic_name": "Sunrise"}}}
        )
        for title, body in {
            "appointment_confirmed": "Confirmed at ${clinic_name} for {{vrbl:slot}}.",
            "appointment_cancelled": "Cancelled at ${clinic_name}.",
        }.items():
            create_template(
                state,
                polysms_tenant.project_id,
                title=title,
                body=body,
                env_phone_numbers={"live": polysms_tenant.numbers[0]},
            )
    response = app.test_client().post(
        "/v1/outbound-sms",
        json={"user_number": "+14155552672", "message": REMINDER},
        headers=polysms_tenant.headers,
    )
    assert response.status_code == 202
    return response.json["conversation_id"]


def conversation(app, tenant, conversation_id):
    return (
        app.test_client().get(f"/v1/conversations/{conversation_id}", headers=tenant.headers).json
    )


def test_outbound_reminder_is_the_greeting(app, polysms_tenant, reminder, outbox):
    assert outbox() == [REMINDER]
    messages = conversation(app, polysms_tenant, reminder)["messages"]
    assert [(m["kind"], m["body"]) for m in messages] == [("greeting", REMINDER)]


def test_user_confirms_and_agent_sends_the_template(
    app, polysms_tenant, reminder, sms_phone, outbox
):
    sms_phone.send("1")
    assert outbox()[-1] == "Confirmed at Sunrise for tomorrow at 10:00."
    sends = conversation(app, polysms_tenant, reminder)["metadata"]["sms_sends"]
    assert sends[-1]["template"] == "appointment_confirmed"


def test_reschedule_keeps_progress_in_conv_state(app, polysms_tenant, reminder, sms_phone, outbox):
    sms_phone.send("2")
    assert outbox()[-1].startswith("Which day and time suit you?")
    sms_phone.send("Friday 14:00")
    assert outbox()[-1] == "Confirmed at Sunrise for Friday 14:00."


def test_cancel_appointment_ends_the_conversation(app, polysms_tenant, reminder, sms_phone, outbox):
    sms_phone.send("3")
    assert outbox()[-1] == "Cancelled at Sunrise."
    conv = conversation(app, polysms_tenant, reminder)
    assert (conv["state"], conv["end_reason"]) == ("closed", "agent")


def test_stop_opts_out_and_nothing_more_is_sent(app, polysms_tenant, reminder, sms_phone, outbox):
    sms_phone.send("STOP")
    assert outbox()[-1].startswith("You have been unsubscribed")
    sent = len(outbox())
    sms_phone.send("1")  # dropped: the pair is opted out
    assert len(outbox()) == sent


def test_idle_24h_warning_then_close(app, polysms_tenant, sms_phone, outbox):
    with freeze_time("2026-05-04 08:00:00") as clock:
        response = app.test_client().post(
            "/v1/outbound-sms",
            json={"user_number": "+14155552672", "message": REMINDER},
            headers=polysms_tenant.headers,
        )
        sms_phone.send("hello?")
        clock.tick(timedelta(hours=24))
        with app.app_context():
            assert polysms.run_due_timers() == 1
        assert outbox()[-1] == get_state(app).settings.warning_message
        clock.tick(timedelta(minutes=10))
        with app.app_context():
            assert polysms.run_due_timers() == 1
        assert outbox()[-1] == "I am going to end conversation now"
    conv = conversation(app, polysms_tenant, response.json["conversation_id"])
    assert (conv["state"], conv["end_reason"]) == ("closed", "inactivity")


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("1", "Your appointment is confirmed for tomorrow at 10:00. See you then!"),
        ("3", "Your appointment is cancelled. Call us to rebook."),
    ],
)
def test_a_project_without_the_demo_templates_still_gets_an_answer(
    app, polysms_tenant, sms_phone, outbox, reply, answer
):
    """A project set up with the CLI has no templates: the agent answers in plain text."""
    sent = app.test_client().post(
        "/v1/outbound-sms",
        json={"user_number": sms_phone.number, "message": REMINDER},
        headers=polysms_tenant.headers,
    )
    assert sent.status_code == 202
    assert sms_phone.send(reply).status_code == 200
    assert outbox()[-1] == answer
