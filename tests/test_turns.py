"""Concurrency in a conversation, in one process: turns one at a time in arrival
order, each seeing the state the previous one saved; messages merged within
``POLYSMS_MERGE_WINDOW``; a crashed worker's claim taken over; first messages racing each other
open one session. Worker processes on PostgreSQL and MariaDB: tests/test_turn_load.py."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from freezegun import freeze_time

from flask_polysms.clock import utcnow
from flask_polysms.config import ConfigError
from flask_polysms.services.lifecycle import sweep

AGENT = "+14155552671"
USER = "+14155552674"
START = "2026-12-01 10:00:00"


@pytest.fixture(params=["memory", "sqlite"])
def storage_url(request, tmp_path):
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'turns.db'}"


class CountingAgent:
    """Counts turns in ``conv.state`` (read, wait, write: two turns at once lose one) and records
    each turn's text and times."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.turns: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, conv, text):
        started = time.monotonic()
        count = conv.state.get("count", 0)
        time.sleep(self.pause)
        conv.state["count"] = count + 1
        with self.lock:
            self.turns.append({"text": text, "start": started, "end": time.monotonic()})
        return None


def in_threads(*works) -> None:
    """Run the callables at once (released together), re-raising the first failure."""
    barrier = threading.Barrier(len(works))
    errors: list[BaseException] = []

    def run(work) -> None:
        try:
            barrier.wait(timeout=10)
            work()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a webhook hung"
    if errors:
        raise errors[0]


def sessions_of(sms, user=USER):
    with sms.app.app_context():
        return sms.store.list_sessions(sms.tenant.project_id, user_number=user)[0]


def test_two_webhooks_at_once_take_turns_and_keep_the_state(make_sms, storage_url):
    """Two inbound webhooks for one conversation at once: before turns were claimed both agents
    ran together and the second overwrote the first's ``conv.state`` (count 2, not 3)."""
    agent = CountingAgent(pause=0.3)
    sms = make_sms(agent=agent, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url)
    sms.inbound_ok(USER, "first")
    in_threads(lambda: sms.inbound_ok(USER, "second"), lambda: sms.inbound_ok(USER, "third"))
    (session,) = sessions_of(sms)
    assert session.data["count"] == 3
    turns = agent.turns
    assert len(turns) == 3
    for before, after in zip(turns, turns[1:], strict=False):
        assert after["start"] >= before["end"], "two turns of one conversation overlapped"
    # In arrival order: the order the messages were recorded in.
    with sms.app.app_context():
        recorded = [m.body for m in sms.store.list_messages(session.id) if m.kind == "user"]
        statuses = {m.status for m in sms.store.list_messages(session.id) if m.kind == "user"}
    assert [t["text"] for t in turns] == recorded
    assert statuses == {"handled"}


def test_first_messages_at_once_open_one_session(make_sms, storage_url):
    agent = CountingAgent(pause=0.05)
    sms = make_sms(agent=agent, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url)
    in_threads(*(lambda i=i: sms.inbound_ok(USER, f"hello {i}") for i in range(6)))
    (session,) = sessions_of(sms)
    assert session.data["count"] == 6
    with sms.app.app_context():
        bodies = sorted(m.body for m in sms.store.list_messages(session.id))
    assert bodies == [f"hello {i}" for i in range(6)]
    assert sms.metrics()["conversations"] == 1


def test_messages_within_the_merge_window_are_one_turn(make_sms, storage_url):
    agent = CountingAgent()
    sms = make_sms(
        agent=agent, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url, POLYSMS_MERGE_WINDOW=5
    )
    with freeze_time(START) as clock:
        sms.inbound_ok(USER, "I would like to book")
        clock.tick(2)
        sms.inbound_ok(USER, "a table for two")
        clock.tick(4)  # the first one's window has closed, not the second's
        sms.run_due_timers()
        assert agent.turns == []
        clock.tick(1)
        sms.run_due_timers()
        assert [t["text"] for t in agent.turns] == ["I would like to book\na table for two"]
        clock.tick(10)
        sms.inbound_ok(USER, "at eight")
        clock.tick(5)
        sms.run_due_timers()
    assert [t["text"] for t in agent.turns] == [
        "I would like to book\na table for two",
        "at eight",
    ]
    (session,) = sessions_of(sms)
    assert session.data["count"] == 2
    with sms.app.app_context():
        statuses = [m.status for m in sms.store.list_messages(session.id)]
    assert statuses == ["handled"] * 3


def test_messages_further_apart_than_the_window_are_turns_of_their_own(make_sms, storage_url):
    agent = CountingAgent()
    sms = make_sms(
        agent=agent, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url, POLYSMS_MERGE_WINDOW=2
    )
    with freeze_time(START) as clock:
        sms.inbound_ok(USER, "one")
        clock.tick(3)
        sms.inbound_ok(USER, "two")  # more than the window after "one": not merged
        clock.tick(2)
        sms.run_due_timers()
    assert [t["text"] for t in agent.turns] == ["one", "two"]


def test_without_a_merge_window_each_message_is_a_turn_at_once(make_sms):
    agent = CountingAgent()
    sms = make_sms(agent=agent, numbers=(AGENT,))
    assert sms.state.settings.merge_window == timedelta(0)
    with freeze_time(START):
        sms.inbound_ok(USER, "one")
        sms.inbound_ok(USER, "two")
    assert [t["text"] for t in agent.turns] == ["one", "two"]


@pytest.mark.parametrize("value", [-1, "5", True])
def test_a_bad_merge_window_fails_at_start_up(make_sms, value):
    with pytest.raises(ConfigError, match="POLYSMS_MERGE_WINDOW"):
        make_sms(POLYSMS_MERGE_WINDOW=value)


def test_a_crashed_workers_claim_is_taken_over_once_it_runs_out(make_sms, storage_url):
    agent = CountingAgent()
    sms = make_sms(agent=agent, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url)
    with freeze_time(START) as clock:
        sms.inbound_ok(USER, "one")
        (session,) = sessions_of(sms)
        state = sms.state
        stuck_after = state.settings.stuck_after
        with sms.app.app_context():
            # A worker took the turn and died.
            now = utcnow()
            assert state.store.claim_turn(session.id, "dead", now, now + stuck_after)
        sms.inbound_ok(USER, "two")
        assert [t["text"] for t in agent.turns] == ["one"]  # "two" waits for the claim
        clock.tick(stuck_after - timedelta(seconds=1))
        with sms.app.app_context():
            sweep(state)
        assert [t["text"] for t in agent.turns] == ["one"]
        clock.tick(timedelta(seconds=2))
        with sms.app.app_context():
            sweep(state)  # the message waited too long: its job runs again, takes the claim over
    assert [t["text"] for t in agent.turns] == ["one", "two"]
    assert sessions_of(sms)[0].data["count"] == 2
