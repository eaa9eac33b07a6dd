"""The Twilio emulator, driven only through the real ``twilio`` client and real HTTP.

Creates and fetches go through ``twilio.rest.Client``; status callbacks land on a small Flask app
served by werkzeug on a free port, and their signatures are checked with Twilio's own
``RequestValidator``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask, request
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from werkzeug.serving import make_server

from flask_polysms.testing.emulator import TwilioEmulator

ACCOUNT_SID = "AC" + "a1" * 16
AUTH_TOKEN = "emulator-test-token"
OTHER_SID = "AC" + "b2" * 16
OTHER_TOKEN = "other-account-token"
SERVICE_SID = "MG" + "c3" * 16
SENDER = "+14155550100"
USER = "+14155550123"
SID_FORMAT = re.compile(r"^SM[0-9a-f]{32}$")


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)


class Receiver:
    """A real HTTP endpoint that records the status callbacks it gets."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        app = Flask("callback-receiver")

        @app.post("/twilio/status")
        def status() -> tuple[str, int]:
            with self._lock:
                self.received.append(
                    {
                        "url": request.url,
                        "form": request.form.to_dict(),
                        "signature": request.headers.get("X-Twilio-Signature"),
                        "idempotency": request.headers.get("I-Twilio-Idempotency-Token"),
                    }
                )
            return "<Response/>", 200

        @app.post("/broken")
        def broken() -> tuple[str, int]:
            return "down for maintenance", 500

        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.base_url = f"http://127.0.0.1:{self._server.server_port}"
        self.url = f"{self.base_url}/twilio/status"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def statuses(self) -> list[str]:
        with self._lock:
            return [r["form"]["MessageStatus"] for r in self.received]

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.received) >= count)
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_twilio_region(monkeypatch: pytest.MonkeyPatch) -> None:
    # They make the twilio client rewrite the host; the emulator's client must not care, but a
    # developer's shell must not decide the outcome of other tests either.
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., TwilioEmulator]]:
    started: list[TwilioEmulator] = []

    def make(**options: Any) -> TwilioEmulator:
        options.setdefault("callback_delay", 0.01)
        emulator = TwilioEmulator(**options).start()
        emulator.add_account(ACCOUNT_SID, AUTH_TOKEN)
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(make_emulator: Callable[..., TwilioEmulator]) -> TwilioEmulator:
    return make_emulator()


def send(emulator: TwilioEmulator, **params: Any) -> Any:
    """Create a message through the real client, with defaults for what the test leaves out."""
    params.setdefault("to", USER)
    params.setdefault("body", "Hello from the emulator")
    if "messaging_service_sid" not in params:
        params.setdefault("from_", SENDER)
    return emulator.client(ACCOUNT_SID, AUTH_TOKEN).messages.create(**params)


def assert_signed(record: dict[str, Any], url: str, token: str = AUTH_TOKEN) -> None:
    """The callback carries a signature Twilio's validator accepts for the URL it was sent to."""
    assert record["signature"]
    assert RequestValidator(token).validate(url, record["form"], record["signature"])


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


# -- status callbacks ------------------------------------------------------------------------


def test_callbacks_sent_then_delivered_signed(emulator: TwilioEmulator, receiver: Receiver) -> None:
    message = send(emulator, status_callback=receiver.url)

    received = receiver.wait_for(2)

    assert receiver.statuses() == ["sent", "delivered"]
    for record, status in zip(received, ["sent", "delivered"], strict=True):
        assert_signed(record, receiver.url)
        assert record["form"] == {
            "MessageSid": message.sid,
            "SmsSid": message.sid,
            "AccountSid": ACCOUNT_SID,
            "From": SENDER,
            "To": USER,
            "MessageStatus": status,
            "SmsStatus": status,
            "ApiVersion": "2010-04-01",
        }
    # The check can fail: another token does not validate the same callback.
    assert not RequestValidator("not-the-token").validate(
        receiver.url, received[0]["form"], received[0]["signature"]
    )
    assert [c["status_code"] for c in emulator.wait_for_callbacks(2)] == [200, 200]
    fetched = emulator.client(ACCOUNT_SID, AUTH_TOKEN).messages(message.sid).fetch()
    assert fetched.status == "delivered"
    assert fetched.date_sent is not None


def test_callback_through_a_messaging_service_names_it(
    emulator: TwilioEmulator, receiver: Receiver
) -> None:
    send(emulator, messaging_service_sid=SERVICE_SID, status_callback=receiver.url)

    received = receiver.wait_for(2)

    assert all(r["form"]["MessagingServiceSid"] == SERVICE_SID for r in received)
    assert_signed(received[0], receiver.url)


@pytest.mark.parametrize(
    ("outcome", "error_code", "statuses", "expected_code"),
    [
        ("undelivered", None, ["sent", "undelivered"], 30003),
        ("undelivered", 30005, ["sent", "undelivered"], 30005),
        ("failed", 30007, ["failed"], 30007),
    ],
)
def test_outcomes_end_with_an_error_code(
    emulator: TwilioEmulator,
    receiver: Receiver,
    outcome: str,
    error_code: int | None,
    statuses: list[str],
    expected_code: int,
) -> None:
    emulator.set_outcome(USER, outcome, error_code=error_code)  # type: ignore[arg-type]
    message = send(emulator, status_callback=receiver.url)

    received = receiver.wait_for(len(statuses))

    assert receiver.statuses() == statuses
    assert received[-1]["form"]["ErrorCode"] == str(expected_code)
    assert all("ErrorCode" not in r["form"] for r in received[:-1])
    for record in received:
        assert_signed(record, receiver.url)
    fetched = emulator.client(ACCOUNT_SID, AUTH_TOKEN).messages(message.sid).fetch()
    assert (fetched.status, fetched.error_code) == (outcome, expected_code)


def test_outcome_applies_only_to_its_number(emulator: TwilioEmulator, receiver: Receiver) -> None:
    emulator.set_outcome("+14155550999", "failed")
    send(emulator, status_callback=receiver.url)

    receiver.wait_for(2)

    assert receiver.statuses() == ["sent", "delivered"]


def test_duplicate_callbacks_arrive_twice(
    make_emulator: Callable[..., TwilioEmulator], receiver: Receiver
) -> None:
    emulator = make_emulator(duplicate_callbacks=True)
    send(emulator, status_callback=receiver.url)

    received = receiver.wait_for(4)

    assert receiver.statuses() == ["sent", "sent", "delivered", "delivered"]
    for record in received:
        assert_signed(record, receiver.url)
    # A duplicate repeats Twilio's idempotency token; different statuses have different ones.
    tokens = [r["idempotency"] for r in received]
    assert tokens[0] == tokens[1] and tokens[2] == tokens[3] and tokens[0] != tokens[2]


def test_shuffled_callbacks_arrive_out_of_order(
    make_emulator: Callable[..., TwilioEmulator], receiver: Receiver
) -> None:
    # Seed 0 shuffles two items back into their order: the emulator must still deliver them out
    # of order, so this checks the promise, not the luck of the draw.
    emulator = make_emulator(shuffle_callbacks=True, seed=0)
    message = send(emulator, status_callback=receiver.url)

    received = receiver.wait_for(2)

    assert receiver.statuses() == ["delivered", "sent"]
    assert all(
        RequestValidator(AUTH_TOKEN).validate(receiver.url, r["form"], r["signature"])
        for r in received
    )
    # Twilio's own record never moves back, whatever order the callbacks took.
    fetched = emulator.client(ACCOUNT_SID, AUTH_TOKEN).messages(message.sid).fetch()
    assert fetched.status == "delivered"


def test_manual_callbacks_wait_for_deliver_callbacks(
    make_emulator: Callable[..., TwilioEmulator], receiver: Receiver
) -> None:
    emulator = make_emulator(callbacks="manual")
    message = send(emulator, status_callback=receiver.url)
    client = emulator.client(ACCOUNT_SID, AUTH_TOKEN)

    time.sleep(0.1)  # several times the auto delay: auto mode would have posted by now
    assert receiver.received == [] and emulator.callbacks_posted == []
    assert emulator.pending_callbacks == 2
    assert client.messages(message.sid).fetch().status == "queued"

    posted = emulator.deliver_callbacks()

    assert [p["status"] for p in posted] == ["sent", "delivered"]
    assert [p["status_code"] for p in posted] == [200, 200]
    # Posted synchronously: the receiver has them when deliver_callbacks returns.
    assert receiver.statuses() == ["sent", "delivered"]
    assert_signed(receiver.received[0], receiver.url)
    assert emulator.pending_callbacks == 0
    assert emulator.deliver_callbacks() == []
    assert client.messages(message.sid).fetch().status == "delivered"


def test_manual_shuffle_mixes_messages(
    make_emulator: Callable[..., TwilioEmulator], receiver: Receiver
) -> None:
    emulator = make_emulator(callbacks="manual", shuffle_callbacks=True, seed=7)
    send(emulator, status_callback=receiver.url)
    send(emulator, status_callback=receiver.url, to="+14155550124")

    posted = emulator.deliver_callbacks()

    in_order = [(m["sid"], s) for m in emulator.messages for s in ("sent", "delivered")]
    assert sorted((p["message_sid"], p["status"]) for p in posted) == sorted(in_order)
    assert [(p["message_sid"], p["status"]) for p in posted] != in_order


def test_callback_to_a_dead_or_failing_target_is_recorded(
    emulator: TwilioEmulator, receiver: Receiver
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}/status"
    send(emulator, status_callback=dead_url)
    send(emulator, status_callback=f"{receiver.base_url}/broken")

    posted = emulator.wait_for_callbacks(4)

    dead = [p for p in posted if p["url"] == dead_url]
    broken = [p for p in posted if p["url"] != dead_url]
    assert len(dead) == 2 and all(p["status_code"] is None and p["error"] for p in dead)
    assert [p["status_code"] for p in broken] == [500, 500]
    assert all(p["error"] is None for p in broken)
    # The emulator carries on.
    assert send(emulator).status == "queued"


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
