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


def test_a_send_carries_basic_auth_and_its_whole_form(emulator):
    gateway = TwilioGateway(base_url=emulator.base_url, timeout=2)
    gateway.send(
        SID,
        TOKEN,
        OutgoingSMS(
            to="+14155552672",
            body="hi & bye",
            from_="+14155552671",
            status_callback="https://sms.example/v1/twilio/status?message_id=msg_1",
            media_urls=("https://example.com/a.png", "https://example.com/b.png"),
        ),
    )
    (sent,) = emulator.messages  # the emulator checks Basic auth against the account
    assert sent["body"] == "hi & bye"
    assert sent["status_callback"] == "https://sms.example/v1/twilio/status?message_id=msg_1"
    assert sent["media_urls"] == ["https://example.com/a.png", "https://example.com/b.png"]


def test_the_environments_proxy_is_used(emulator, monkeypatch):
    """Read once when the client is made, then given to every send: with a proxy that does not
    answer, the send cannot reach even the local emulator."""
    import socket

    from flask_polysms.ports.gateways import GatewayError

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    gateway = TwilioGateway(base_url=emulator.base_url, timeout=2)
    with pytest.raises(GatewayError) as caught:
        gateway.send(SID, TOKEN, OutgoingSMS(to="+14155552672", body="hi", from_="+14155552671"))
    assert caught.value.retryable and "ProxyError" in str(caught.value)
    assert emulator.messages == []


def test_the_twilio_clients_log_lines_when_its_logger_logs_info(emulator, caplog):
    import logging

    gateway = TwilioGateway(base_url=emulator.base_url, timeout=2)
    with caplog.at_level(logging.INFO, logger="twilio.http_client"):
        gateway.send(SID, TOKEN, OutgoingSMS(to="+14155552672", body="hi", from_="+14155552671"))
    lines = [r.getMessage() for r in caplog.records if r.name == "twilio.http_client"]
    assert lines[0] == "-- BEGIN Twilio API Request --"
    assert f"POST Request: {emulator.base_url}/2010-04-01/Accounts/{SID}/Messages.json" in lines
    assert "Response Status Code: 201" in lines
    assert not [line for line in lines if TOKEN in line or "Authorization" in line]


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
