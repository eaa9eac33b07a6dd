"""The send path through the real ``twilio`` client and the local Twilio emulator:
retryable errors are retried with exponential backoff, permanent ones fail at once with Twilio's
code, 21610 suppresses the message and records an opt-out, an opted-out pair is suppressed at send
time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time

from flask_polysms.clock import utcnow
from flask_polysms.crypto import build_cipher

AGENT = "+14155552671"
OTHER_AGENT = "+14155552672"
USER = "+14155552674"
START = "2026-03-02 09:00:00"
DAY = {"start": "2026-03-01", "end": "2026-03-03"}  # around START, whatever today is
BASE_DELAY = timedelta(seconds=2)  # POLYSMS_RETRY_BASE_DELAY's default


@pytest.fixture
def emulated(make_emulated_sms):
    """(harness, emulator): the twilio gateway pointed at a fresh emulator, manual callbacks."""
    return make_emulated_sms(
        numbers=(AGENT, OTHER_AGENT),
        POLYSMS_TWILIO_TIMEOUT=0.5,
        POLYSMS_PUBLIC_URL="http://localhost",
    )


def greeting(sms, conversation_id: str) -> dict:
    return sms.conversation(conversation_id)["messages"][0]


def stored_greeting(sms, conversation_id: str):
    with sms.app.app_context():
        [message] = sms.store.list_messages(conversation_id)
        return message


def test_a_send_reaches_twilio_with_a_status_callback(emulated):
    sms, emulator = emulated

    body = sms.send_ok(USER, "Hello through Twilio", agent_number=AGENT)

    assert body["status"] == "sent"
    [created] = emulator.messages
    assert created["account_sid"] == sms.tenant.twilio_account_sid
    assert (created["to"], created["from"], created["body"]) == (
        USER,
        AGENT,
        "Hello through Twilio",
    )
    message = greeting(sms, body["conversation_id"])
    # The URL names our message: a callback for a send whose answer was lost still says which.
    expected = f"http://localhost/v1/twilio/status?message_id={message['id']}"
    assert created["status_callback"] == expected
    assert message["status"] == "sent"
    assert message["twilio_sid"] == created["sid"]
    assert message["error_code"] is None
    assert sms.metrics()["sent"] == 1


def test_no_request_host_ever_becomes_a_status_callback(make_sms):
    """Requests with forged Host headers (unsigned webhooks included) leave the callback URL of
    every later send, in a request or in a job, to configuration alone."""
    from flask_polysms.services.sending import status_callback_url

    sms = make_sms(numbers=(AGENT,), POLYSMS_PUBLIC_URL="https://sms.example.com")
    conversation = f"/v1/conversations/conv_{'0' * 32}"
    for base in ("http://attacker.example", "https://evil.example:8443"):
        sms.client.get(conversation, headers=sms.tenant.headers, base_url=base)
        forged = sms.client.post("/v1/twilio/sms", data={"To": AGENT}, base_url=base)
        assert forged.status_code == 403
        assert status_callback_url(sms.state) == "https://sms.example.com/v1/twilio/status"
    sms.client.post(
        "/v1/outbound-sms",
        json={"user_number": USER, "message": "Hello"},
        headers=sms.tenant.headers,
        base_url="http://attacker.example",
    )
    [sent] = sms.outbox
    assert sent["status_callback"].startswith("https://sms.example.com/v1/twilio/status?")


def test_without_a_configured_url_a_testing_app_sends_no_status_callback(make_sms):
    """Debug and testing may start without a public URL; then no send (not even one inside a
    request) hands Twilio a URL made from that request's Host."""
    sms = make_sms(numbers=(AGENT,))
    response = sms.client.post(
        "/v1/outbound-sms",
        json={"user_number": USER, "message": "Hello"},
        headers=sms.tenant.headers,
        base_url="http://attacker.example",
    )
    assert response.status_code == 202
    [sent] = sms.outbox
    assert sent["status_callback"] is None


def test_a_mounted_app_is_called_back_under_its_mount_point(make_sms):
    """SERVER_NAME with APPLICATION_ROOT (Flask's own settings) give the public URL too."""
    sms = make_sms(
        numbers=(AGENT,),
        SERVER_NAME="sms.example.com",
        PREFERRED_URL_SCHEME="https",
        APPLICATION_ROOT="/shop",
    )
    response = sms.client.post(
        "/v1/outbound-sms",
        json={"user_number": USER, "message": "Hello"},
        headers=sms.tenant.headers,
        base_url="https://sms.example.com/shop",
    )

    assert response.status_code == 202
    [sent] = sms.outbox
    assert sent["status_callback"].startswith("https://sms.example.com/shop/v1/twilio/status?")


def test_the_status_callback_uses_the_public_url(make_emulated_sms):
    sms, emulator = make_emulated_sms(
        numbers=(AGENT,), POLYSMS_PUBLIC_URL="https://sms.example.com/"
    )

    sms.send_ok(USER)

    callback = emulator.messages[0]["status_callback"]
    assert callback.startswith("https://sms.example.com/v1/twilio/status?message_id=msg_")


# -- retryable errors ------------------------------------------------------------------------------

# Requests of the look-up each retry makes before sending again (Twilio's list twice: messages
# sent since the first attempt, then the newest page for those still queued).
LOOKUP = 2


@pytest.mark.parametrize("code", [20429, 500, 20503])
def test_a_retryable_error_is_retried_after_the_backoff(emulated, code):
    sms, emulator = emulated
    with freeze_time(START) as clock:
        emulator.fail_next(1, code)

        body = sms.send_ok(USER, "Retry me", agent_number=AGENT)

        # Accepted; the first try failed and the message waits, queued, for its retry.
        assert body["status"] == "queued"
        message = stored_greeting(sms, body["conversation_id"])
        assert (message.status, message.attempts) == ("queued", 1)
        assert message.error_code == (20500 if code == 500 else code)
        assert emulator.messages == [] and emulator.requests_count == 1

        # Not before the backoff has passed.
        clock.tick(BASE_DELAY - timedelta(milliseconds=100))
        sms.run_due_timers()
        assert emulator.requests_count == 1
        assert stored_greeting(sms, body["conversation_id"]).status == "queued"

        clock.tick(timedelta(milliseconds=200))
        sms.run_due_timers()

    assert emulator.requests_count == 1 + LOOKUP + 1
    [created] = emulator.messages
    message = greeting(sms, body["conversation_id"])
    assert message["status"] == "sent" and message["twilio_sid"] == created["sid"]
    assert message["error_code"] is None
    assert created["body"] == "Retry me"
    # The retry ran outside any request: its delivery updates still come back.
    assert created["status_callback"].startswith("http://localhost/v1/twilio/status?")
    metrics = sms.metrics(**DAY)
    assert metrics["sent"] == 1 and metrics["api_failures"] == 0


def test_a_timeout_is_retried(emulated):
    sms, emulator = emulated
    with freeze_time(START) as clock:
        # Longer than POLYSMS_TWILIO_TIMEOUT (0.5 s): the client gives up first.
        emulator.hang_next(1, 30)

        body = sms.send_ok(USER, "Slow Twilio", agent_number=AGENT)

        message = stored_greeting(sms, body["conversation_id"])
        assert (message.status, message.attempts) == ("queued", 1)
        assert emulator.messages == []

        clock.tick(BASE_DELAY + timedelta(seconds=1))
        sms.run_due_timers()

    [created] = emulator.messages
    message = greeting(sms, body["conversation_id"])
    assert message["status"] == "sent" and message["twilio_sid"] == created["sid"]


def test_five_failed_tries_fail_the_message_with_exponential_backoff(emulated):
    sms, emulator = emulated
    with freeze_time(START) as clock:
        emulator.fail_next(5, 20429)
        body = sms.send_ok(USER, agent_number=AGENT)
        assert emulator.requests_count == 1

        # Waits of 2, 4, 8 and 16 s between the five tries: half a wait is never enough.
        for attempt in range(1, 5):
            wait = BASE_DELAY * 2 ** (attempt - 1)
            clock.tick(wait / 2)
            sms.run_due_timers()
            assert emulator.requests_count == attempt + (attempt - 1) * LOOKUP
            clock.tick(wait / 2 + timedelta(milliseconds=10))
            sms.run_due_timers()
            assert emulator.requests_count == attempt + 1 + attempt * LOOKUP

        message = stored_greeting(sms, body["conversation_id"])
        assert (message.status, message.attempts, message.error_code) == ("failed", 5, 20429)

        # Nothing more is ever tried.
        clock.tick(timedelta(hours=1))
        sms.run_due_timers()
        assert emulator.requests_count == 5 + 4 * LOOKUP

    assert emulator.messages == []
    api_message = greeting(sms, body["conversation_id"])
    assert api_message["status"] == "failed" and api_message["error_code"] == 20429
    assert api_message["twilio_sid"] is None
    metrics = sms.metrics(**DAY)
    assert metrics["api_failures"] == 1
    assert metrics["sent"] == 0 and metrics["failed"] == 0


def test_the_fifth_try_can_still_succeed(emulated):
    sms, emulator = emulated
    with freeze_time(START) as clock:
        emulator.fail_next(4, 500)
        body = sms.send_ok(USER, agent_number=AGENT)
        for _ in range(4):
            clock.tick(timedelta(seconds=20))
            sms.run_due_timers()

    assert len(emulator.messages) == 1 and emulator.requests_count == 5 + 4 * LOOKUP
    assert greeting(sms, body["conversation_id"])["status"] == "sent"
    assert sms.metrics(**DAY)["api_failures"] == 0


# -- permanent errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [21211, 21614, 21408])
def test_a_permanent_error_fails_at_once_with_twilios_code(emulated, code):
    sms, emulator = emulated
    with freeze_time(START) as clock:
        emulator.fail_next(1, code)

        response = sms.send(USER, agent_number=AGENT)

        # Still accepted: the failure is the send's, recorded on the message.
        assert response.status_code == 202
        body = response.get_json()
        assert body["status"] == "failed"
        clock.tick(timedelta(minutes=30))
        sms.run_due_timers()

    assert emulator.requests_count == 1 and emulator.messages == []
    message = greeting(sms, body["conversation_id"])
    assert message["status"] == "failed" and message["error_code"] == code
    assert sms.metrics(**DAY)["api_failures"] == 1
    with sms.app.app_context():
        assert stored_greeting(sms, body["conversation_id"]).attempts == 1
        assert sms.store.is_opted_out(USER, AGENT) is False
    assert message["drop_reason"] is None


def test_21610_suppresses_at_once_and_counts_as_suppressed(emulated):
    sms, emulator = emulated
    with freeze_time(START) as clock:
        emulator.fail_next(1, 21610)

        body = sms.send_ok(USER, agent_number=AGENT)

        assert body["status"] == "suppressed"
        clock.tick(timedelta(minutes=30))
        sms.run_due_timers()

    assert emulator.requests_count == 1 and emulator.messages == []
    message = greeting(sms, body["conversation_id"])
    assert (message["status"], message["drop_reason"], message["error_code"]) == (
        "suppressed",
        "opted_out",
        21610,
    )
    assert message["last_error"]["code"] == 21610
    figures = sms.metrics(**DAY)
    assert (figures["suppressed"], figures["failed"], figures["api_failures"]) == (1, 0, 0)
    with sms.app.app_context():
        assert stored_greeting(sms, body["conversation_id"]).attempts == 1


def test_21610_records_an_opt_out_for_the_pair_only(emulated):
    sms, emulator = emulated
    emulator.fail_next(1, 21610)
    sms.send_ok(USER, agent_number=AGENT)

    with sms.app.app_context():
        assert sms.store.is_opted_out(USER, AGENT)
        assert not sms.store.is_opted_out(USER, OTHER_AGENT)
        [event] = sms.store.opt_out_history(sms.tenant.project_id, USER, AGENT)
    assert (event.recipient, event.sender, event.action) == (USER, AGENT, "opt_out")
    assert (event.source, event.keyword) == ("carrier", None)

    # The next send to that pair never reaches Twilio; another number still does.
    suppressed = sms.send_ok(USER, "again", agent_number=AGENT)
    assert suppressed["status"] == "suppressed"
    assert emulator.requests_count == 1
    other = sms.send_ok(USER, "from elsewhere", agent_number=OTHER_AGENT)
    assert other["status"] == "sent"
    assert [m["from"] for m in emulator.messages] == [OTHER_AGENT]


# -- suppression -----------------------------------------------------------------------------------


def test_a_send_to_an_opted_out_pair_is_accepted_and_suppressed(emulated):
    sms, emulator = emulated
    with sms.app.app_context():
        sms.store.set_opt_out(sms.tenant.project_id, USER, AGENT, True, "STOP", utcnow())

    response = sms.send(USER, "You will not see this", agent_number=AGENT)

    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "suppressed"
    conversation = sms.conversation(body["conversation_id"])
    [message] = conversation["messages"]
    assert message["status"] == "suppressed" and message["twilio_sid"] is None
    assert conversation["metadata"]["sms_sends"][0]["status"] == "suppressed"
    assert emulator.requests_count == 0
    metrics = sms.metrics()
    assert metrics["suppressed"] == 1 and metrics["sent"] == 0 and metrics["api_failures"] == 0


def test_the_opt_out_is_checked_again_when_a_retry_runs(emulated):
    sms, emulator = emulated
    with freeze_time(START) as clock:
        emulator.fail_next(1, 20429)
        body = sms.send_ok(USER, agent_number=AGENT)
        assert body["status"] == "queued"

        # The user opts out while the retry waits: the retry must not send.
        sms.inbound_ok(USER, "STOP", to=AGENT)
        clock.tick(timedelta(seconds=10))
        sms.run_due_timers()

    assert greeting(sms, body["conversation_id"])["status"] == "suppressed"
    # Only the STOP confirmation reached Twilio.
    [reply] = emulator.messages
    assert reply["body"].startswith("You have been unsubscribed")
    assert sms.metrics(**DAY)["suppressed"] == 1


def test_an_opt_out_of_another_project_does_not_suppress(emulated):
    sms, emulator = emulated
    # The same user opted out of a number of another project: this project's pair is untouched.
    other = sms.provision(numbers=("+14155552678",))
    with sms.app.app_context():
        sms.store.set_opt_out(other.project_id, USER, "+14155552678", True, "STOP", utcnow())

    assert sms.send_ok(USER, agent_number=AGENT)["status"] == "sent"
    assert len(emulator.messages) == 1


def test_a_project_without_twilio_credentials_fails_the_send(emulated):
    sms, emulator = emulated
    with sms.app.app_context():
        sms.store.update_project(
            sms.tenant.project_id, twilio_account_sid=None, twilio_auth_token_encrypted=None
        )

    body = sms.send_ok(USER, agent_number=AGENT)

    assert body["status"] == "failed"
    assert emulator.requests_count == 0
    assert sms.metrics()["api_failures"] == 1


def test_an_auth_token_that_cannot_be_decrypted_fails_the_send_once(emulated):
    sms, emulator = emulated
    # POLYSMS_SECRET_KEY changed since the token was stored: it no longer decrypts.
    with sms.app.app_context():
        sms.store.update_project(
            sms.tenant.project_id,
            twilio_auth_token_encrypted=build_cipher((), "another-secret").encrypt("x" * 32),
        )

    with freeze_time(START) as clock:
        body = sms.send_ok(USER, agent_number=AGENT)
        # Long after POLYSMS_STUCK_AFTER: the sweep finds nothing left to re-send.
        clock.tick(timedelta(hours=1))
        sms.run_due_timers()
        message = stored_greeting(sms, body["conversation_id"])
        metrics = sms.metrics(**DAY)

    assert body["status"] == "failed"
    assert (message.status, message.attempts) == ("failed", 1)
    assert "POLYSMS_SECRET_KEY" in message.error_message
    assert emulator.requests_count == 0
    assert metrics["api_failures"] == 1
