"""The dashboard through Flask's test client: sign-in, CSRF, tenancy, every page, no secret out.

The whole loop in a real browser is in test_dashboard_browser.py; these tests pin the rules one by
one and run everywhere (no Chromium needed).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from datetime import date, timedelta
from pathlib import Path

import pytest
from flask import Flask

from flask_polysms import PolySMS
from flask_polysms.config import ConfigError
from flask_polysms.crypto import hash_api_key
from flask_polysms.services import templates
from flask_polysms.services.state import get_state
from flask_polysms.services.tenancy import revoke_api_key
from flask_polysms.web.dashboard import chart
from flask_polysms.web.dashboard.access import COOKIE_NAME, CSRF_SESSION_KEY

AGENT = "+14155552671"
OTHER_AGENT = "+14155552673"
USER = "+14155552674"
USER_2 = "+14155552675"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """The test client as a person at the dashboard: reads the CSRF token from the pages."""

    def __init__(self, sms, root: str = "/dashboard") -> None:
        self.sms = sms
        self.client = sms.app.test_client()
        self.root = root
        self.responses = []

    def get(self, path: str, **kwargs):
        response = self.client.get(self.root + path, **kwargs)
        self.responses.append(response)
        return response

    def token(self) -> str:
        page = self.client.get(self.root + "/sign-in")
        found = CSRF_RE.search(page.get_data(as_text=True))
        if found is None:  # signed in already: the sign-in page redirects
            page = self.client.get(self.root + "/opt-outs")
            found = CSRF_RE.search(page.get_data(as_text=True))
        return found.group(1)

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True, **kwargs):
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf_token", self.token())
        response = self.client.post(self.root + path, data=data, **kwargs)
        self.responses.append(response)
        return response

    def sign_in(self, tenant=None, *, api_key: str | None = None):
        tenant = tenant or self.sms.tenant
        return self.post(
            "/sign-in",
            {"api_key": api_key or tenant.api_key, "connector_id": tenant.connector_id},
        )

    def session(self) -> dict:
        with self.client.session_transaction() as session:
            return dict(session)

    def sign_in_cookie(self) -> str | None:
        """The dashboard's own cookie (the sign-in's secret), None when the browser has none."""
        cookie = self.client.get_cookie(COOKIE_NAME, path=self.root + "/")
        return cookie.value if cookie else None


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def sms(make_sms):
    return make_sms(POLYSMS_DASHBOARD=True, numbers=(AGENT,))


@pytest.fixture
def browser(sms):
    return Browser(sms)


@pytest.fixture
def signed_in(browser):
    response = browser.sign_in()
    assert response.status_code == 302, text(response)
    return browser


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


# -- the widget -----------------------------------------------------------------------------------
def _totals(page: str) -> dict[str, str]:
    return dict(re.findall(r'id="(total-[a-z-]+|delivery-rate)">([^<]*)<', page))


def test_widget_counts_sent_failed_and_rate(signed_in, sms):
    before = _totals(text(signed_in.get("/")))
    assert before["total-sent"] == "0" and before["delivery-rate"] == "–"
    signed_in.post("/conversations/send", {"user_number": USER, "message": "One"})
    signed_in.post("/conversations/send", {"user_number": USER_2, "message": "Two"})
    first, second = (m["sid"] for m in sms.outbox)
    sms.status_callback(first, "delivered", to=USER)
    sms.status_callback(second, "undelivered", to=USER_2, error_code=30003)
    page = text(signed_in.get("/"))
    after = _totals(page)
    assert after["total-sent"] == "2"
    assert after["total-delivered"] == "1"
    assert after["total-failed"] == "1"
    assert after["delivery-rate"] == "50.0%"
    assert after["total-conversations"] == "2"
    today = date.today().isoformat()
    bars = re.findall(r'data-series="(\w+)" data-day="([\d-]+)"\s+data-value="(\d+)"', page)
    assert len(bars) == 14 * len(chart.SERIES)
    assert (("sent", today, "2") in bars) and (("failed", today, "1") in bars)


def test_chart_geometry():
    days = [
        {"date": (date(2026, 11, 1) + timedelta(days=i)).isoformat(), "sent": i, "failed": 0}
        for i in range(14)
    ]
    days[-1].update(undelivered=3, api_failures=1)
    drawn = chart.daily_chart(days)
    assert len(drawn.bars) == 14 * 3
    assert [g.value for g in drawn.grid] == [0, 5, 10, 15, 20]  # 13 sent: steps of 5
    tallest = max(drawn.bars, key=lambda b: b.value)
    assert (tallest.series, tallest.value) == ("sent", 13)
    assert tallest.y + tallest.height == pytest.approx(drawn.baseline)
    failed = [b for b in drawn.bars if b.series == "failed" and b.day == days[-1]["date"]]
    assert failed[0].value == 3  # failed + undelivered
    empty = chart.daily_chart([{"date": "2026-11-01"}])
    assert all(b.height == 0 for b in empty.bars)
    assert [g.value for g in empty.grid] == [0, 1, 2, 3, 4]


# -- template manager -----------------------------------------------------------------------------
def test_template_create_edit_duplicate_delete(signed_in, sms):
    created = signed_in.post(
        "/templates/new",
        {"title": "reminder", "body": "See you at ${place}", "sender_live": AGENT},
    )
    assert created.status_code == 302
    edit_path = created.headers["Location"].removeprefix("/dashboard")
    page = text(signed_in.get(edit_path))
    assert "Template &#39;reminder&#39; created." in page
    assert 'id="preview-text">See you at ${place}<' in page
    assert "No value for ${place}" in page
    assert "reminder" in text(signed_in.get("/templates"))

    saved = signed_in.post(
        edit_path, {"title": "reminder2", "body": "Bye {{entity:name}}", "sender_live": AGENT}
    )
    assert saved.status_code == 302
    template_id = edit_path.rsplit("/", 1)[1]
    stored = templates.get_template(sms.state, sms.tenant.project_id, template_id)
    assert (stored.title, stored.body) == ("reminder2", "Bye {{entity:name}}")

    copy = signed_in.post(f"/templates/{template_id}/duplicate")
    assert copy.status_code == 302
    titles = [t.title for t in templates.list_templates(sms.state, sms.tenant.project_id)]
    assert titles == ["reminder2", "reminder2_copy"]

    deleted = signed_in.post(f"/templates/{template_id}/delete")
    assert deleted.headers["Location"] == "/dashboard/templates"
    titles = [t.title for t in templates.list_templates(sms.state, sms.tenant.project_id)]
    assert titles == ["reminder2_copy"]
    assert signed_in.get(edit_path).status_code == 404


def test_template_form_errors_name_the_field(signed_in, sms):
    bad = signed_in.post(
        "/templates/new", {"title": "x", "body": "Hi {{ entity:name }}", "sender_live": USER}
    )
    assert bad.status_code == 400
    page = text(bad)
    assert "bad token" in page  # the body's field error
    assert f"{USER} is not provisioned for this project" in page
    assert 'value="x"' in page  # what was typed is kept
    signed_in.post("/templates/new", {"title": "taken", "body": "Hi", "sender_live": AGENT})
    clash = signed_in.post("/templates/new", {"title": "taken", "body": "Hi", "sender_live": AGENT})
    assert clash.status_code == 409
    assert "already exists" in text(clash)


def test_new_template_form_offers_the_live_numbers(signed_in):
    page = text(signed_in.get("/templates/new"))
    assert f'name="sender_live" value="{AGENT}"' in page
    assert f'<option value="{AGENT}">' in page


def _preview(signed_in, **form) -> dict[str, str]:
    response = signed_in.post("/templates/preview", form)
    assert response.status_code == 200
    return dict(re.findall(r'id="(preview-[a-z]+)">([^<]*)<', text(response)))


def test_live_preview(signed_in, sms):
    shown = _preview(
        signed_in,
        body="Hi ${first}, code {{vrbl:code}} for {{entity:item}}",
        variant="first=Ann",
        entities="item = lamp",
        variables="code=42",
    )
    assert shown["preview-text"] == "Hi Ann, code 42 for lamp"
    assert (shown["preview-encoding"], shown["preview-segments"]) == ("GSM-7", "1")
    assert "preview-missing" not in shown
    emoji = _preview(signed_in, body="Thanks 😀 " + "x" * 70)
    assert (emoji["preview-encoding"], emoji["preview-segments"]) == ("UCS-2", "2")
    long = _preview(signed_in, body="a" * 161)
    assert (long["preview-encoding"], long["preview-segments"]) == ("GSM-7", "2")
    missing = text(signed_in.post("/templates/preview", {"body": "Hi ${who}"}))
    assert "No value for ${who}" in missing
    broken = _preview(signed_in, body="Hi }}")
    assert "closes no" in broken["preview-error"]
    bad_values = _preview(signed_in, body="Hi", entities="no equals sign")
    assert "entities, line 1" in bad_values["preview-error"]


def test_edit_page_preview_uses_the_environments_variant(signed_in, sms):
    sms.store.update_project(
        sms.tenant.project_id, settings={"variants": {"live": {"clinic": "Sunrise"}}}
    )
    template = templates.create_template(
        sms.state,
        sms.tenant.project_id,
        title="t",
        body="At ${clinic}",
        env_phone_numbers={"live": AGENT},
    )
    page = text(signed_in.get(f"/templates/{template.id}"))
    assert 'id="preview-text">At Sunrise<' in page
    assert "clinic=Sunrise</textarea>" in page


# -- conversations --------------------------------------------------------------------------------
def test_send_opens_a_conversation_and_the_viewer_shows_it(signed_in, sms):
    response = signed_in.post(
        "/conversations/send", {"user_number": USER, "message": "Your table is ready"}
    )
    assert response.status_code == 302
    conversation_id = sms.conversations()[0]["id"]
    assert response.headers["Location"] == f"/dashboard/conversations/{conversation_id}"
    page = text(signed_in.get(f"/conversations/{conversation_id}"))
    assert "Your table is ready" in page
    assert 'class="status status-sent" data-status>sent<' in page
    assert sms.outbox[0]["body"] == "Your table is ready"


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"user_number": "555", "message": "x"}, "is not an E.164 phone number"),
        ({"user_number": USER, "message": ""}, "1 to 1600 characters"),
        ({"user_number": USER, "message": "x", "agent_number": USER_2}, "is not provisioned"),
    ],
)
def test_send_form_errors(signed_in, sms, form, message):
    response = signed_in.post("/conversations/send", form)
    assert response.headers["Location"] == "/dashboard/conversations"
    assert message in text(signed_in.get("/conversations"))
    assert sms.conversations() == []


def test_viewer_shows_the_error_code_of_a_failed_send(make_emulated_sms):
    sms, emulator = make_emulated_sms(POLYSMS_DASHBOARD=True)
    emulator.fail_next(1, 21614)
    browser = Browser(sms)
    browser.sign_in()
    browser.post("/conversations/send", {"user_number": USER, "message": "Hello landline"})
    conversation_id = sms.conversations()[0]["id"]
    page = text(browser.get(f"/conversations/{conversation_id}"))
    assert "data-status>failed<" in page
    assert "<code>21614</code>" in page
    assert re.search(r'id="total-api-failures">1<', text(browser.get("/")))


def test_conversation_filters(signed_in, sms):
    for number in (USER, USER_2):
        signed_in.post("/conversations/send", {"user_number": number, "message": "Hi"})
    every = text(signed_in.get("/conversations"))
    assert USER in every and USER_2 in every
    only = text(signed_in.get("/conversations", query_string={"user_number": USER_2}))
    assert USER_2 in only and f"<td>{USER}</td>" not in only
    closed = text(signed_in.get("/conversations?state=closed"))
    assert "No conversations match." in closed
    assert signed_in.get("/conversations?environment=live").status_code == 200
    sandbox = signed_in.get("/conversations?environment=sandbox")
    assert sandbox.status_code == 400
    assert "this sign-in sees the live environment only" in text(sandbox)
    assert signed_in.get("/conversations?environment=staging").status_code == 400
    bad = signed_in.get("/conversations?user_number=123")
    assert bad.status_code == 400
    assert "is not an E.164 phone number" in text(bad)
    assert signed_in.get("/conversations?cursor=@@@").status_code == 400


def test_conversations_are_those_of_the_connectors_environment(signed_in, sms):
    # The same project's sandbox: another connector of the same project, its own number.
    with sms.app.app_context():
        from flask_polysms.services import provisioning

        connector = provisioning.create_connector(sms.state, sms.tenant.project_id, "sandbox")
        provisioning.add_sender(sms.state, sms.tenant.project_id, "+14155552672", "sandbox")
    sandbox_tenant = {**sms.tenant.headers, "X-TOKEN-ID": connector.id}
    response = sms.client.post(
        "/v1/outbound-sms",
        json={"user_number": USER_2, "message": "sandbox secret"},
        headers=sandbox_tenant,
    )
    assert response.status_code == 202
    sandbox_id = response.get_json()["conversation_id"]
    signed_in.post("/conversations/send", {"user_number": USER, "message": "live hello"})
    listing = text(signed_in.get("/conversations"))
    assert USER in listing and USER_2 not in listing
    page = signed_in.get(f"/conversations/{sandbox_id}")
    assert page.status_code == 404
    assert "sandbox secret" not in text(page)
    assert "The live environment's conversations only" in " ".join(listing.split())


def test_the_pages_say_what_is_project_wide(signed_in, sms):
    def page(browser, path: str) -> str:
        return " ".join(text(browser.get(path)).split())

    sign_in_page = page(Browser(sms), "/sign-in")
    assert "its conversations, messages and figures of the connector's environment" in (
        sign_in_page
    )
    assert "its templates and opt-outs, which belong to the whole project" in sign_in_page
    assert "project and environment only" not in sign_in_page
    assert "Templates belong to the whole project, not to the live environment" in page(
        signed_in, "/templates"
    )
    assert "Shared by every environment of the project" in page(signed_in, "/templates/new")
    assert "cover the project's senders of every environment" in page(signed_in, "/opt-outs")


def test_conversation_pages(signed_in, sms, monkeypatch):
    from flask_polysms.web.dashboard import views

    monkeypatch.setattr(views, "PAGE_SIZE", 1)
    for number in (USER, USER_2):
        signed_in.post("/conversations/send", {"user_number": number, "message": "Hi"})
    first = text(signed_in.get("/conversations"))
    next_url = re.search(r'href="([^"]+)" id="next-page"', first).group(1).replace("&amp;", "&")
    second = text(signed_in.client.get(next_url))
    assert (f"<td>{USER_2}</td>" in first) and (f"<td>{USER}</td>" in second)
    assert 'id="next-page"' not in second


# -- opt-outs -------------------------------------------------------------------------------------
def test_opt_out_lookup_and_history(signed_in, sms):
    sms.inbound_ok(USER, "Stop")
    page = text(signed_in.get("/opt-outs", query_string={"number": USER}))
    assert "data-opted-out>opted out<" in page
    assert "<code>Stop</code>" in page
    sms.inbound_ok(USER, "START")
    page = text(signed_in.get("/opt-outs", query_string={"number": USER}))
    assert "data-opted-out" not in page
    assert page.index("<code>START</code>") < page.index("<code>Stop</code>")  # newest first
    bad = signed_in.get("/opt-outs?number=hello")
    assert bad.status_code == 400


# -- phone simulator ------------------------------------------------------------------------------
def test_simulator_needs_the_emulator(signed_in):
    response = signed_in.get("/simulator")
    assert response.status_code == 404
    assert "TwilioEmulator" in text(response)
    assert "Phone simulator" not in text(signed_in.get("/"))


def test_simulator_reply_is_a_signed_webhook(make_emulated_sms, live_server):
    """Without a browser: the reply box posts to the app's own webhook over HTTP."""
    base_url, bind = live_server
    sms, emulator = make_emulated_sms(
        emulator={"callbacks": "auto"}, POLYSMS_DASHBOARD=True, POLYSMS_PUBLIC_URL=base_url
    )
    bind(sms.app)
    get_state(sms.app).emulator = emulator
    browser = Browser(sms)
    browser.sign_in()
    assert "Phone simulator" in text(browser.get("/"))
    browser.post("/conversations/send", {"user_number": USER, "message": "Reminder: 10:00"})
    page = text(browser.get("/simulator"))  # the most recent number is opened
    assert 'data-direction="received"' in page and "Reminder: 10:00" in page
    reply = browser.post("/simulator/reply", {"number": USER, "to": AGENT, "body": "STOP"})
    assert reply.headers["Location"] == f"/dashboard/simulator?number=%2B{USER[1:]}"
    assert sms.store.is_opted_out(USER, AGENT)
    page = text(browser.get("/simulator", query_string={"number": USER}))
    bubbles = re.findall(r'data-direction="(\w+)">.*?<div class="text">([^<]*)<', page, re.S)
    assert [b[0] for b in bubbles] == ["received", "sent", "received"]
    assert bubbles[1][1] == "STOP"
    assert bubbles[2][1].startswith("You have been unsubscribed")
    assert "Sent &#39;STOP&#39;" in page
    # The emulator saw the confirmation; the webhook was signed with the project's token.
    assert emulator.messages[-1]["body"].startswith("You have been unsubscribed")


def test_simulator_reply_reaches_an_app_mounted_under_a_path(make_emulated_sms, live_server):
    """No POLYSMS_PUBLIC_URL: the webhook is called where the app is served, its mount point too."""
    from werkzeug.exceptions import NotFound
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    base_url, bind = live_server
    sms, emulator = make_emulated_sms(emulator={"callbacks": "auto"}, POLYSMS_DASHBOARD=True)
    bind(DispatcherMiddleware(NotFound(), {"/shop": sms.app}))
    get_state(sms.app).emulator = emulator
    client = sms.app.test_client()
    mounted = {"base_url": base_url + "/shop"}  # SCRIPT_NAME=/shop, on the live server's host

    def csrf_token(path: str) -> str:
        return CSRF_RE.search(client.get(path, **mounted).get_data(as_text=True))[1]

    credentials = {"api_key": sms.tenant.api_key, "connector_id": sms.tenant.connector_id}
    token = csrf_token("/dashboard/sign-in")
    client.post("/dashboard/sign-in", data={**credentials, "csrf_token": token}, **mounted)
    reply = {"number": USER, "to": AGENT, "body": "STOP"}
    token = csrf_token("/dashboard/opt-outs")
    answer = client.post(
        "/dashboard/simulator/reply", data={**reply, "csrf_token": token}, **mounted
    )

    assert answer.status_code == 302
    page = client.get("/dashboard/simulator", **mounted).get_data(as_text=True)
    assert sms.store.is_opted_out(USER, AGENT), page


def test_simulator_reply_errors(make_emulated_sms, live_server):
    base_url, bind = live_server
    sms, emulator = make_emulated_sms(POLYSMS_DASHBOARD=True, POLYSMS_PUBLIC_URL=base_url)
    get_state(sms.app).emulator = emulator
    browser = Browser(sms)
    browser.sign_in()
    browser.post("/simulator/reply", {"number": USER, "to": USER_2, "body": "hi"})
    assert "is not one of this project&#39;s numbers" in text(browser.get("/simulator"))
    # The server is not serving the app yet: the reply is handed to the app in-process anyway.
    browser.post("/simulator/reply", {"number": USER, "to": AGENT, "body": "hi"})
    page = text(browser.get("/simulator", query_string={"number": USER}))
    assert "Sent &#39;hi&#39;" in page
    bind(sms.app)
    sms.store.update_project(sms.tenant.project_id, twilio_auth_token_encrypted=None)
    browser.post("/simulator/reply", {"number": USER, "to": AGENT, "body": "hi"})
    assert "no Twilio connection" in text(browser.get("/simulator", query_string={"number": USER}))


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
