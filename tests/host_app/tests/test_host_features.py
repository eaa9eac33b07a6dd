"""The clinic's own features, with flask-polysms installed beside them: sign-in, CSRF-protected
forms, the /v1 API and its error shape, the rate limit, CORS."""

from __future__ import annotations

import logging

from clinic import create_app
from conftest import PASSWORD, clinic_config, csrf_token_in, dispose, sign_in
from flask import abort

from flask_polysms.config import ConfigError

STAFF_ORIGIN = "https://staff.clinic.example"


def error(status: int, message: str) -> dict:
    return {"error": {"status": status, "message": message}}


def test_sign_in_through_the_login_form_then_the_api_knows_who(client, staff):
    assert client.get("/v1/me").get_json() == error(401, "sign in first")
    page = client.get("/dashboard")
    assert page.status_code == 302 and page.location == "/login?next=/dashboard"

    wrong = sign_in(client, staff, password="not it")
    assert wrong.status_code == 401 and "Wrong email or password." in wrong.get_data(as_text=True)

    form = client.get("/login?next=/dashboard").get_data(as_text=True)
    signed = client.post(
        "/login?next=/dashboard",
        data={"email": staff.email, "password": PASSWORD, "csrf_token": csrf_token_in(form)},
    )
    assert signed.status_code == 302 and signed.location == "/dashboard"
    assert "Signed in as Nurse Joy" in client.get("/dashboard").get_data(as_text=True)
    assert client.get("/v1/me").get_json()["email"] == staff.email


def test_the_login_form_is_refused_without_its_csrf_token(client, staff):
    refused = client.post("/login", data={"email": staff.email, "password": PASSWORD})
    assert refused.status_code == 400
    assert refused.get_json() == error(400, "The CSRF token is missing.")
    assert client.get("/v1/me").status_code == 401  # not signed in


def test_the_account_form_needs_its_token_too(client, staff):
    assert sign_in(client, staff).status_code == 302
    refused = client.post("/account", data={"name": "Nurse Joy Updated"})
    assert refused.status_code == 400
    page = client.get("/account").get_data(as_text=True)
    saved = client.post(
        "/account",
        data={"name": "Joy", "phone": "+14155550123", "csrf_token": csrf_token_in(page)},
    )
    assert saved.status_code == 200
    assert client.get("/v1/me").get_json()["name"] == "Joy"


def test_the_apis_writes_need_the_csrf_header(client, staff):
    sign_in(client, staff)
    new = {"email": "dr-who@clinic.example", "name": "Dr Who", "password": "tardis"}
    refused = client.post("/v1/staff", json=new)
    assert refused.status_code == 400 and refused.get_json()["error"]["status"] == 400
    token = client.get("/v1/session").get_json()["csrf_token"]
    created = client.post("/v1/staff", json=new, headers={"X-CSRFToken": token})
    assert created.status_code == 201, created.get_json()
    staff_id = created.get_json()["id"]
    assert client.get(f"/v1/staff/{staff_id}").get_json()["name"] == "Dr Who"


def test_the_clinics_errors_keep_the_clinics_shape(app, client, staff):
    @app.get("/v1/reports/broken")
    def broken_report():
        raise RuntimeError("a bug in the clinic's code")

    @app.get("/v1/reports/unavailable")
    def unavailable_report():
        abort(500)

    sign_in(client, staff)
    assert client.get("/v1/staff/999999").get_json() == error(404, "no member of staff 999999")
    missing = client.get("/v1/no-such-thing")
    assert missing.status_code == 404 and set(missing.get_json()) == {"error"}
    assert client.get("/no-such-page").get_json()["error"]["status"] == 404
    wrong_method = client.delete("/v1/staff")
    assert wrong_method.get_json() == error(405, "method not allowed")
    assert set(wrong_method.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert client.get("/v1/reports/unavailable").get_json() == error(
        500, "something went wrong on our side"
    )
    crashed = client.get("/v1/reports/broken")
    assert crashed.status_code == 500
    assert crashed.get_json() == error(500, "something went wrong on our side")


def test_flask_polysms_routes_keep_their_own_error_shape(client):
    unauthenticated = client.post("/v1/outbound-sms", json={})
    assert unauthenticated.status_code == 401 and set(unauthenticated.get_json()) == {"detail"}
    wrong_method = client.get("/v1/outbound-sms")
    assert wrong_method.status_code == 405 and set(wrong_method.get_json()) == {"detail"}
    beside_ours = client.get("/v1/conversations/conv_x/nothing")
    assert beside_ours.status_code == 404 and set(beside_ours.get_json()) == {"detail"}


def test_the_clinics_rate_limit_counts_per_client_behind_the_proxy(client):
    statuses = [client.get("/health").status_code for _ in range(51)]
    assert statuses == [200] * 50 + [429]
    limited = client.get("/health")
    assert limited.get_json()["error"]["status"] == 429
    # ProxyFix: another client behind the load balancer has a budget of its own.
    other = client.get("/health", headers={"X-Forwarded-For": "203.0.113.7"})
    assert other.status_code == 200


def test_cors_answers_the_staff_app_on_the_clinics_api_only(client, staff):
    allowed = client.get("/v1/session", headers={"Origin": STAFF_ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == STAFF_ORIGIN
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    stranger = client.get("/v1/session", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in stranger.headers
    preflight = client.options(
        "/v1/staff",
        headers={
            "Origin": STAFF_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, X-CSRFToken",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == STAFF_ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    page = client.get("/login", headers={"Origin": STAFF_ORIGIN})
    assert "Access-Control-Allow-Origin" not in page.headers


def test_flask_polysms_never_takes_the_clinics_own_dashboard(migrated, caplog):
    """At its default path the SMS dashboard would shadow the clinic's /dashboard, whose
    blueprint is registered after ``polysms.init_app``: the first request is refused."""
    app = create_app(clinic_config(migrated, POLYSMS_DASHBOARD_URL="/dashboard"))
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(2):  # every request, not only the first
                refused = app.test_client().get("/dashboard")
                assert refused.get_json() == error(500, "something went wrong on our side")
    finally:
        dispose(app)
    clash = [r for r in caplog.records if isinstance(r.exc_info and r.exc_info[1], ConfigError)]
    message = str(clash[0].exc_info[1])
    assert "pages.staff_dashboard" in message and "polysms_dashboard.overview" in message
