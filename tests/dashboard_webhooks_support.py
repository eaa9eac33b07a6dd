"""Helpers shared by the dashboard tests and the event webhook tests.

- The dashboard's: ``Browser`` (Flask's test client as a person at the dashboard, reading the CSRF
  token from the pages), ``text`` and the fixtures ``sms`` (an app with the dashboard on),
  ``browser`` and ``signed_in``.
- The event webhooks': ``Receiver`` (an HTTP server on 127.0.0.1 recording every POST) and its
  ``receiver`` fixture, and the helpers that subscribe, list, read the delivery log, verify a
  signature and find the next retry.

A fixture ``name`` is defined here as ``name_fixture``; a test module imports those it uses (and
those they use: ``signed_in`` needs ``browser`` and ``sms``).
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from flask_polysms.services.state import get_state
from flask_polysms.web.dashboard.access import COOKIE_NAME

AGENT = "+14155552671"
USER = "+14155552674"


# -- the dashboard --------------------------------------------------------------------------------
OTHER_AGENT = "+14155552673"
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


@pytest.fixture(name="sms")
def sms_fixture(make_sms):
    return make_sms(POLYSMS_DASHBOARD=True, numbers=(AGENT,))


@pytest.fixture(name="browser")
def browser_fixture(sms):
    return Browser(sms)


@pytest.fixture(name="signed_in")
def signed_in_fixture(browser):
    response = browser.sign_in()
    assert response.status_code == 302, text(response)
    return browser


# -- event webhooks -------------------------------------------------------------------------------
START = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
ALL_EVENTS = [
    "message.received",
    "message.status",
    "opt_out.created",
    "opt_out.removed",
    "conversation.opened",
    "conversation.closed",
    "conversation.handoff",
]


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST (headers, body) and answers each with
    the next of ``statuses`` (the last one again once they run out)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses = [200]
        #: When set to an unset Event: every request waits for it (at most 8 s) before its answer,
        #: as a receiver that hangs does.
        self.hold: threading.Event | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                if receiver.hold is not None:
                    receiver.hold.wait(timeout=8)
                status = (
                    receiver.statuses.pop(0)
                    if len(receiver.statuses) > 1
                    else (receiver.statuses[0])
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()

    def events(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def types(self) -> list[str]:
        return [event["type"] for event in self.events()]


@pytest.fixture(name="receiver")
def receiver_fixture():
    server = Receiver()
    yield server
    server.stop()


def subscribe(sms, url: str, events: list[str], tenant=None, status: int = 201) -> dict:
    response = sms.client.post(
        "/v1/webhooks", json={"url": url, "events": events}, headers=(tenant or sms.tenant).headers
    )
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def listed(sms, tenant=None) -> list[dict]:
    response = sms.client.get("/v1/webhooks", headers=(tenant or sms.tenant).headers)
    assert response.status_code == 200
    return response.get_json()["webhooks"]


def deliveries(sms, subscription_id: str, tenant=None) -> list[dict]:
    response = sms.client.get(
        f"/v1/webhooks/{subscription_id}/deliveries", headers=(tenant or sms.tenant).headers
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["deliveries"]


def verified(request: dict, secret: str) -> dict:
    """The body of a received request, once its signature is verified by standardwebhooks."""
    return Webhook(secret).verify(request["body"], request["headers"])


def next_retry_at(sms) -> datetime | None:
    """When the next waiting delivery retry is due (None: none waits)."""
    waiting = [
        when for when, job, _ in get_state(sms.app).scheduler.pending() if job == "webhook-delivery"
    ]
    if not waiting:
        return None
    return min(waiting)
