"""Shared accounts, numbers, fixtures and helpers of the Twilio emulator tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flask_polysms.testing.emulator import TwilioEmulator

ACCOUNT_SID = "AC" + "a1" * 16
AUTH_TOKEN = "emulator-test-token"
SERVICE_SID = "MG" + "c3" * 16
SENDER = "+14155550100"
USER = "+14155550123"


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


@pytest.fixture(autouse=True)
def _no_twilio_region(monkeypatch: pytest.MonkeyPatch) -> None:
    # They make the twilio client rewrite the host; the emulator's client must not care, but a
    # developer's shell must not decide the outcome of other tests either.
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)


@pytest.fixture(name="make_emulator")
def make_emulator_fixture() -> Iterator[Callable[..., TwilioEmulator]]:
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


@pytest.fixture(name="emulator")
def emulator_fixture(make_emulator: Callable[..., TwilioEmulator]) -> TwilioEmulator:
    return make_emulator()


def send(emulator: TwilioEmulator, **params: Any) -> Any:
    """Create a message through the real client, with defaults for what the test leaves out."""
    params.setdefault("to", USER)
    params.setdefault("body", "Hello from the emulator")
    if "messaging_service_sid" not in params:
        params.setdefault("from_", SENDER)
    return emulator.client(ACCOUNT_SID, AUTH_TOKEN).messages.create(**params)
