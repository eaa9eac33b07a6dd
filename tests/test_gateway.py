"""The twilio gateway: the real client, its error verdicts, and the outbox."""

from __future__ import annotations

import pytest

from flask_polysms.ports.gateways import OutboxGateway, OutgoingSMS, TwilioGateway
from flask_polysms.testing import TwilioEmulator

SID, TOKEN = "AC" + "1" * 32, "2" * 32


@pytest.fixture
def emulator():
    with TwilioEmulator() as emulator:
        emulator.add_account(SID, TOKEN)
        yield emulator


def test_region_and_edge_in_the_environment_do_not_redirect_sends(emulator, monkeypatch):
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    gateway = TwilioGateway(base_url=emulator.base_url, timeout=2)
    result = gateway.send(
        SID, TOKEN, OutgoingSMS(to="+14155552672", body="hi", from_="+14155552671")
    )
    assert result.sid.startswith("SM")
    assert [m["sid"] for m in emulator.messages] == [result.sid]


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(20429, True), (500, True), (21211, False), (21610, False), (21614, False), (21408, False)],
)
def test_error_verdicts_through_the_real_client(emulator, code, retryable):
    from flask_polysms.ports.gateways import GatewayError

    emulator.fail_next(1, code)
    gateway = TwilioGateway(base_url=emulator.base_url, timeout=2)
    with pytest.raises(GatewayError) as caught:
        gateway.send(SID, TOKEN, OutgoingSMS(to="+14155552672", body="hi", from_="+14155552671"))
    assert caught.value.retryable is retryable
    assert caught.value.code == (20500 if code == 500 else code)


def test_timeout_is_retryable(emulator):
    from flask_polysms.ports.gateways import GatewayError

    emulator.hang_next(1, 2.0)
    gateway = TwilioGateway(base_url=emulator.base_url, timeout=0.3)
    with pytest.raises(GatewayError) as caught:
        gateway.send(SID, TOKEN, OutgoingSMS(to="+14155552672", body="hi", from_="+14155552671"))
    assert caught.value.retryable and caught.value.code is None


def test_messaging_service_sid_is_sent_as_such(emulator):
    gateway = TwilioGateway(base_url=emulator.base_url, timeout=2)
    service = "MG" + "a" * 32
    gateway.send(
        SID, TOKEN, OutgoingSMS(to="+14155552672", body="hi", messaging_service_sid=service)
    )
    assert emulator.messages[0]["messaging_service_sid"] == service
    assert emulator.messages[0]["from"] is None


def test_outbox_records_what_would_be_sent():
    gateway = OutboxGateway()
    result = gateway.send(
        SID, TOKEN, OutgoingSMS(to="+1", body="x", from_="+2", status_callback="u")
    )
    assert gateway.outbox == [
        {
            "to": "+1",
            "from": "+2",
            "messaging_service_sid": None,
            "body": "x",
            "sid": result.sid,
            "status_callback": "u",
            "media_urls": [],
        }
    ]
