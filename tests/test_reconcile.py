"""A send whose outcome is unknown is looked up at Twilio before it is tried again: the retry
adopts the message an earlier attempt created instead of sending a second one. Run through the
real twilio client against the emulator, on every backend."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import store_backends
from emulator_account import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN
from store_backends import BACKENDS

from flask_polysms.services.operators import end_session
from flask_polysms.services.sending import CALLBACK_MESSAGE_PARAMETER

AGENT = "+14155552671"
USER = "+14155552674"
OTHER_USER = "+14155552675"
PUBLIC_URL = "https://sms.example.com"


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


@pytest.fixture
def emulated(make_emulated_sms, storage_url):
    sms, twilio = make_emulated_sms(
        numbers=(AGENT,),
        POLYSMS_STORAGE_URL=storage_url,
        POLYSMS_PUBLIC_URL=PUBLIC_URL,
        POLYSMS_TWILIO_TIMEOUT=0.3,
        POLYSMS_RETRY_BASE_DELAY=0.05,
    )
    return sms, twilio


def only_message(sms, conversation_id: str):
    (message,) = sms.store.list_messages(conversation_id)
    return message


def retry_when_due(sms, conversation_id: str, status: str = "sent") -> None:
    deadline = time.monotonic() + 10
    while only_message(sms, conversation_id).status != status:
        assert time.monotonic() < deadline, only_message(sms, conversation_id)
        time.sleep(0.06)
        sms.run_due_timers()


def test_a_send_whose_answer_was_lost_is_adopted_not_sent_again(emulated):
    sms, twilio = emulated
    twilio.hang_next(1, 1.5, then="create")  # Twilio creates it; the answer comes too late
    conversation = sms.send_ok(USER, "Your table is ready")["conversation_id"]
    waiting = only_message(sms, conversation)
    assert (waiting.status, waiting.attempts, waiting.twilio_sid) == ("queued", 1, None)

    retry_when_due(sms, conversation)

    message = only_message(sms, conversation)
    (created,) = twilio.messages  # one copy at Twilio
    assert message.twilio_sid == created["sid"]
    assert message.attempts == 2
    assert message.last_error_code is None or message.last_error_message  # the timeout is kept


def test_a_send_lost_on_the_way_is_sent_again(emulated):
    sms, twilio = emulated
    twilio.hang_next(1, 1.0, then="drop")  # nothing created
    conversation = sms.send_ok(USER, "Lost on the way")["conversation_id"]

    retry_when_due(sms, conversation)

    (created,) = twilio.messages
    assert only_message(sms, conversation).twilio_sid == created["sid"]


def test_a_5xx_is_reconciled_then_sent(emulated):
    sms, twilio = emulated
    twilio.fail_next(1, 500)
    conversation = sms.send_ok(USER, "After a 500")["conversation_id"]
    retry_when_due(sms, conversation)
    (created,) = twilio.messages
    assert only_message(sms, conversation).twilio_sid == created["sid"]
    # The retry asked Twilio's list before creating: the create, two lists, the create.
    assert twilio.requests_count == 4


def test_a_copy_another_message_owns_is_not_adopted(emulated):
    sms, twilio = emulated
    first = sms.send_ok(USER, "Same words")["conversation_id"]
    owner = only_message(sms, first)
    assert owner.status == "sent"
    twilio.hang_next(1, 1.0, then="drop")
    second = sms.send_ok(OTHER_USER, "Same words")["conversation_id"]
    # Another recipient: Twilio's list is per recipient; same recipient is checked below.
    retry_when_due(sms, second)
    assert only_message(sms, second).twilio_sid not in (None, owner.twilio_sid)
    assert len(twilio.messages) == 2


def test_the_same_text_again_to_the_same_user_is_sent_not_adopted(emulated):
    sms, twilio = emulated
    first = sms.send_ok(USER, "Reminder")["conversation_id"]
    owner = only_message(sms, first)
    with sms.app.app_context():
        end_session(sms.state, first, "api")
    twilio.hang_next(1, 1.0, then="drop")
    second = sms.send_ok(USER, "Reminder")["conversation_id"]

    retry_when_due(sms, second)

    # The list shows the first "Reminder" (same recipient, sender and body): its SID is the
    # first message's, so the retry sends a new one.
    assert only_message(sms, second).twilio_sid != owner.twilio_sid
    assert [m["body"] for m in twilio.messages] == ["Reminder", "Reminder"]


def test_the_status_callback_url_names_our_message_and_still_verifies(make_sms):
    sms = make_sms(numbers=(AGENT,), POLYSMS_PUBLIC_URL=PUBLIC_URL)
    conversation = sms.send_ok(USER, "Hello")["conversation_id"]
    message = only_message(sms, conversation)
    (sent,) = sms.outbox
    url = urlsplit(sent["status_callback"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{PUBLIC_URL}/v1/twilio/status"
    assert parse_qs(url.query) == {CALLBACK_MESSAGE_PARAMETER: [message.id]}

    params = {
        "MessageSid": message.twilio_sid,
        "AccountSid": sms.tenant.twilio_account_sid,
        "From": AGENT,
        "To": USER,
        "MessageStatus": "delivered",
    }
    path = f"/v1/twilio/status?{url.query}"
    # Signed over the full URL, query included, as Twilio signs it.
    assert sms.post_signed(path, params, url=sent["status_callback"]).status_code == 200
    assert only_message(sms, conversation).status == "delivered"
    # Signed without the query: not the URL Twilio called.
    params["MessageStatus"] = "read"
    refused = sms.post_signed(path, params, url=f"{PUBLIC_URL}/v1/twilio/status")
    assert refused.status_code == 403
    # A callback of a send made before the id was added (no query) still works.
    assert sms.status_callback(message.twilio_sid, "delivered", to=USER).status_code == 200


def test_without_a_public_url_no_callback_is_given_and_the_retry_still_looks(
    make_emulated_sms,
):
    sms, twilio = make_emulated_sms(
        numbers=(AGENT,), POLYSMS_TWILIO_TIMEOUT=0.3, POLYSMS_RETRY_BASE_DELAY=0.05
    )
    twilio.hang_next(1, 1.5, then="create")
    conversation = sms.send_ok(USER, "No public URL")["conversation_id"]
    retry_when_due(sms, conversation)
    (created,) = twilio.messages
    assert created["status_callback"] is None
    assert only_message(sms, conversation).twilio_sid == created["sid"]


# -- the emulator's list, as Twilio's ------------------------------------------------------------


def test_the_emulators_list_filters_by_to_from_and_date_sent(make_twilio_emulator):
    twilio = make_twilio_emulator(callbacks="auto", callback_delay=0.01)
    client = twilio.client(EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN)
    before = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    first = client.messages.create(to=USER, from_=AGENT, body="one")
    client.messages.create(to=OTHER_USER, from_=AGENT, body="two")
    client.messages.create(to=USER, from_="+14155552672", body="three")
    deadline = time.monotonic() + 5
    while any(m["date_sent"] is None for m in twilio.messages):
        assert time.monotonic() < deadline
        time.sleep(0.02)

    mine = client.messages.list(to=USER, from_=AGENT, date_sent_after=before)
    assert [m.sid for m in mine] == [first.sid]
    assert len(client.messages.list(to=USER, date_sent_after=before)) == 2
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert client.messages.list(to=USER, date_sent_after=later) == []
    assert len(client.messages.list(date_sent_before=later)) == 3
    assert len(client.messages.list(date_sent=before)) in (0, 3)  # a time: that second only
    # A day, as Twilio documents it.
    response = requests.get(
        f"{twilio.base_url}/2010-04-01/Accounts/{EMULATOR_ACCOUNT_SID}/Messages.json",
        params={"DateSent>": before.date().isoformat(), "To": USER, "PageSize": 1},
        auth=(EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN),
        timeout=5,
    )
    page = response.json()
    assert len(page["messages"]) == 1 and page["page_size"] == 1
    assert "DateSent%3E=" in page["next_page_uri"] and "To=" in page["next_page_uri"]
    assert page["previous_page_uri"] is None and page["first_page_uri"].endswith("Page=0")


def test_a_message_not_sent_yet_is_left_out_of_a_date_filter(make_twilio_emulator):
    twilio = make_twilio_emulator(callbacks="manual")
    client = twilio.client(EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN)
    created = client.messages.create(to=USER, from_=AGENT, body="queued")
    before = datetime.now(timezone.utc) - timedelta(minutes=1)
    assert client.messages.list(to=USER, date_sent_after=before) == []
    assert [m.sid for m in client.messages.list(to=USER)] == [created.sid]
    twilio.deliver_callbacks()  # sent, then delivered
    assert [m.sid for m in client.messages.list(to=USER, date_sent_after=before)] == [created.sid]
