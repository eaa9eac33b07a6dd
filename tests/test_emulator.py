"""The Twilio emulator, driven only through the real ``twilio`` client and real HTTP: creating
and fetching messages, injected faults, request counting and running it standalone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import requests
from emulator_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    SENDER,
    SERVICE_SID,
    USER,
    _no_twilio_region,  # noqa: F401
    emulator_fixture,  # noqa: F401
    make_emulator_fixture,  # noqa: F401
    send,
    wait_until,
)
from twilio.base.exceptions import TwilioRestException

from flask_polysms.testing.emulator import TwilioEmulator

OTHER_SID = "AC" + "b2" * 16
OTHER_TOKEN = "other-account-token"
SID_FORMAT = re.compile(r"^SM[0-9a-f]{32}$")


# -- creating messages ---------------------------------------------------------------------------


def test_create_returns_a_twilio_message_resource(emulator: TwilioEmulator) -> None:
    message = send(emulator, body="Hi there", status_callback="http://127.0.0.1:1/status")

    assert SID_FORMAT.match(message.sid)
    assert message.status == "queued"
    assert message.account_sid == ACCOUNT_SID
    assert (message.to, message.from_, message.body) == (USER, SENDER, "Hi there")
    assert message.direction == "outbound-api"
    assert message.num_segments == "1"
    assert message.error_code is None
    assert message.messaging_service_sid is None
    assert message.date_created is not None and message.date_created.tzinfo is not None
    assert message.uri == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message.sid}.json"
    [stored] = emulator.messages
    assert stored["sid"] == message.sid
    assert stored["account_sid"] == ACCOUNT_SID
    assert stored["to"] == USER and stored["from"] == SENDER and stored["body"] == "Hi there"
    assert stored["status_callback"] == "http://127.0.0.1:1/status"
    assert stored["messaging_service_sid"] is None


def test_segments_are_counted_as_twilio_does(emulator: TwilioEmulator) -> None:
    assert send(emulator, body="a" * 161).num_segments == "2"
    assert send(emulator, body="€" * 80).num_segments == "1"  # GSM-7 extension: 160 septets
    assert send(emulator, body="é😀" + "x" * 68).num_segments == "2"  # UCS-2, 71 code units


def test_create_through_a_messaging_service_is_accepted(emulator: TwilioEmulator) -> None:
    message = send(emulator, messaging_service_sid=SERVICE_SID)

    # As on Twilio: the service has not picked a sender yet.
    assert message.status == "accepted"
    assert message.messaging_service_sid == SERVICE_SID
    assert message.from_ is None
    assert emulator.messages[0]["messaging_service_sid"] == SERVICE_SID


def test_client_ignores_twilio_region_and_edge(
    emulator: TwilioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")

    assert SID_FORMAT.match(send(emulator).sid)


@pytest.mark.parametrize(
    ("account_sid", "token"),
    [(ACCOUNT_SID, "wrong-token"), (OTHER_SID, AUTH_TOKEN)],
    ids=["wrong-token", "unknown-account"],
)
def test_bad_credentials_are_refused(
    emulator: TwilioEmulator, account_sid: str, token: str
) -> None:
    client = emulator.client(account_sid, token)

    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to=USER, from_=SENDER, body="Hi")

    assert (raised.value.code, raised.value.status) == (20003, 401)
    assert emulator.messages == []


def test_accounts_are_separate(emulator: TwilioEmulator) -> None:
    emulator.add_account(OTHER_SID, OTHER_TOKEN)
    mine = send(emulator)
    other = emulator.client(OTHER_SID, OTHER_TOKEN)

    theirs = other.messages.create(to=USER, from_=SENDER, body="From the other account")

    assert theirs.account_sid == OTHER_SID
    assert [m.sid for m in other.messages.list()] == [theirs.sid]
    with pytest.raises(TwilioRestException) as raised:
        other.messages(mine.sid).fetch()
    assert (raised.value.code, raised.value.status) == (20404, 404)


def test_credentials_only_open_their_own_account(emulator: TwilioEmulator) -> None:
    emulator.add_account(OTHER_SID, OTHER_TOKEN)

    answer = requests.post(
        f"{emulator.base_url}/2010-04-01/Accounts/{OTHER_SID}/Messages.json",
        data={"To": USER, "From": SENDER, "Body": "Hi"},
        auth=(ACCOUNT_SID, AUTH_TOKEN),
        timeout=5,
    )

    assert (answer.status_code, answer.json()["code"]) == (404, 20404)
    assert emulator.messages == []


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"to": ""}, 21604),
        ({"to": "4155550123"}, 21211),
        ({"to": "+1 415 555 0123"}, 21211),
        ({"from_": None}, 21603),
        ({"body": None}, 21602),
        ({"body": "x" * 1601}, 21617),
    ],
    ids=["missing-to", "to-without-plus", "to-with-spaces", "no-sender", "no-body", "too-long"],
)
def test_invalid_creates_are_refused_as_twilio_does(
    emulator: TwilioEmulator, params: dict[str, Any], code: int
) -> None:
    with pytest.raises(TwilioRestException) as raised:
        send(emulator, **params)

    assert (raised.value.code, raised.value.status) == (code, 400)
    assert emulator.messages == []


# -- injected faults -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("injected", "code", "status"),
    [
        (20429, 20429, 429),
        (500, 20500, 500),
        (21211, 21211, 400),
        (21610, 21610, 400),
        (21614, 21614, 400),
        (21408, 21408, 400),
    ],
)
def test_injected_fault_surfaces_as_twilio_error(
    emulator: TwilioEmulator, injected: int, code: int, status: int
) -> None:
    emulator.fail_next(1, injected)

    with pytest.raises(TwilioRestException) as raised:
        send(emulator)

    assert (raised.value.code, raised.value.status) == (code, status)
    if code in (21211, 21408):  # Twilio names the number it refused
        assert USER in raised.value.msg
    assert emulator.messages == []
    # One fault for one call: the next create goes through.
    assert send(emulator).status == "queued"
    assert len(emulator.messages) == 1


def test_error_json_has_twilios_shape(emulator: TwilioEmulator) -> None:
    emulator.fail_next(1, 21610)

    answer = requests.post(
        f"{emulator.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": USER, "From": SENDER, "Body": "Hi"},
        auth=(ACCOUNT_SID, AUTH_TOKEN),
        timeout=5,
    )

    assert answer.status_code == 400
    assert answer.json() == {
        "code": 21610,
        "message": "Attempt to send to unsubscribed recipient",
        "more_info": "https://www.twilio.com/docs/errors/21610",
        "status": 400,
    }


def test_faults_apply_in_order_of_injection(emulator: TwilioEmulator) -> None:
    emulator.fail_next(2, 20429)
    emulator.fail_next(1, 21610)

    codes = []
    for _ in range(3):
        with pytest.raises(TwilioRestException) as raised:
            send(emulator)
        codes.append(raised.value.code)

    assert codes == [20429, 20429, 21610]
    assert send(emulator).status == "queued"


def test_a_hang_outlasts_the_client_timeout(emulator: TwilioEmulator) -> None:
    emulator.hang_next(1, 10)
    client = emulator.client(ACCOUNT_SID, AUTH_TOKEN, timeout=0.5)
    started = time.monotonic()

    with pytest.raises(requests.exceptions.Timeout):
        client.messages.create(to=USER, from_=SENDER, body="Hi")

    assert time.monotonic() - started < 5
    # The hang was used up: the retry is answered at once, and the lost request created nothing.
    assert client.messages.create(to=USER, from_=SENDER, body="Hi").status == "queued"
    assert len(emulator.messages) == 1


def test_a_dropped_hang_creates_nothing_even_for_a_patient_client(
    emulator: TwilioEmulator,
) -> None:
    emulator.hang_next(1, 0.2)
    client = emulator.client(ACCOUNT_SID, AUTH_TOKEN, timeout=5)

    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to=USER, from_=SENDER, body="Hi")

    assert (raised.value.code, raised.value.status) == (20503, 503)
    assert emulator.messages == []


def test_a_hang_that_creates_leaves_a_duplicate_as_twilio_can(emulator: TwilioEmulator) -> None:
    emulator.hang_next(1, 0.6, then="create")
    client = emulator.client(ACCOUNT_SID, AUTH_TOKEN, timeout=0.2)

    with pytest.raises(requests.exceptions.Timeout):
        client.messages.create(to=USER, from_=SENDER, body="Hi")
    client.messages.create(to=USER, from_=SENDER, body="Hi")

    wait_until(lambda: len(emulator.messages) == 2)


# -- fetching --------------------------------------------------------------------------------


def test_fetch_and_list_messages(emulator: TwilioEmulator) -> None:
    client = emulator.client(ACCOUNT_SID, AUTH_TOKEN)
    first = send(emulator, body="first")
    second = send(emulator, body="second", to="+14155550124")

    fetched = client.messages(first.sid).fetch()
    assert (fetched.sid, fetched.body, fetched.to) == (first.sid, "first", USER)
    # Newest first, and paging links lead back to the emulator.
    assert [m.sid for m in client.messages.list(page_size=1)] == [second.sid, first.sid]
    assert [m.sid for m in client.messages.list(to=USER)] == [first.sid]


def test_fetch_of_unknown_message_is_404(emulator: TwilioEmulator) -> None:
    with pytest.raises(TwilioRestException) as raised:
        emulator.client(ACCOUNT_SID, AUTH_TOKEN).messages("SM" + "0" * 32).fetch()

    assert (raised.value.code, raised.value.status) == (20404, 404)


# -- counting, reset and the standalone server -------------------------------------------------


def test_requests_count_and_reset(emulator: TwilioEmulator) -> None:
    emulator.fail_next(1, 20429)
    emulator.set_outcome(USER, "failed")
    with pytest.raises(TwilioRestException):
        send(emulator)
    send(emulator)
    assert emulator.requests_count == 2 and len(emulator.messages) == 1

    emulator.fail_next(1, 20429)
    emulator.reset()

    assert emulator.requests_count == 0 and emulator.messages == []
    assert send(emulator).status == "queued"  # the fault was forgotten, the account kept
    assert emulator.requests_count == 1


def test_runs_standalone(tmp_path: Any) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flask_polysms.emulator",
            "--port",
            "0",
            "--account",
            f"{ACCOUNT_SID}:{AUTH_TOKEN}",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base_url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert base_url, line
        answer = requests.post(
            f"{base_url.group()}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
            data={"To": USER, "From": SENDER, "Body": "Hi"},
            auth=(ACCOUNT_SID, AUTH_TOKEN),
            timeout=5,
        )
        assert answer.status_code == 201 and SID_FORMAT.match(answer.json()["sid"])
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:  # never leave a server behind, whatever failed
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
