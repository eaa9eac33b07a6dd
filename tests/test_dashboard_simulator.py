"""The dashboard's phone simulator through Flask's test client: it needs the Twilio emulator,
and its reply box posts a signed webhook to the app (over HTTP, also when the app is mounted
under a path), with its errors shown on the page."""

from __future__ import annotations

import re

from dashboard_webhooks_support import (
    AGENT,
    CSRF_RE,
    USER,
    USER_2,
    Browser,
    browser_fixture,  # noqa: F401
    signed_in_fixture,  # noqa: F401
    sms_fixture,  # noqa: F401
    text,
)

from flask_polysms.services.state import get_state


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
