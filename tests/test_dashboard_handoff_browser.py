"""A human handoff in a real browser: headless Chromium (Debian's /usr/bin/chromium) via Playwright.

The user texts from the phone simulator (one tab), the agent hands the conversation off when
asked for a person, the operator (the dashboard, signed in, another tab) sees the handoff arrive
without reloading, replies from the reply box, the phone shows the reply, the operator hands the
conversation back and the agent answers the user's next text. The operator's page must never
reload: a marker set in its window at the start is still there at the end, and its main frame
never navigates. A second test drives the same buttons with JavaScript off (plain form posts).

The app is served over real HTTP; its gateway is the real twilio client talking to the local
TwilioEmulator. Screenshots go to ``test-output/screenshots/`` at the repository root. Without
Chromium (or Playwright) the tests skip with the reason; under ``CI=true`` they fail.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from handoff_agent import HandoffAgent

from flask_polysms.services.state import get_state

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
AGENT = "+14155552671"
USER = "+14155552674"
HANDOFF_TRIGGER = "Can I talk to a human?"
MARKER = "the page loaded once"


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


REPLY = "Agent here: you said {text!r}."  # the agent's answer when no person is asked for


@pytest.fixture
def served(make_emulated_sms, live_server):
    """The app over HTTP with the agent, the dashboard and the phone simulator on an emulator."""
    base_url, bind = live_server
    agent = HandoffAgent(HANDOFF_TRIGGER, REPLY)
    sms, emulator = make_emulated_sms(
        agent=agent,
        emulator={"callbacks": "auto"},
        numbers=(AGENT,),
        POLYSMS_DASHBOARD=True,
        POLYSMS_PUBLIC_URL=base_url,
    )
    bind(sms.app)
    get_state(sms.app).emulator = emulator
    return base_url + "/dashboard", sms, agent


def sign_in(page, dashboard: str, sms) -> None:
    from playwright.sync_api import expect

    page.goto(dashboard + "/sign-in")
    page.fill("input[name=api_key]", sms.tenant.api_key)
    page.fill("input[name=connector_id]", sms.tenant.connector_id)
    page.click("#sign-in-form button[type=submit]")
    expect(page).to_have_url(dashboard + "/")


def text_from_phone(phone, body: str) -> None:
    """The user types ``body`` in the simulator and sends it to the agent's number."""
    phone.fill("#reply-form input[name=body]", body)
    phone.click("#reply-button")


def watch(page) -> list[str]:
    """Problems (script errors, CSP violations) of a page the ``page`` fixture did not make."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    return problems


def test_a_full_handoff_without_reloading_the_operators_page(page, served):
    from playwright.sync_api import expect

    dashboard, sms, agent = served
    sign_in(page, dashboard, sms)
    phone = page.context.new_page()  # the same browser: signed in to the simulator too
    phone_problems = watch(phone)
    phone_thread = phone.locator("#phone-thread")
    received = phone_thread.locator(".bubble.received")

    # The user texts first; the agent answers.
    phone.goto(f"{dashboard}/simulator?number=%2B{USER[1:]}")
    text_from_phone(phone, "Hello")
    expect(received.last).to_contain_text("Agent here: you said 'Hello'.")

    # The operator opens the conversation, where the agent answers.
    page.click("nav >> text=Conversations")
    page.click("#conversation-list tbody a")
    live = page.locator("#conversation-live")
    messages = page.locator("#message-list")
    expect(live).to_have_attribute("data-mode", "agent")
    expect(page.locator("#handoff-state")).to_contain_text("The agent answers the user.")
    expect(page.locator("#take-over-button")).to_be_visible()
    expect(page.locator("#hand-back-button")).to_be_hidden()
    page.evaluate(f"window.operatorMarker = {MARKER!r}")
    navigations: list[str] = []
    page.on(
        "framenavigated",
        lambda frame: navigations.append(frame.url) if frame == page.main_frame else None,
    )
    shot(page, "30-handoff-agent-answers")

    # The user asks for a person: the agent hands off; the operator's page shows it by itself.
    text_from_phone(phone, HANDOFF_TRIGGER)
    expect(received.last).to_contain_text("Connecting you to a person.")
    expect(live).to_have_attribute("data-mode", "person")
    expect(page.locator("#handoff-reason")).to_have_text("the user asked for a person")
    expect(messages).to_contain_text(HANDOFF_TRIGGER)
    expect(messages).to_contain_text("Connecting you to a person.")
    expect(page.locator("#take-over-button")).to_be_hidden()
    expect(page.locator("#hand-back-button")).to_be_visible()
    shot(page, "31-handoff-operator-sees-it")

    # The operator replies from the reply box; the list shows it and the box empties.
    reply = "Hi, this is Sam at the clinic. How can I help?"
    page.fill("#reply-form textarea[name=message]", reply)
    page.click("#reply-button")
    expect(messages.locator("tr[data-kind=human]")).to_contain_text(reply)
    expect(page.locator("#operator-status")).to_contain_text(f"Reply to {USER}: sent.")
    expect(page.locator("#reply-form textarea[name=message]")).to_have_value("")

    # The user's phone shows the reply; the user answers, and only the operator sees it.
    phone.reload()
    expect(received.last).to_contain_text(reply)
    text_from_phone(phone, "Please move my appointment to Friday")
    expect(messages).to_contain_text("Please move my appointment to Friday")
    assert agent.texts == ["Hello", HANDOFF_TRIGGER]
    shot(phone, "32-handoff-phone-got-the-reply")
    shot(page, "33-handoff-operator-replied")

    # The operator hands back; the agent answers the user's next text.
    page.click("#hand-back-button")
    expect(live).to_have_attribute("data-mode", "agent")
    expect(page.locator("#operator-status")).to_contain_text("Handed back")
    expect(page.locator("#take-over-button")).to_be_visible()
    text_from_phone(phone, "Thanks! One more question")
    expect(received.last).to_contain_text("Agent here: you said 'Thanks! One more question'.")
    expect(messages).to_contain_text("Agent here: you said 'Thanks! One more question'.")
    assert agent.texts == ["Hello", HANDOFF_TRIGGER, "Thanks! One more question"]
    shot(phone, "34-handoff-agent-answers-again-phone")
    shot(page, "35-handoff-agent-answers-again")

    # All of it on one load of the operator's page.
    assert page.evaluate("window.operatorMarker") == MARKER
    assert navigations == []
    assert page.problems == [] and phone_problems == []


def test_the_buttons_work_without_javascript(page, served):
    """Plain form posts, each answered by a redirect back to the page (or the refusal)."""
    from playwright.sync_api import expect

    dashboard, sms, agent = served
    context = page.context.browser.new_context(java_script_enabled=False)
    try:
        plain = context.new_page()
        plain.set_default_timeout(15_000)
        problems = watch(plain)
        sign_in(plain, dashboard, sms)
        sms.inbound_ok(USER, "Hello")
        conversation_id = sms.conversations()[0]["id"]
        plain.goto(f"{dashboard}/conversations/{conversation_id}")
        page_url = re.compile(re.escape(f"/dashboard/conversations/{conversation_id}") + "$")

        plain.fill("#take-over-form input[name=reason]", "checking an invoice")
        plain.click("#take-over-button")
        expect(plain).to_have_url(page_url)
        expect(plain.locator(".flash-ok")).to_contain_text("Taken over")
        expect(plain.locator("#handoff-reason")).to_have_text("checking an invoice")
        expect(plain.locator("#take-over-button")).to_be_hidden()

        plain.fill("#reply-form textarea[name=message]", "Your invoice is paid.")
        plain.click("#reply-button")
        expect(plain.locator("#message-list tr[data-kind=human]")).to_contain_text("paid")

        plain.click("#hand-back-button")
        expect(plain.locator("#conversation-live")).to_have_attribute("data-mode", "agent")
        sms.inbound_ok(USER, "Great")
        assert agent.texts == ["Hello", "Great"]

        stale = context.new_page()  # a page loaded before the end still offers the buttons
        stale_problems = watch(stale)
        stale.goto(f"{dashboard}/conversations/{conversation_id}")
        plain.click("#end-button")  # no script: no confirmation dialog either
        expect(plain.locator("#conversation-live")).to_have_attribute("data-mode", "closed")
        expect(plain.locator("#operator-panel")).to_be_hidden()
        shot(plain, "36-handoff-without-javascript")

        # Its buttons are refused with 409 and the reason; nothing changes.
        stale.click("#take-over-button")
        expect(stale.locator("#operator-error")).to_have_text(
            "Nothing was changed: the conversation is closed."
        )
        assert sms.conversation(conversation_id)["handoff"] is None
        assert problems == []
        # The refusal answers 409, which Chromium logs; nothing else may go wrong.
        assert [p for p in stale_problems if "status of 409" not in p] == []
    finally:
        context.close()


def test_updates_pause_while_the_operator_is_away(page, served):
    """No key, pointer or scroll for half the sign-in's idle timeout (30 min): the page stops
    polling, so it cannot keep the sign-in alive for ever, and says so; the person's return starts
    it again. The page's clock is Playwright's, moved by the test."""
    from playwright.sync_api import expect

    dashboard, sms, _agent = served
    page.clock.install()
    sign_in(page, dashboard, sms)
    sms.inbound_ok(USER, "Hello")
    conversation_id = sms.conversations()[0]["id"]
    polls: list[str] = []
    page.on(
        "request", lambda request: polls.append(request.url) if "/live" in request.url else None
    )
    page.goto(f"{dashboard}/conversations/{conversation_id}")
    messages = page.locator("#message-list")
    sms.inbound_ok(USER, "Are you there?")
    expect(messages).to_contain_text("Are you there?")

    page.clock.fast_forward("16:00")  # sixteen minutes without the person
    expect(page.locator("#updates-paused")).to_be_visible()
    polled = len(polls)
    sms.inbound_ok(USER, "Hello??")
    page.clock.run_for(10_000)  # the poll's timer fires several times, and does not poll
    assert len(polls) == polled
    expect(messages).not_to_contain_text("Hello??")
    shot(page, "37-handoff-updates-paused")

    page.mouse.move(200, 200)  # back
    expect(messages).to_contain_text("Hello??")
    expect(page.locator("#updates-paused")).to_have_count(0)
    assert page.problems == []


def test_a_refused_button_says_why_without_a_reload(page, served):
    """The conversation was ended elsewhere (the API) while the page still offered the reply box:
    the reply is refused (409) and the page shows why and the closed conversation, on the same
    load. The page's clock (Playwright's) is paused first so that no poll shows the end before
    the click."""
    from playwright.sync_api import expect

    dashboard, sms, _agent = served
    page.clock.install()
    sign_in(page, dashboard, sms)
    sms.inbound_ok(USER, "Hello")
    conversation_id = sms.conversations()[0]["id"]
    page.goto(f"{dashboard}/conversations/{conversation_id}")
    page.evaluate(f"window.operatorMarker = {MARKER!r}")
    page.fill("#reply-form textarea[name=message]", "Sorry for the wait")
    # The jump fires the poll's timer once: its answer comes before the end, then time stops.
    with page.expect_response(lambda response: response.url.endswith("/live")):
        page.clock.pause_at(datetime.now() + timedelta(minutes=1))
    ended = sms.client.post(f"/v1/conversations/{conversation_id}/end", headers=sms.tenant.headers)
    assert ended.status_code == 200
    expect(page.locator("#conversation-live")).to_have_attribute("data-mode", "agent")

    page.click("#reply-button")
    expect(page.locator("#operator-error")).to_have_text(
        "Nothing was changed: the conversation is closed."
    )
    expect(page.locator("#conversation-live")).to_have_attribute("data-mode", "closed")
    expect(page.locator("#operator-panel")).to_be_hidden()
    shot(page, "38-handoff-refused")
    assert page.evaluate("window.operatorMarker") == MARKER
    assert [m["kind"] for m in sms.conversation(conversation_id)["messages"]] == ["user", "agent"]
    # The refusal answers 409, which Chromium logs; nothing else may go wrong.
    assert [p for p in page.problems if "status of 409" not in p] == []
