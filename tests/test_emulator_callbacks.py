"""The Twilio emulator's status callbacks, driven through the real ``twilio`` client and real
HTTP: they land on a small Flask app served by werkzeug on a free port, and their signatures are
checked with Twilio's own ``RequestValidator``."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
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
from flask import Flask, request
from twilio.request_validator import RequestValidator
from werkzeug.serving import make_server

from flask_polysms.testing.emulator import TwilioEmulator


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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def assert_signed(record: dict[str, Any], url: str, token: str = AUTH_TOKEN) -> None:
    """The callback carries a signature Twilio's validator accepts for the URL it was sent to."""
    assert record["signature"]
    assert RequestValidator(token).validate(url, record["form"], record["signature"])


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
