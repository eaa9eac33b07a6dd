"""SMS flows beside the clinic's own features, with the app served at the root and under a
mount point (DispatcherMiddleware): the outbound API, Twilio's signed webhooks (never counted by
the clinic's rate limit), STOP, the SMS dashboard's sign-in with its own CSRF token, the 24 h
warning under freezegun — on the clinic's PostgreSQL database, with the clinic's CSRF
protection, rate limiter, CORS, Flask-Login and error handlers in place."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from clinic import db, polysms
from clinic.models import User
from conftest import csrf_token_in
from freezegun import freeze_time

from flask_polysms import get_state
from flask_polysms.config import DEFAULT_CLOSING_MESSAGE, DEFAULT_WARNING_MESSAGE

PATIENT = "+14155552674"
REMINDER = "Your appointment is tomorrow at 10."
UNSUBSCRIBED = (
    "You have been unsubscribed and will not receive further messages. Reply START to resubscribe."
)


@pytest.fixture(params=["", "/clinic"], ids=["at-root", "mounted"])
def mount_point(request) -> str:
    return request.param


def send(site, tenant, user: str = PATIENT, message: str = REMINDER):
    """POST /v1/outbound-sms with the tenant's API key and connector."""
    return site.post(
        "/v1/outbound-sms", json={"user_number": user, "message": message}, headers=tenant.headers
    )


def texts(to: str | None = None) -> list[str]:
    """What the app handed to its (outbox) gateway, oldest first."""
    return [m["body"] for m in polysms.outbox if to is None or m["to"] == to]


def conversation(site, tenant, conversation_id: str) -> dict:
    found = site.get(f"/v1/conversations/{conversation_id}", headers=tenant.headers)
    assert found.status_code == 200, found.get_json()
    return found.get_json()


def test_a_testing_app_records_texts_in_the_outbox(app):
    # The clinic's test config names no gateway: its test suite never texts anybody.
    assert get_state(app).settings.gateway == "outbox"


def test_the_outbound_api_sends_and_the_conversation_reads_back(site, polysms_tenant):
    sent = send(site, polysms_tenant)
    assert sent.status_code == 202, sent.get_json()
    conversation_id = sent.get_json()["conversation_id"]
    assert sent.headers["Location"] == site.url(f"/v1/conversations/{conversation_id}")
    assert texts(PATIENT) == [REMINDER]
    messages = conversation(site, polysms_tenant, conversation_id)["messages"]
    assert [(m["kind"], m["body"]) for m in messages] == [("greeting", REMINDER)]


def test_signed_webhooks_are_never_counted_by_the_clinics_rate_limit(site, polysms_tenant):
    """61 messages in an hour from 7 patients: over the clinic's 50 per hour per client, within
    flask-polysms' own inbound limits. The agent answers every one."""
    patients = [f"+1415555{n:04d}" for n in range(2680, 2687)]
    for n in range(61):
        answered = site.inbound(
            polysms_tenant, f"question {n}", user=patients[n % 7], sid=f"SM{n:032x}"
        )
        assert answered.status_code == 200, (n, answered.get_data(as_text=True))
    assert len(texts()) == 61
    assert all(text == "Hi, reply CONFIRM to confirm your appointment." for text in texts())
    # The clinic's own limit is still on, and the webhooks spent none of it.
    statuses = [site.get("/health").status_code for _ in range(51)]
    assert statuses == [200] * 50 + [429]


def test_a_webhook_signed_over_another_url_is_refused(site, polysms_tenant, mount_point):
    other_place = "" if mount_point else "/clinic"
    refused = site.inbound(
        polysms_tenant,
        "hello",
        user=PATIENT,
        sid="SM" + "e" * 32,
        signed_over=f"http://localhost{other_place}/v1/twilio/sms",
    )
    assert refused.status_code == 403 and set(refused.get_json()) == {"detail"}
    assert texts() == []


def test_stop_opts_the_patient_out(site, polysms_tenant, sms_phone):
    """The plugin's ``sms_phone`` signs the URL the app checks, mount point included."""
    assert send(site, polysms_tenant, user=sms_phone.number).status_code == 202
    stopped = sms_phone.send("STOP")
    assert stopped.status_code == 200, stopped.get_data(as_text=True)
    assert texts(sms_phone.number) == [REMINDER, UNSUBSCRIBED]
    # Accepted (the product's behaviour), recorded as suppressed, never sent.
    again = send(site, polysms_tenant, user=sms_phone.number, message="Still there?")
    assert again.status_code == 202
    assert texts(sms_phone.number) == [REMINDER, UNSUBSCRIBED]
    messages = conversation(site, polysms_tenant, again.get_json()["conversation_id"])["messages"]
    assert [m["status"] for m in messages] == ["suppressed"]


def test_the_agent_reads_the_clinics_own_table(app, site, polysms_tenant, sms_phone):
    with app.app_context():
        patient = User(email="ada@patients.example", name="Ada", phone=sms_phone.number)
        patient.set_password("not used")
        db.session.add(patient)
        db.session.commit()
    assert send(site, polysms_tenant, user=sms_phone.number).status_code == 202
    assert sms_phone.send("confirm").status_code == 200
    assert texts(sms_phone.number)[-1] == "Hi Ada, your appointment is confirmed. See you soon!"


def test_the_sms_dashboard_signs_in_with_its_own_csrf_token(site, polysms_tenant):
    page = site.get("/sms-dashboard/sign-in")
    assert page.status_code == 200
    form = {"api_key": polysms_tenant.api_key, "connector_id": polysms_tenant.connector_id}
    # Refused by the dashboard's own check (the clinic's CSRFProtect leaves the form to it).
    assert site.post("/sms-dashboard/sign-in", data=form).status_code == 400
    token = csrf_token_in(page.get_data(as_text=True))
    signed = site.post("/sms-dashboard/sign-in", data={**form, "csrf_token": token})
    assert signed.status_code == 302, signed.get_data(as_text=True)
    assert signed.headers["Location"].startswith(site.url("/sms-dashboard/"))
    overview = site.client.get(signed.headers["Location"])
    assert overview.status_code == 200
    # The clinic's own dashboard is still the clinic's (its sign-in, not ours).
    staff_page = site.get("/dashboard")
    assert staff_page.status_code == 302
    assert staff_page.headers["Location"].startswith(site.url("/login"))


def test_the_24_hour_warning_then_the_close(site, polysms_tenant, sms_phone):
    with freeze_time(datetime.now(timezone.utc)) as clock:
        sent = send(site, polysms_tenant, user=sms_phone.number)
        assert sent.status_code == 202
        assert sms_phone.send("what time again?").status_code == 200  # engaged
        clock.tick(timedelta(hours=23, minutes=59))
        assert polysms.run_due_timers() == 0
        clock.tick(timedelta(minutes=2))
        assert polysms.run_due_timers() == 1
        assert texts(sms_phone.number)[-1] == DEFAULT_WARNING_MESSAGE
        conversation_id = sent.get_json()["conversation_id"]
        assert conversation(site, polysms_tenant, conversation_id)["state"] == "warned"
        clock.tick(timedelta(minutes=11))
        assert polysms.run_due_timers() == 1
        assert texts(sms_phone.number)[-1] == DEFAULT_CLOSING_MESSAGE
        closed = conversation(site, polysms_tenant, conversation_id)
    assert (closed["state"], closed["end_reason"]) == ("closed", "inactivity")


def test_no_background_thread_starts_in_the_clinics_tests(site, polysms_tenant, sms_phone):
    assert send(site, polysms_tenant).status_code == 202
    assert sms_phone.send("hello").status_code == 200
    assert not [t.name for t in threading.enumerate() if t.name.startswith("polysms")]
