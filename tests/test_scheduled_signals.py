"""The signals of scheduled sends, on every backend: a scheduled conversation (``send_at``, or a
greeting held by quiet hours) is opened once, when it is accepted; a cancel reports the message
``canceled`` and its conversation closed, once each, after the commit; a cancel that lost to the
release (409) reports nothing."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time
from signal_recorder import Recorder
from store_backends import BACKENDS, storage_url

from flask_polysms import signals
from flask_polysms.backends import create_store
from flask_polysms.clock import utcnow
from flask_polysms.services import scheduled
from flask_polysms.services.operators import end_session

AGENT = "+14155552671"
USER = "+14155552674"
OTHER_USER = "+14155552675"
START = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(params=BACKENDS)
def sms(request, make_sms, tmp_path):
    harness = make_sms(
        numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url(request, request.param, tmp_path)
    )
    yield harness
    harness.store.disconnect()


def schedule(sms, send_at: datetime, user: str = USER) -> dict:
    """A scheduled send: the 202 body, with the greeting's id as ``message_id``."""
    body = sms.send_ok(user, "See you tomorrow", send_at=send_at.isoformat())
    body["message_id"] = sms.conversation(body["conversation_id"])["messages"][0]["id"]
    return body


def cancel(sms, message_id: str, client=None):
    client = client or sms.client
    return client.post(f"/v1/messages/{message_id}/cancel", headers=sms.tenant.headers)


# -- signals --------------------------------------------------------------------------------------
@pytest.fixture
def recorder(sms):
    recorder = Recorder(sms.app)
    yield recorder
    recorder.disconnect()


class CommittedReads:
    """Receivers of the scheduled paths' signals that read what each one reports through a
    connection of their own: only a committed change is seen there."""

    def __init__(self, sms) -> None:
        self.sms = sms
        self.seen: list[tuple] = []
        url = sms.state.settings.storage_url
        self.store = sms.store if url == "memory://" else create_store(url)
        self.receivers = {
            signals.conversation_opened: self.conversation,
            signals.conversation_closed: self.conversation,
            signals.message_status_changed: self.message,
        }

    def conversation(self, app, project_id, conversation):
        session = self.store.get_session(conversation["id"])
        self.seen.append((conversation["id"], session.state if session else None))

    def message(self, app, project_id, message):
        stored = self.store.get_message(message["id"])
        self.seen.append((message["id"], stored.status if stored else None))

    def __enter__(self) -> CommittedReads:
        for signal, receive in self.receivers.items():
            signal.connect(receive, sender=self.sms.app)
        return self

    def __exit__(self, *exc) -> None:
        for signal, receive in self.receivers.items():
            signal.disconnect(receive)
        if self.store is not self.sms.store:
            self.store.disconnect()


def test_a_scheduled_conversation_is_opened_once_when_accepted(sms, recorder):
    send_at = START + timedelta(hours=1)
    with freeze_time(START) as frozen:
        with CommittedReads(sms) as reads:
            accepted = schedule(sms, send_at)
        (opened,) = recorder.kwargs("conversation_opened")
        assert opened["project_id"] == sms.tenant.project_id
        conversation = opened["conversation"]
        assert (conversation["id"], conversation["state"]) == (
            accepted["conversation_id"],
            "scheduled",
        )
        assert [m["status"] for m in conversation["messages"]] == ["scheduled"]
        assert reads.seen == [(accepted["conversation_id"], "scheduled")]  # committed
        assert recorder.counts() == {"conversation_opened": 1}

        # Going out opens nothing again; the send reports the greeting sent, once.
        recorder.clear()
        frozen.move_to(send_at)
        sms.run_due_timers()
        sms.run_due_timers()
    (sent,) = recorder.kwargs("message_status_changed")
    assert (sent["message"]["id"], sent["message"]["status"]) == (accepted["message_id"], "sent")
    assert recorder.counts() == {"message_status_changed": 1}


def test_a_cancel_reports_the_message_canceled_and_the_conversation_closed_once(sms, recorder):
    send_at = START + timedelta(hours=1)
    with freeze_time(START) as frozen:
        accepted = schedule(sms, send_at)
        recorder.clear()
        with CommittedReads(sms) as reads:
            assert cancel(sms, accepted["message_id"]).status_code == 200
        (changed,) = recorder.kwargs("message_status_changed")
        assert changed["project_id"] == sms.tenant.project_id
        message = changed["message"]
        assert (message["id"], message["status"], message["drop_reason"]) == (
            accepted["message_id"],
            "canceled",
            "canceled",
        )
        (closed,) = recorder.kwargs("conversation_closed")
        assert closed["project_id"] == sms.tenant.project_id
        conversation = closed["conversation"]
        assert (conversation["id"], conversation["state"], conversation["end_reason"]) == (
            accepted["conversation_id"],
            "closed",
            "canceled",
        )
        # Each receiver, on its own connection, saw what it was told: committed.
        assert sorted(reads.seen) == sorted(
            [(accepted["message_id"], "canceled"), (accepted["conversation_id"], "closed")]
        )
        assert recorder.counts() == {"message_status_changed": 1, "conversation_closed": 1}

        # Canceled again, then its release job comes: nothing changes, nothing is sent.
        recorder.clear()
        assert cancel(sms, accepted["message_id"]).status_code == 200
        frozen.move_to(send_at + timedelta(minutes=1))
        sms.run_due_timers()
    assert recorder.counts() == {}
    assert sms.outbox == []


def test_a_cancel_after_the_release_is_409_and_reports_nothing(sms, recorder):
    send_at = START + timedelta(minutes=10)
    with freeze_time(send_at - timedelta(minutes=5)):
        accepted = schedule(sms, send_at)
    with freeze_time(send_at):
        with sms.app.app_context():
            assert scheduled.release(sms.state, accepted["message_id"]) is True
        recorder.clear()
        assert cancel(sms, accepted["message_id"]).status_code == 409
        assert recorder.counts() == {}
        assert sms.conversation(accepted["conversation_id"])["state"] == "active"


def test_a_greeting_whose_conversation_closed_first_reports_canceled_once(sms, recorder):
    send_at = START + timedelta(minutes=10)
    with freeze_time(START) as frozen:
        accepted = schedule(sms, send_at)
        with sms.app.app_context():
            end_session(sms.state, accepted["conversation_id"], "agent")
        (closed,) = recorder.kwargs("conversation_closed")
        assert closed["conversation"]["end_reason"] == "agent"
        recorder.clear()
        frozen.move_to(send_at)
        sms.run_due_timers()
        sms.run_due_timers()
    (changed,) = recorder.kwargs("message_status_changed")
    assert (changed["message"]["status"], changed["message"]["drop_reason"]) == (
        "canceled",
        "conversation_closed",
    )
    assert recorder.counts() == {"message_status_changed": 1}  # not closed a second time


def test_a_cancel_after_the_user_wrote_keeps_the_conversation_open(sms, recorder):
    with freeze_time(START):
        accepted = schedule(sms, START + timedelta(hours=1))
        sms.inbound_ok(USER, "hello?")  # joins the scheduled conversation: opened once only
        assert len(recorder.kwargs("conversation_opened")) == 1
        recorder.clear()
        assert cancel(sms, accepted["message_id"]).status_code == 200
        (changed,) = recorder.kwargs("message_status_changed")
        assert changed["message"]["status"] == "canceled"
        assert recorder.kwargs("conversation_closed") == []
        assert sms.conversation(accepted["conversation_id"])["state"] == "active"


# -- a cancel racing the release (real threads, on the database servers) --------------------------
SERVERS = [b for b in BACKENDS if b not in ("memory", "sqlite")]
RACERS = (USER, OTHER_USER, "+14155552676", "+14155552677")  # a race each


@pytest.fixture(params=SERVERS)
def server_sms(request, make_sms, tmp_path):
    harness = make_sms(
        numbers=(AGENT,),
        POLYSMS_STORAGE_URL=storage_url(request, request.param, tmp_path),
        POLYSMS_READ_RATE_LIMIT="10000 per second",
    )
    yield harness
    harness.store.disconnect()


def race(sms, message_id: str, send_at: datetime) -> tuple[bool, int]:
    """Release and cancel ``message_id`` at once, in two threads: (whether the release released
    it, the cancel's status code)."""
    barrier = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def release_it():
        with sms.app.app_context():
            barrier.wait()
            outcome["released"] = scheduled.release(sms.state, message_id, send_at)

    def cancel_it():
        client = sms.app.test_client()
        barrier.wait()
        outcome["cancel"] = cancel(sms, message_id, client).status_code

    threads = [threading.Thread(target=work) for work in (release_it, cancel_it)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcome["released"], outcome["cancel"]


def reported(recorder, accepted: dict) -> list[tuple[str, str]]:
    """(signal, status or state) of the status and close signals about one scheduled send."""
    found = []
    for kwargs in recorder.kwargs("message_status_changed"):
        if kwargs["message"]["id"] == accepted["message_id"]:
            found.append(("message_status_changed", kwargs["message"]["status"]))
    for kwargs in recorder.kwargs("conversation_closed"):
        if kwargs["conversation"]["id"] == accepted["conversation_id"]:
            found.append(("conversation_closed", kwargs["conversation"]["end_reason"]))
    return found


def test_a_cancel_racing_the_release_reports_only_what_won(server_sms):
    """Of a cancel and a release at once, one wins: a canceled greeting reports ``canceled``
    and its conversation closed; a released one is sent, and the cancel (409) reports nothing."""
    sms = server_sms
    send_at = utcnow() + timedelta(hours=1)
    accepted = [schedule(sms, send_at, user=user) for user in RACERS]
    recorder = Recorder(sms.app)
    try:
        for one in accepted:
            released, status = race(sms, one["message_id"], send_at)
            if released:
                assert status == 409
                assert reported(recorder, one) == [("message_status_changed", "sent")]
            else:
                assert status == 200
                assert reported(recorder, one) == [
                    ("message_status_changed", "canceled"),
                    ("conversation_closed", "canceled"),
                ]
        assert recorder.kwargs("conversation_opened") == []  # opened before, never again
    finally:
        recorder.disconnect()
