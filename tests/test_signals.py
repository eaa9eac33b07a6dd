"""The ``flask_polysms.signals``, on every backend (memory, SQLite, PostgreSQL, MariaDB): each
fires once with its arguments, after its change commits and never for a rolled-back one (opening,
messages received and their status, opt-outs and opt-ins by keyword or carrier, handoff, close by
an operator or the timers); a receiver that raises is logged and changes nothing else."""

from __future__ import annotations

import logging

import pytest
from freezegun import freeze_time
from operators_support import (
    AGENT,
    START,
    USER,
    agent_fixture,  # noqa: F401
    fire,
    ok,
    post,
    recorder_fixture,  # noqa: F401
    sms_fixture,  # noqa: F401
    storage_url_fixture,  # noqa: F401
)
from signal_recorder import Recorder

from flask_polysms import signals
from flask_polysms.services import session_writes
from flask_polysms.services.state import get_state
from flask_polysms.services.units import unit_of_work


def test_each_signal_fires_once_with_its_arguments(sms, recorder):
    conversation_id = sms.send_ok(USER)["conversation_id"]
    (opened,) = recorder.kwargs("conversation_opened")
    assert opened["project_id"] == sms.tenant.project_id
    assert opened["conversation"]["id"] == conversation_id
    (greeting_sent,) = recorder.kwargs("message_status_changed")
    assert greeting_sent["message"]["kind"] == "greeting"
    assert greeting_sent["message"]["status"] == "sent"

    recorder.clear()
    sms.inbound_ok(USER, "hello")
    (received,) = recorder.kwargs("message_received")
    assert received["message"]["body"] == "hello"
    assert received["message"]["direction"] == "inbound"
    assert received["conversation"]["id"] == conversation_id
    assert received["message"]["id"] in [m["id"] for m in received["conversation"]["messages"]]
    (reply_sent,) = recorder.kwargs("message_status_changed")
    assert reply_sent["message"]["kind"] == "agent"

    recorder.clear()
    sid = sms.outbox[-1]["sid"]
    assert sms.status_callback(sid, "delivered").status_code == 200
    assert sms.status_callback(sid, "delivered").status_code == 200  # Twilio's repeat
    assert sms.status_callback(sid, "sent").status_code == 200  # out of order: no change
    (delivered,) = recorder.kwargs("message_status_changed")
    assert delivered["message"]["status"] == "delivered"

    recorder.clear()
    sms.inbound_ok(USER, "STOP")
    sms.inbound_ok(USER, "STOP")  # already opted out: no change, no second opted_out
    (stop,) = recorder.kwargs("opted_out")
    assert stop == {
        "project_id": sms.tenant.project_id,
        "user_number": USER,
        "sender_address": AGENT,
        "keyword": "STOP",
        "source": "keyword",
    }
    keyword_messages = recorder.kwargs("message_received")
    assert [k["message"]["kind"] for k in keyword_messages] == ["compliance", "compliance"]

    recorder.clear()
    sms.inbound_ok(USER, "start")
    (start_again,) = recorder.kwargs("opted_in")
    assert (start_again["keyword"], start_again["source"]) == ("start", "keyword")
    assert recorder.kwargs("opted_out") == []

    recorder.clear()
    ok(post(sms, conversation_id, "handoff", {"reason": "r"}))
    ok(post(sms, conversation_id, "end"))
    assert [k["conversation"]["id"] for k in recorder.kwargs("handoff_requested")] == [
        conversation_id
    ]
    (closed,) = recorder.kwargs("conversation_closed")
    assert closed["conversation"]["state"] == "closed"


def test_a_dropped_message_outside_a_conversation_is_received_too(sms, recorder):
    sms.inbound_ok(USER, "STOP")  # a keyword with no conversation
    (received,) = recorder.kwargs("message_received")
    assert received["conversation"] is None
    assert received["message"]["kind"] == "compliance"


def test_timers_closing_a_conversation_fire_conversation_closed_once(sms, recorder):
    settings = get_state(sms.app).settings
    with freeze_time(START) as clock:
        conversation_id = sms.send_ok(USER)["conversation_id"]
        clock.tick(settings.idle_timeout)
        assert fire(sms) == 1
        assert fire(sms) == 0
    (closed,) = recorder.kwargs("conversation_closed")
    assert closed["conversation"]["id"] == conversation_id
    assert closed["conversation"]["end_reason"] == "unengaged"


def test_a_rolled_back_change_fires_nothing(sms, recorder):
    state = get_state(sms.app)

    class Boom(Exception):
        pass

    def open_then_fail():
        session_writes.new_session(state, sms.tenant.project_id, "live", USER, AGENT)
        raise Boom

    with sms.app.app_context():
        with pytest.raises(Boom):
            unit_of_work(state, open_then_fail)
        if state.settings.storage_url != "memory://":  # the memory store keeps no undo log
            assert state.store.find_open_session(sms.tenant.project_id, USER, AGENT) is None
        assert recorder.kwargs("conversation_opened") == []
        # A unit of work that commits sends its signal after the commit, once.
        session = unit_of_work(
            state,
            lambda: session_writes.new_session(state, sms.tenant.project_id, "live", USER, AGENT),
        )
    assert [k["conversation"]["id"] for k in recorder.kwargs("conversation_opened")] == [session.id]


def test_signals_fire_after_the_commit(sms):
    """A receiver reads what the signal reports: it is committed (another connection sees it)."""
    seen = []
    state = get_state(sms.app)

    def receive(app, project_id, conversation):
        # A store of its own: its own connection, outside the request's transaction.
        from flask_polysms.backends import create_store

        url = state.settings.storage_url
        store = state.store if url == "memory://" else create_store(url)
        try:
            seen.append(store.get_session(conversation["id"]) is not None)
        finally:
            if store is not state.store:
                store.disconnect()

    signals.conversation_opened.connect(receive, sender=sms.app)
    try:
        sms.send_ok(USER)
    finally:
        signals.conversation_opened.disconnect(receive)
    assert seen == [True]


def test_a_receiver_that_raises_is_logged_and_changes_nothing(sms, agent, caplog, recorder):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    signals.message_received.connect(broken, sender=sms.app)
    signals.conversation_opened.connect(broken, sender=sms.app)
    try:
        with caplog.at_level(logging.ERROR, logger="flask_polysms.signals"):
            response = sms.inbound(USER, "hello")
            assert response.status_code == 200
    finally:
        signals.message_received.disconnect(broken)
        signals.conversation_opened.disconnect(broken)
    assert "receiver bug" in caplog.text
    (conversation,) = sms.conversations()
    assert [m["body"] for m in conversation["messages"]] == ["hello", "Got it"]
    assert agent.texts == ["hello"]
    # The other receivers still got their signals.
    assert len(recorder.kwargs("message_received")) == 1
    assert len(recorder.kwargs("conversation_opened")) == 1


def test_a_carrier_opt_out_fires_opted_out(make_emulated_sms, storage_url):
    sms, twilio = make_emulated_sms(numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url)
    recorder = Recorder(sms.app)
    try:
        twilio.fail_next(1, 21610)
        body = sms.send_ok(USER)
        assert body["status"] == "suppressed"
        (carrier,) = recorder.kwargs("opted_out")
        assert (carrier["keyword"], carrier["source"], carrier["sender_address"]) == (
            None,
            "carrier",
            AGENT,
        )
        (suppressed,) = recorder.kwargs("message_status_changed")
        assert suppressed["message"]["status"] == "suppressed"
    finally:
        recorder.disconnect()
        get_state(sms.app).store.disconnect()
