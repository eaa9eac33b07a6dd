"""The dashboard in a real browser: headless Chromium (Debian's /usr/bin/chromium) via Playwright.

One person's whole loop: sign in, write a template and watch its live preview, send an SMS, open
the user's phone in the simulator, reply STOP, find the opt-out and its history, and see the
widget's counts change. The app is served over real HTTP, its gateway is the real twilio client
talking to the local TwilioEmulator, whose signed status callbacks come back to the app.

Screenshots go to ``test-output/screenshots/`` at the repository root, for a person to look at.
Without Chromium (or Playwright) the tests skip with the reason; under ``CI=true`` they fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flask_polysms.services.state import get_state

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
TIMEOUT_MS = 15_000
AGENT = "+14155552671"
USER = "+14155552674"


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def served(make_emulated_sms, live_server):
    """The app over HTTP with the dashboard and the phone simulator on an emulator."""
    base_url, bind = live_server
    sms, emulator = make_emulated_sms(
        emulator={"callbacks": "auto"},
        numbers=(AGENT,),
        POLYSMS_DASHBOARD=True,
        POLYSMS_PUBLIC_URL=base_url,
    )
    bind(sms.app)
    get_state(sms.app).emulator = emulator
    return base_url, sms, emulator


def test_the_whole_loop_in_a_browser(page, served):
    from playwright.sync_api import expect

    base_url, sms, emulator = served
    dashboard = base_url + "/dashboard"

    # Sign in: the dashboard sends us to the sign-in page first.
    page.goto(dashboard + "/")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?next="))
    page.fill("input[name=api_key]", sms.tenant.api_key)
    page.fill("input[name=connector_id]", sms.tenant.connector_id)
    shot(page, "01-sign-in")
    page.click("#sign-in-form button[type=submit]")
    expect(page).to_have_url(dashboard + "/")
    expect(page.locator("#total-sent")).to_have_text("0")
    expect(page.locator("#delivery-rate")).to_have_text("–")
    shot(page, "02-overview-before")

    # A template, with the preview following the typing.
    page.click("nav >> text=Templates")
    page.click("#new-template")
    page.fill("input[name=title]", "appointment_reminder")
    page.fill("textarea[name=variant]", "clinic=Sunrise Clinic")
    page.fill("textarea[name=entities]", "name=Ann")
    page.fill("textarea[name=body]", "Hi {{entity:name}}, see you at ${clinic} at {{vrbl:slot}}.")
    expect(page.locator("#preview-text")).to_have_text(
        "Hi Ann, see you at Sunrise Clinic at {{vrbl:slot}}."
    )
    expect(page.locator("#preview-missing")).to_contain_text("{{vrbl:slot}}")
    page.fill("textarea[name=variables]", "slot=10:00")
    expect(page.locator("#preview-text")).to_have_text(
        "Hi Ann, see you at Sunrise Clinic at 10:00."
    )
    expect(page.locator("#preview-encoding")).to_have_text("GSM-7")
    expect(page.locator("#preview-segments")).to_have_text("1")
    expect(page.locator("#preview-missing")).to_have_count(0)
    page.fill(
        "textarea[name=body]",
        "Hi {{entity:name}} 👋 see you at ${clinic} at {{vrbl:slot}}. Reply 1 to confirm, "
        "2 to reschedule.",
    )
    expect(page.locator("#preview-encoding")).to_have_text("UCS-2")
    expect(page.locator("#preview-segments")).to_have_text("2")
    shot(page, "03-template-preview")
    page.click("#save-template")
    expect(page.locator(".flash-ok")).to_contain_text("appointment_reminder")
    expect(page.locator("#preview-segments")).to_have_text("2")  # the saved template's preview
    page.click("nav >> text=Templates")
    expect(page.locator("#template-list")).to_contain_text("appointment_reminder")

    # Send an SMS: a new conversation whose first message is sent through the emulator.
    page.click("nav >> text=Conversations")
    page.fill("#send-form input[name=user_number]", USER)
    page.fill("#send-form textarea[name=message]", "Reminder: your appointment is tomorrow 10:00.")
    page.click("#send-button")
    expect(page.locator("#message-list")).to_contain_text("Reminder: your appointment")
    emulator.wait_for_callbacks(2)  # sent, delivered
    page.reload()
    expect(page.locator("#message-list [data-status]")).to_have_text(["delivered"])
    shot(page, "04-conversation")

    # The user's phone: the message arrived; reply STOP as the user would.
    page.click("nav >> text=Phone simulator")
    thread = page.locator("#phone-thread")
    expect(thread).to_contain_text("Reminder: your appointment")
    page.fill("#reply-form input[name=body]", "STOP")
    page.click("#reply-button")
    expect(page.locator("#phone-thread .bubble.sent")).to_contain_text("STOP")
    expect(thread.locator(".bubble.received").last).to_contain_text("You have been unsubscribed")
    emulator.wait_for_callbacks(4)  # and the confirmation's sent, delivered
    page.reload()
    shot(page, "05-simulator")

    # The opt-out, with its history.
    page.click("nav >> text=Opt-outs")
    page.fill("#opt-out-form input[name=number]", USER)
    page.click("#opt-out-form button[type=submit]")
    expect(
        page.locator(f"#opt-out-pairs tr[data-sender='{AGENT}'] [data-opted-out]")
    ).to_have_count(1)
    expect(page.locator("#opt-out-history")).to_contain_text("STOP")
    expect(page.locator("#opt-out-history")).to_contain_text("opted out")
    shot(page, "06-opt-out")

    # A send to the opted-out user is accepted and suppressed, never sent.
    page.click("nav >> text=Conversations")
    page.fill("#send-form input[name=user_number]", USER)
    page.fill("#send-form textarea[name=message]", "One more reminder")
    page.click("#send-button")
    expect(page.locator("#message-list [data-status]")).to_have_text(["suppressed"])
    assert [m["body"] for m in emulator.messages][-1].startswith("You have been unsubscribed")

    # The widget counted all of it.
    page.click("nav >> text=Overview")
    expect(page.locator("#total-sent")).to_have_text("2")  # the reminder and the confirmation
    expect(page.locator("#total-delivered")).to_have_text("2")
    expect(page.locator("#delivery-rate")).to_have_text("100.0%")
    expect(page.locator("#total-suppressed")).to_have_text("1")
    expect(page.locator("#total-conversations")).to_have_text("2")
    expect(page.locator("#total-inbound")).to_have_text("1")
    today_sent = page.locator("#daily-chart rect.bar-sent").last
    expect(today_sent).to_have_attribute("data-value", "2")
    assert float(today_sent.get_attribute("height")) > 0
    expect(page.locator("#daily-chart rect.bar")).to_have_count(14 * 3)
    shot(page, "07-overview-after")

    # Sign out: the pages are closed again.
    page.click("header button:has-text('Sign out')")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in"))
    page.goto(dashboard + "/conversations")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?next="))
    assert page.problems == []


def test_a_bad_key_is_refused_in_the_browser(page, served):
    from playwright.sync_api import expect

    base_url, sms, _ = served
    page.goto(base_url + "/dashboard/sign-in")
    page.fill("input[name=api_key]", "not-the-key")
    page.fill("input[name=connector_id]", sms.tenant.connector_id)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#sign-in-error")).to_contain_text("invalid X-PolyAi-Auth-Token")
    expect(page.locator("input[name=api_key]")).to_have_value("")
    page.goto(base_url + "/dashboard/")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in"))
    # The refused sign-in answers 401, which Chromium logs; nothing else may go wrong.
    assert [p for p in page.problems if "status of 401" not in p] == []


def test_the_api_docs_render_offline_from_installed_files(page, served):
    """/v1/docs draws the whole reference with every request kept on this server: anything
    aimed at another host is refused and recorded, and would fail the test."""
    from playwright.sync_api import expect

    base_url, _sms, _emulator = served
    elsewhere: list[str] = []

    def only_this_server(route) -> None:
        if route.request.url.startswith(base_url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(base_url + "/v1/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("flask-polysms")
    expect(page.locator(".opblock-summary-path", has_text="/v1/outbound-sms").first).to_be_visible()
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert page.request.get(base_url + icon).status == 200
    shot(page, "20-api-docs")
    assert elsewhere == []
    assert page.problems == []
