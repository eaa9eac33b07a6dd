"""The dashboard through Flask's test client: switched on and mounted, sign-in, CSRF, nothing of
another project, no secret out, every page on the SQLite store.

The whole loop in a real browser is in test_dashboard_browser.py; these tests pin the rules one by
one and run everywhere (no Chromium needed). What the pages do is in test_dashboard_messages.py,
test_dashboard_templates.py and test_dashboard_simulator.py.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from dashboard_webhooks_support import (
    AGENT,
    OTHER_AGENT,
    USER,
    Browser,
    browser_fixture,  # noqa: F401
    signed_in_fixture,  # noqa: F401
    sms_fixture,  # noqa: F401
    text,
)
from flask import Flask

from flask_polysms import PolySMS
from flask_polysms.config import ConfigError
from flask_polysms.crypto import hash_api_key
from flask_polysms.services import templates
from flask_polysms.services.tenancy import revoke_api_key
from flask_polysms.web.dashboard.access import COOKIE_NAME, CSRF_SESSION_KEY


# -- switched on, mounted, configured -------------------------------------------------------------
def test_dashboard_is_off_by_default(make_sms):
    sms = make_sms()
    assert sms.client.get("/dashboard/").status_code == 404
    assert "polysms_dashboard" not in sms.app.blueprints


def test_mounted_under_the_url_prefix(make_sms):
    sms = make_sms(POLYSMS_DASHBOARD=True, POLYSMS_URL_PREFIX="/sms")
    response = sms.client.get("/sms/dashboard/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sms/dashboard/sign-in")
    browser = Browser(sms, root="/sms/dashboard")
    assert browser.sign_in().headers["Location"] == "/sms/dashboard/"
    assert browser.get("/").status_code == 200


def test_needs_the_apps_secret_key():
    app = Flask("no_secret")
    app.testing = True
    app.config.update(POLYSMS_SECRET_KEY="only-for-tokens", POLYSMS_DASHBOARD=True)
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        PolySMS(app)


@pytest.mark.slow
def test_wheel_ships_the_templates_and_static_files(tmp_path):
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=root,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("flask_polysms-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = root / "flask_polysms" / "web" / "dashboard"
    shipped = [
        path.relative_to(root).as_posix()
        for folder in ("templates", "static")
        for path in (package / folder).rglob("*")
        if path.is_file()
    ]
    assert len(shipped) > 10
    assert set(shipped) <= names
    assert "flask_polysms/web/dashboard/views.py" in names


def test_security_headers(signed_in):
    response = signed_in.get("/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


# -- sign-in --------------------------------------------------------------------------------------
PAGES = ("/", "/templates", "/templates/new", "/conversations", "/opt-outs", "/simulator")


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_to_sign_in(browser, path):
    response = browser.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard/sign-in?next=/dashboard" + path


def test_posts_without_sign_in_redirect_and_change_nothing(browser, sms):
    response = browser.post("/templates/new", {"title": "t", "body": "b", "sender_live": AGENT})
    assert response.status_code == 302
    assert "/sign-in" in response.headers["Location"]
    assert templates.list_templates(sms.state, sms.tenant.project_id) == []


def test_sign_in_then_back_to_the_page_asked_for(browser, sms):
    start = browser.get("/templates")
    page = browser.client.get(start.headers["Location"])
    assert 'name="next" value="/dashboard/templates"' in text(page)
    response = browser.post(
        "/sign-in",
        {
            "api_key": sms.tenant.api_key,
            "connector_id": sms.tenant.connector_id,
            "next": "/dashboard/templates",
        },
    )
    assert response.headers["Location"] == "/dashboard/templates"
    assert browser.get("/templates").status_code == 200


@pytest.mark.parametrize("target", ["http://evil.example/", "//evil.example/x", "/elsewhere"])
def test_sign_in_never_redirects_out_of_the_dashboard(browser, sms, target):
    response = browser.post(
        "/sign-in",
        {"api_key": sms.tenant.api_key, "connector_id": sms.tenant.connector_id, "next": target},
    )
    assert response.headers["Location"] == "/dashboard/"


def test_signed_in_page_names_project_and_environment(signed_in, sms):
    page = text(signed_in.get("/"))
    assert "test project" in page
    assert 'class="env env-live"' in page


def test_sign_out(signed_in):
    assert signed_in.sign_in_cookie()
    response = signed_in.post("/sign-out")
    assert response.status_code == 302
    assert signed_in.get("/").status_code == 302
    assert signed_in.sign_in_cookie() is None


def test_bad_key_is_rejected(browser, sms):
    response = browser.sign_in(api_key="not-a-key")
    assert response.status_code == 401
    assert "invalid X-PolyAi-Auth-Token" in text(response)
    assert "not-a-key" not in text(response)  # the key typed is never sent back
    assert browser.sign_in_cookie() is None
    assert browser.get("/").status_code == 302


def test_unknown_connector_and_another_accounts_connector(browser, sms):
    response = browser.post("/sign-in", {"api_key": sms.tenant.api_key, "connector_id": "con_nope"})
    assert response.status_code == 404
    other = sms.provision(numbers=(OTHER_AGENT,))  # another account
    response = browser.post(
        "/sign-in", {"api_key": sms.tenant.api_key, "connector_id": other.connector_id}
    )
    assert response.status_code == 403
    assert browser.get("/").status_code == 302


def test_failed_sign_in_ends_an_earlier_one(signed_in):
    assert signed_in.sign_in(api_key="wrong").status_code == 401
    assert signed_in.get("/").status_code == 302


def test_revoked_key_ends_the_sign_in_at_the_next_request(signed_in, sms):
    assert signed_in.get("/").status_code == 200
    key = sms.store.get_api_key_by_hash(hash_api_key(sms.tenant.api_key))
    assert revoke_api_key(sms.store, key.id)
    response = signed_in.get("/")
    assert response.status_code == 302
    assert "/sign-in" in response.headers["Location"]
    assert signed_in.sign_in_cookie() is None


def test_a_sign_in_naming_another_accounts_connector_shows_nothing(browser, sms):
    from flask_polysms.clock import utcnow
    from flask_polysms.ports.store import DashboardSignIn

    other = sms.provision(numbers=(OTHER_AGENT,))
    key = sms.store.get_api_key_by_hash(hash_api_key(sms.tenant.api_key))
    # As a row written into the database would: the key's account does not own the connector,
    # so the sign-in is refused at this request.
    secret = "forged-sign-in-secret"
    now = utcnow()
    sms.store.add_dashboard_sign_in(
        DashboardSignIn(
            id=hashlib.sha256(secret.encode()).hexdigest(),
            api_key_id=key.id,
            connector_id=other.connector_id,
            created_at=now,
            last_seen_at=now,
        )
    )
    browser.client.set_cookie(COOKIE_NAME, secret, path="/dashboard/")
    assert browser.get("/").status_code == 302


def test_a_made_up_sign_in_cookie_is_refused(browser):
    browser.client.set_cookie(COOKIE_NAME, "made-up", path="/dashboard/")
    response = browser.get("/")
    assert response.status_code == 302
    assert browser.sign_in_cookie() is None  # dropped, not kept


# -- CSRF -----------------------------------------------------------------------------------------
def _post_routes(sms) -> list[str]:
    template = templates.create_template(
        sms.state, sms.tenant.project_id, title="t1", body="Hi", env_phone_numbers={"live": AGENT}
    )
    return [
        "/sign-in",
        "/sign-out",
        "/templates/new",
        f"/templates/{template.id}",
        f"/templates/{template.id}/duplicate",
        f"/templates/{template.id}/delete",
        "/templates/preview",
        "/conversations/send",
        "/simulator/reply",
    ]


def test_every_form_needs_the_csrf_token(signed_in, sms):
    for path in _post_routes(sms):
        missing = signed_in.post(path, {"body": "x"}, csrf=False)
        assert missing.status_code == 400, path
        assert "CSRF token is missing" in text(missing)
        forged = signed_in.post(path, {"body": "x", "csrf_token": "forged"})
        assert forged.status_code == 400, path
    # Nothing happened: still signed in, the one template untouched, no conversation.
    assert signed_in.get("/").status_code == 200
    assert [t.title for t in templates.list_templates(sms.state, sms.tenant.project_id)] == ["t1"]
    assert sms.conversations() == []


def test_csrf_token_of_another_session_is_refused(signed_in, sms):
    stranger = Browser(sms)
    stolen = stranger.token()
    response = signed_in.post("/conversations/send", {"csrf_token": stolen, "user_number": USER})
    assert response.status_code == 400


def test_the_preview_takes_the_token_in_a_header(signed_in):
    token = signed_in.token()
    response = signed_in.client.post(
        "/dashboard/templates/preview", data={"body": "Hi"}, headers={"X-CSRF-Token": token}
    )
    assert response.status_code == 200


# -- nothing of another project ------------------------------------------------------------------
@pytest.fixture
def other_project(sms):
    """Another account's project on the same app, with a conversation, a template, an opt-out."""
    other = sms.provision(numbers=(OTHER_AGENT,))
    conversation = sms.send_ok(USER, "other project's secret plan", tenant=other)
    template = templates.create_template(
        sms.state,
        other.project_id,
        title="other_template",
        body="Other body",
        env_phone_numbers={"live": OTHER_AGENT},
    )
    sms.inbound_ok(USER, "STOP", to=OTHER_AGENT, token=other.twilio_auth_token)
    return other, conversation["conversation_id"], template.id


def test_another_projects_conversation_is_404(signed_in, other_project):
    _, conversation_id, _ = other_project
    response = signed_in.get(f"/conversations/{conversation_id}")
    assert response.status_code == 404
    assert "secret plan" not in text(response)
    assert signed_in.get("/conversations/conv_unknown").status_code == 404
    listing = text(signed_in.get("/conversations?environment="))
    assert conversation_id not in listing


def test_another_projects_template_is_404(signed_in, other_project, sms):
    other, _, template_id = other_project
    assert signed_in.get(f"/templates/{template_id}").status_code == 404
    edit = {"title": "mine now", "body": "x", "sender_live": AGENT}
    assert signed_in.post(f"/templates/{template_id}", edit).status_code == 404
    assert signed_in.post(f"/templates/{template_id}/duplicate").status_code == 404
    assert signed_in.post(f"/templates/{template_id}/delete").status_code == 404
    assert "other_template" not in text(signed_in.get("/templates"))
    assert [t.title for t in templates.list_templates(sms.state, other.project_id)] == [
        "other_template"
    ]


def test_opt_out_lookup_shows_only_this_projects_senders(signed_in, other_project):
    page = text(signed_in.get("/opt-outs", query_string={"number": USER}))
    assert OTHER_AGENT not in page
    assert "No opt-out or opt-in recorded" in page


def test_widget_counts_only_this_project(signed_in, other_project):
    page = text(signed_in.get("/"))
    assert re.search(r'id="total-sent">0<', page)


# -- no secret in any response -------------------------------------------------------------------
def test_no_api_key_or_auth_token_in_any_response_or_cookie(signed_in, sms):
    secrets_ = (sms.tenant.api_key, sms.tenant.twilio_auth_token)
    signed_in.post("/conversations/send", {"user_number": USER, "message": "Hello"})
    sms.inbound_ok(USER, "STOP")
    created = signed_in.post(
        "/templates/new", {"title": "greeting", "body": "Hi ${name}", "sender_live": AGENT}
    )
    template_path = created.headers["Location"].removeprefix("/dashboard")
    conversation_id = sms.conversations()[0]["id"]
    for path in (
        "/",
        "/templates",
        template_path,
        "/templates/new",
        "/conversations",
        f"/conversations/{conversation_id}",
        f"/opt-outs?number=%2B{USER[1:]}",
        "/simulator",
    ):
        signed_in.get(path)
    signed_in.post("/templates/preview", {"body": "Hi"})
    signed_in.sign_in(api_key="wrong-" + sms.tenant.api_key)
    signed_in.sign_in()
    for response in signed_in.responses:
        body = response.get_data()
        cookies = " ".join(response.headers.getlist("Set-Cookie"))
        for secret in secrets_:
            assert secret.encode() not in body, response.request.path
            assert secret not in cookies
    # The host's session cookie is signed, not encrypted: it holds the CSRF token (and flashes)
    # only. The dashboard's cookie holds a random secret; the store keeps only its digest.
    session = signed_in.session()
    assert set(session) <= {CSRF_SESSION_KEY, "_flashes"}
    for value in session.values():
        assert all(secret not in str(value) for secret in secrets_)
    cookie = signed_in.sign_in_cookie()
    assert cookie and all(secret not in cookie for secret in secrets_)
    record = sms.store.get_dashboard_sign_in(hashlib.sha256(cookie.encode()).hexdigest())
    assert record is not None and record.ended_at is None
    assert sms.store.get_dashboard_sign_in(cookie) is None


# -- on the SQLite store --------------------------------------------------------------------------
def test_every_page_on_the_sqlite_store(make_sms, tmp_path):
    sms = make_sms(POLYSMS_DASHBOARD=True, POLYSMS_STORAGE_URL=f"sqlite:///{tmp_path}/dashboard.db")
    browser = Browser(sms)
    browser.sign_in()
    browser.post("/conversations/send", {"user_number": USER, "message": "Hello"})
    sms.inbound_ok(USER, "STOP")
    created = browser.post(
        "/templates/new", {"title": "t", "body": "Hi ${x}", "sender_live": AGENT}
    )
    conversation_id = sms.conversations()[0]["id"]
    for path in (
        "/",
        "/templates",
        created.headers["Location"].removeprefix("/dashboard"),
        "/conversations",
        f"/conversations/{conversation_id}",
        f"/opt-outs?number=%2B{USER[1:]}",
    ):
        assert browser.get(path).status_code == 200, path
    page = text(browser.get(f"/conversations/{conversation_id}"))
    assert "You have been unsubscribed" in page
    assert "data-opted-out" in text(browser.get(f"/opt-outs?number=%2B{USER[1:]}"))
