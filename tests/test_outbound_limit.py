"""``POLYSMS_RATE_LIMIT`` is counted by the outbound service: every caller that starts a message
(the API, the dashboard) uses the project's one budget, and the API counts each request once."""

from __future__ import annotations

import re

import pytest

AGENT = "+14155552671"
USER = "+14155552674"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


class Dashboard:
    """A person signed in to the dashboard of ``sms`` (the Flask test client)."""

    def __init__(self, sms) -> None:
        self.client = sms.app.test_client()
        self.post("/sign-in", api_key=sms.tenant.api_key, connector_id=sms.tenant.connector_id)

    def token(self) -> str:
        for path in ("/sign-in", "/opt-outs"):  # the sign-in page redirects once signed in
            found = CSRF_RE.search(self.client.get("/dashboard" + path).get_data(as_text=True))
            if found:
                return found.group(1)
        raise AssertionError("no CSRF token on the pages")

    def post(self, path: str, **form: str):
        return self.client.post("/dashboard" + path, data={**form, "csrf_token": self.token()})

    def send(self, user_number: str, message: str):
        return self.post("/conversations/send", user_number=user_number, message=message)

    def page(self, path: str) -> str:
        return self.client.get("/dashboard" + path).get_data(as_text=True)


@pytest.fixture
def limited(make_sms):
    return make_sms(POLYSMS_DASHBOARD=True, numbers=(AGENT,), POLYSMS_RATE_LIMIT="2 per minute")


def test_the_dashboards_send_is_limited_with_a_clear_error(limited):
    dashboard = Dashboard(limited)
    for text in ("one", "two"):
        assert dashboard.send(USER, text).status_code == 302
    over = dashboard.send(USER, "three")
    assert over.status_code == 302
    assert over.headers["Location"] == "/dashboard/conversations"
    page = dashboard.page("/conversations")
    assert "Not sent: rate limit exceeded for this project (2 per 1 minute)" in page
    assert re.search(r"try again in \d+ s", page)
    # Nothing of the third message exists: no conversation, nothing handed to the gateway.
    assert [m["body"] for m in limited.outbox] == ["one", "two"]
    assert len(limited.conversations()) == 2


def test_the_api_and_the_dashboard_share_the_projects_budget(limited):
    dashboard = Dashboard(limited)
    limited.send_ok(USER, "from the API")
    assert dashboard.send(USER, "from the dashboard").status_code == 302
    response = limited.send(USER, "one too many")
    assert response.status_code == 429
    assert response.headers["Retry-After"].isdigit()
    dashboard.send(USER, "also too many")
    assert "rate limit exceeded" in dashboard.page("/conversations")
    assert [m["body"] for m in limited.outbox] == ["from the API", "from the dashboard"]


def test_the_api_counts_each_request_once(make_sms):
    sms = make_sms(numbers=(AGENT,), POLYSMS_RATE_LIMIT="3 per minute")
    for n in range(3):
        sms.send_ok(USER, f"message {n}")
    assert sms.send(USER, "fourth").status_code == 429
    assert len(sms.outbox) == 3


def test_another_project_keeps_its_own_budget(limited):
    other = limited.provision(numbers=("+14155552673",))
    dashboard = Dashboard(limited)
    dashboard.send(USER, "one")
    dashboard.send(USER, "two")
    assert limited.send(USER, "mine is full").status_code == 429
    assert limited.send(USER, "theirs is not", tenant=other).status_code == 202
