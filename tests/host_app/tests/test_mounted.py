"""The clinic served under ``/clinic`` of a shared domain (``clinic.wsgi.mount``, a
DispatcherMiddleware) and behind its load balancer (ProxyFix): its own pages, sign-in and
cookies stay under the mount point, and so does everything flask-polysms builds or checks."""

from __future__ import annotations

import pytest
from clinic import create_app, polysms
from clinic.wsgi import serve
from conftest import MOUNT, Site, clinic_config, dispose, empty_tables, sign_in
from werkzeug.test import Client

from flask_polysms.testing import provision, sign_twilio_request

PUBLIC = "https://clinic.example"
PATIENT = "+14155552674"
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "clinic.example"}


@pytest.fixture
def mount_point() -> str:
    return MOUNT


def test_the_clinic_lives_under_its_mount_point(site, staff):
    assert site.client.get("/").status_code == 404  # the rest of the domain is not the clinic's
    assert site.client.get("/login").status_code == 404
    assert site.get("/").status_code == 200
    gate = site.get("/dashboard")
    assert gate.status_code == 302 and gate.headers["Location"] == "/clinic/login?next=/dashboard"

    signed = sign_in(site, staff)
    assert signed.status_code == 302 and signed.headers["Location"] == "/clinic/dashboard"
    cookie = site.client.get_cookie("session", path=MOUNT)
    assert cookie is not None and cookie.path == MOUNT
    assert "Signed in as Nurse Joy" in site.get("/dashboard").get_data(as_text=True)
    assert site.post("/login", data={"email": staff.email}).status_code == 400  # no CSRF token


@pytest.fixture
def public_app(migrated):
    """The app as deployed: its public URL (mount point included) configured."""
    app = create_app(
        clinic_config(migrated, APPLICATION_ROOT=MOUNT, POLYSMS_PUBLIC_URL=PUBLIC + MOUNT)
    )
    yield app
    dispose(app)
    empty_tables(migrated)


def test_twilio_is_given_and_checked_against_the_public_url(public_app):
    site = Site(public_app, MOUNT)
    tenant = provision(public_app, numbers=("+14155550150",))
    sent = site.post(
        "/v1/outbound-sms",
        json={"user_number": PATIENT, "message": "Hello"},
        headers={**tenant.headers, **FORWARDED},
    )
    assert sent.status_code == 202, sent.get_json()
    with public_app.app_context():
        (handed,) = polysms.outbox
    assert handed["status_callback"].startswith(f"{PUBLIC}{MOUNT}/v1/twilio/status?message_id=")

    answered = site.inbound(
        tenant,
        "hi",
        user=PATIENT,
        sid="SM" + "1" * 32,
        signed_over=f"{PUBLIC}{MOUNT}/v1/twilio/sms",
    )
    assert answered.status_code == 200, answered.get_data(as_text=True)
    # Signed over the internal URL (what a request's own Host would give): refused.
    internal = site.inbound(tenant, "hi again", user=PATIENT, sid="SM" + "2" * 32)
    assert internal.status_code == 403


def test_without_a_public_url_the_forwarded_url_is_the_one_checked(site, polysms_tenant):
    """In tests (no POLYSMS_PUBLIC_URL) the request's own URL counts, as ProxyFix rebuilt it."""
    params = {
        "MessageSid": "SM" + "3" * 32,
        "AccountSid": polysms_tenant.twilio_account_sid,
        "From": PATIENT,
        "To": polysms_tenant.numbers[0],
        "Body": "hello",
    }
    signature = sign_twilio_request(
        f"{PUBLIC}{MOUNT}/v1/twilio/sms", params, polysms_tenant.twilio_auth_token
    )
    answered = site.post(
        "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature, **FORWARDED}
    )
    assert answered.status_code == 200, answered.get_data(as_text=True)
    assert [m["body"] for m in polysms.outbox] == ["Hi, reply CONFIRM to confirm your appointment."]


def test_the_wsgi_entry_point_mounts_where_it_is_told(migrated, monkeypatch):
    monkeypatch.setenv("CLINIC_MOUNT", "/clinic/")
    served = serve(clinic_config(migrated))
    client = Client(served)
    try:
        assert client.get("/clinic/health").get_json() == {"status": "ok"}
        assert client.get("/health").status_code == 404
        assert client.get("/clinic/v1/outbound-sms").get_json().keys() == {"detail"}
    finally:
        dispose(served.mounts["/clinic"])
