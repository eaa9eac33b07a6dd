"""The dashboard's pages about the messages, through Flask's test client: the home page's
figures and chart, sending from the dashboard, the conversation list and viewer (filters, pages,
only the connector's environment), and the opt-out lookup."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from dashboard_webhooks_support import (
    USER,
    USER_2,
    Browser,
    browser_fixture,  # noqa: F401
    signed_in_fixture,  # noqa: F401
    sms_fixture,  # noqa: F401
    text,
)

from flask_polysms.web.dashboard import chart


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
