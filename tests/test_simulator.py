"""The phone simulator's reply: handed to the app in-process, signed over the configured URL.

A forged Host header must not make the dashboard connect anywhere (it was a server-side request
forgery and a port scanner through the error text), and a failing webhook shows no detail of what
failed where.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
from flask import abort, request

from flask_polysms.services.state import get_state

AGENT = "+14155552671"
USER = "+14155552674"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


class Dashboard:
    """The test client signed in to the dashboard, with the CSRF token of its session; every
    request carries the Host header ``host`` when one is given."""

    def __init__(self, sms, host: str | None = None) -> None:
        self.sms = sms
        self.client = sms.app.test_client()
        if host is not None:
            self.client.environ_base["HTTP_HOST"] = host
        self.post(
            "/sign-in",
            {"api_key": sms.tenant.api_key, "connector_id": sms.tenant.connector_id},
        )

    def page(self, path: str, **kwargs) -> str:
        return self.client.get("/dashboard" + path, **kwargs).get_data(as_text=True)

    def post(self, path: str, data: dict, **kwargs):
        page = self.page("/sign-in")
        found = CSRF_RE.search(page) or CSRF_RE.search(self.page("/opt-outs"))
        data = {**data, "csrf_token": found.group(1)}
        return self.client.post("/dashboard" + path, data=data, **kwargs)

    def reply(self, body: str, **kwargs):
        answer = self.post(
            "/simulator/reply", {"number": USER, "to": AGENT, "body": body}, **kwargs
        )
        assert answer.status_code == 302
        return self.page("/simulator", query_string={"number": USER})


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening port that nothing may connect to: the forged Host names it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        yield listener


def connected(listener: socket.socket) -> bool:
    try:
        connection, _ = listener.accept()
    except TimeoutError:
        return False
    connection.close()
    return True


def inbound_bodies(sms) -> list[str]:
    with sms.app.app_context():
        store = get_state(sms.app).store
        sessions, _ = store.list_sessions(sms.tenant.project_id, user_number=USER)
        return [
            m.body
            for session in sessions
            for m in store.list_messages(session.id)
            if m.direction == "inbound"
        ]


@pytest.mark.parametrize(
    "public_url",
    [None, "https://sms.example.test"],
    ids=["testing-without-public-url", "public-url"],
)
def test_a_forged_host_cannot_send_the_reply_elsewhere(make_emulated_sms, trap, public_url):
    config = {"POLYSMS_PUBLIC_URL": public_url} if public_url else {}
    sms, emulator = make_emulated_sms(POLYSMS_DASHBOARD=True, numbers=(AGENT,), **config)
    get_state(sms.app).emulator = emulator
    seen_urls = []

    @sms.app.before_request
    def note_the_webhook_url():
        if request.path.endswith("/v1/twilio/sms"):
            seen_urls.append(request.url)

    dashboard = Dashboard(sms, host=f"127.0.0.1:{trap.getsockname()[1]}")
    page = dashboard.reply("Can we move it to Friday?")

    assert not connected(trap)
    assert "Sent &#39;Can we move it to Friday?&#39;" in page
    assert inbound_bodies(sms) == ["Can we move it to Friday?"]
    if public_url:
        # Signed over the configured URL, as Twilio would call it, and checked over it.
        assert seen_urls == [f"{public_url}/v1/twilio/sms"]


def test_a_failing_webhook_shows_no_detail(make_emulated_sms, caplog):
    sms, emulator = make_emulated_sms(
        POLYSMS_DASHBOARD=True, POLYSMS_PUBLIC_URL="https://sms.example.test", numbers=(AGENT,)
    )
    get_state(sms.app).emulator = emulator
    failure = {"mode": "raise"}
    wsgi_app = sms.app.wsgi_app

    def breaking_middleware(environ, start_response):
        # Outside Flask, so no error handler of the app can turn it into a response.
        if environ["PATH_INFO"].endswith("/v1/twilio/sms") and failure["mode"] == "raise":
            raise ConnectionRefusedError("db at 10.1.2.3:5432 refused the connection")
        return wsgi_app(environ, start_response)

    sms.app.wsgi_app = breaking_middleware

    @sms.app.before_request
    def refuse_the_webhook():
        if request.path.endswith("/v1/twilio/sms") and failure["mode"] == "403":
            abort(403)

    dashboard = Dashboard(sms)
    page = dashboard.reply("hello")
    assert "the webhook failed; the app&#39;s log says why" in page
    assert "10.1.2.3" not in page and "refused" not in page
    assert any("10.1.2.3" in r.exc_text for r in caplog.records if r.exc_text)

    failure["mode"] = "403"
    page = dashboard.reply("hello again")
    assert "the webhook answered HTTP 403" in page
    assert "sms.example.test" not in page
    assert inbound_bodies(sms) == []
