"""Redis failing under a running app, with the real pieces: PostgreSQL, RQ worker processes and
the Twilio emulator.

Redis restarted in the middle of a run (every job, timer and count gone, and nothing answering for
a while) and Redis losing every key (FLUSHDB) with work waiting and a send in flight: no message,
session timer or scheduled send is lost, a canceled one never goes out, and nothing is sent twice
(counted at the emulator, each body unique).

Each test has a PostgreSQL database and a Redis server of its own, which it stops, restarts or
flushes without touching the machine's. Recovery is measured: each test prints the seconds from
the fault to everything it hit being done again and fails above RECOVERY_TARGET. Run them with
``pytest -m slow -s tests/test_redis_faults.py``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from faults_migrations_support import (
    FINAL,
    RECOVERY_TARGET,
    USERS,
    make_rig_fixture,  # noqa: F401
    private_redis_fixture,  # noqa: F401
    wait_for,
)

from flask_polysms.clock import utcnow

pytestmark = pytest.mark.services


# -- Redis restarted in the middle of a run --------------------------------------------------------


def _lateness(conversations: dict[str, dict], idle: float, grace: float, since: float) -> float:
    """The longest a session's close came after both its deadline and ``since`` (epoch
    seconds): how late the timers fired once they could fire."""
    from datetime import datetime

    worst = 0.0
    for c in conversations.values():
        if c["closed_at"] is None:
            continue
        closed = datetime.fromisoformat(c["closed_at"]).timestamp()
        due = datetime.fromisoformat(c["last_activity_at"]).timestamp() + idle
        if c["end_reason"] == "inactivity":
            due += grace
        worst = max(worst, closed - max(due, since))
    return worst


@pytest.mark.slow
def test_redis_restarted_mid_run_loses_no_message_and_no_timer(make_rig, live_server):
    base_url, bind = live_server
    idle, grace = 4.0, 2.0
    rig = make_rig(
        emulator={"callbacks": "auto"},
        POLYSMS_PUBLIC_URL=base_url,
        POLYSMS_IDLE_TIMEOUT=idle,
        POLYSMS_GRACE_PERIOD=grace,
    )
    bind(rig.app)
    rig.start_workers(2)
    run = uuid.uuid4().hex[:8]

    # Engaged sessions: the user has replied and the agent answered, before the restart. Their
    # wake-up jobs wait in Redis when it goes.
    engaged = []
    for user in USERS[:4]:
        response = rig.send(user, f"hello {run} {user}")
        assert response.status_code == 202
        engaged.append(response.get_json())
    for conv in engaged:
        assert (
            rig.reply(conv["user_number"], conv["agent_number"], "sounds good").status_code == 200
        )
    wait_for(lambda: not rig.pending(), "the agent's replies sent", 60, rig.worker_logs)

    accepted = []
    for i in range(30):  # the workers are sending these while Redis goes
        response = rig.send(USERS[4 + i % 16], f"before {run} #{i}")
        assert response.status_code == 202
        accepted.append(response.get_json())
    rig.redis.stop()  # every job, timer and count gone, and nothing answers
    # Redis down: requests are still accepted (the rows are the truth; the sweep enqueues).
    for i in range(10):
        response = rig.send(USERS[4 + i % 16], f"during {run} #{i}")
        assert response.status_code == 202, response.get_json()
        accepted.append(response.get_json())
    for conv in engaged[:2]:  # the agent's answers to these wait for Redis
        response = rig.reply(conv["user_number"], conv["agent_number"], "still there?")
        assert response.status_code == 200, response.get_data(as_text=True)
    rig.redis.start()
    back = time.monotonic()
    back_at = time.time()
    # Two of the next sends fail with 20429: their retries are timed jobs in the new Redis,
    # which RQ's scheduler (its process died with its connection) does not move; the workers'
    # keepers do.
    rig.emulator.fail_next(2, 20429)
    for i in range(20):
        response = rig.send(USERS[4 + i % 16], f"after {run} #{i}")
        assert response.status_code == 202
        accepted.append(response.get_json())

    # Recovery is the workers' own: each sweeps every few seconds. Nobody runs a sweep here.
    conversation_ids = [c["conversation_id"] for c in engaged + accepted]
    figures: dict[str, float] = {}

    def everything_settled() -> bool:
        # A worker that met the outage outside its wait for jobs exits (RQ's own behaviour):
        # its supervisor starts another, as `replace_dead_workers` does.
        rig.replace_dead_workers()
        if rig.pending():
            return False
        figures.setdefault("messages", time.monotonic() - back)
        with rig.app.app_context():
            store = rig.state.store
            return all(store.get_session(cid).state == "closed" for cid in conversation_ids)

    wait_for(
        everything_settled, "every message sent and every session closed", 120, rig.worker_logs
    )
    rig.stop_workers()
    created = rig.emulator.messages
    rig.emulator.wait_for_callbacks(2 * len(created), timeout=60)

    conversations = {c["id"]: c for c in rig.conversations()}
    assert set(conversations) == set(conversation_ids)
    outbound = [
        m for c in conversations.values() for m in c["messages"] if m["direction"] == "outbound"
    ]
    assert {m["status"] for m in outbound} == {"delivered"}
    assert sum(m["attempts"] == 2 for m in outbound) == 2  # the two retries
    # Each message reached Twilio once (no fault makes an outcome unknown here): as many
    # messages at Twilio as ours, each the one its SID names.
    assert len(created) == len(outbound)
    assert {m["twilio_sid"] for m in outbound} == {m["sid"] for m in created}
    for i, conv in enumerate(engaged):
        c = conversations[conv["conversation_id"]]
        assert (c["state"], c["end_reason"]) == ("closed", "inactivity"), json.dumps(c, indent=1)
        kinds = [m["kind"] for m in c["messages"]]
        if i >= 2:
            assert kinds == ["greeting", "user", "agent", "warning", "closing"], kinds
        else:
            # The reply in the outage came before the warning or after it, and its answer
            # before or after the next one (4 s of idle time here, not 24 h): whatever the
            # order, both turns answered once and the session closed once.
            counts = Counter(kinds)
            assert (kinds[0], kinds[-1]) == ("greeting", "closing"), kinds
            assert (counts["user"], counts["agent"], counts["closing"]) == (2, 2, 1), kinds
            assert counts["warning"] in (1, 2), kinds
            answers = sorted(m["body"] for m in c["messages"] if m["kind"] == "agent")
            assert answers == ["echo: sounds good", "echo: still there?"], answers
    for conv in accepted:
        c = conversations[conv["conversation_id"]]
        assert (c["state"], c["end_reason"]) == ("closed", "unengaged")
        assert [m["kind"] for m in c["messages"]] == ["greeting"]
    figures["timers"] = _lateness(conversations, idle, grace, back_at)
    print(
        "redis restart:",
        json.dumps(
            {
                "messages": len(outbound),
                "sessions": len(conversations),
                "lost": 0,
                "seconds_to_every_message_out": round(figures["messages"], 1),
                "timers_late_at_most_s": round(figures["timers"], 1),
            }
        ),
    )
    assert figures["messages"] <= RECOVERY_TARGET
    assert figures["timers"] <= RECOVERY_TARGET


@pytest.mark.slow
def test_scheduled_sends_survive_a_redis_restart_and_a_canceled_one_never_sends(
    make_rig, live_server
):
    base_url, bind = live_server
    rig = make_rig(emulator={"callbacks": "auto"}, POLYSMS_PUBLIC_URL=base_url)
    bind(rig.app)
    rig.start_workers(1)
    run = uuid.uuid4().hex[:8]
    # The shortest lead the API takes is a minute: a little more, for the requests' own time.
    send_at = utcnow() + timedelta(seconds=70)

    def schedule(user: str, body: str) -> str:
        response = rig.client.post(
            "/v1/outbound-sms",
            json={"user_number": user, "message": body, "send_at": send_at.isoformat()},
            headers=rig.tenant.headers,
        )
        assert response.status_code == 202, response.get_json()
        assert response.get_json()["status"] == "scheduled"
        return response.get_json()["conversation_id"]

    def greeting(conversation_id: str):
        with rig.app.app_context():
            (message,) = rig.state.store.list_messages(conversation_id)
            return message

    kept = [schedule(USERS[i], f"scheduled {run} #{i}") for i in range(3)]
    dropped = schedule(USERS[3], f"canceled {run}")
    response = rig.client.post(
        f"/v1/messages/{greeting(dropped).id}/cancel", headers=rig.tenant.headers
    )
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    # Every release job (and the canceled one's, which would find nothing) goes with Redis.
    rig.redis.restart()

    def all_sent() -> bool:
        rig.replace_dead_workers()
        statuses = [greeting(cid).status for cid in kept]
        if any(status not in ("scheduled", "queued") for status in statuses):
            assert utcnow() >= send_at, f"sent before its send_at: {statuses}"
        return all(status in FINAL | {"sent"} for status in statuses)

    # Nobody runs a sweep here: the workers' own sweeps release what is due.
    wait_for(all_sent, "every scheduled message sent", 70 + RECOVERY_TARGET + 30, rig.worker_logs)
    late = (utcnow() - send_at).total_seconds()
    rig.stop_workers()
    print("scheduled sends after a redis restart:", json.dumps({"late_at_most_s": round(late, 1)}))
    assert late <= RECOVERY_TARGET
    bodies = Counter(m["body"] for m in rig.emulator.messages)
    # Each kept one once, the canceled one never.
    assert bodies == Counter(f"scheduled {run} #{i}" for i in range(3))
    with rig.app.app_context():
        store = rig.state.store
        assert {store.get_session(cid).state for cid in kept} == {"active"}
        closed = store.get_session(dropped)
        assert (closed.state, closed.end_reason) == ("closed", "canceled")
    assert greeting(dropped).status == "canceled"


# -- Redis loses its keys (FLUSHDB) with work waiting and a send in flight -------------------------


@pytest.mark.slow
def test_redis_losing_its_keys_loses_no_work_and_sends_nothing_twice(make_rig, live_server):
    base_url, bind = live_server
    rig = make_rig(
        emulator={"callbacks": "auto"},
        POLYSMS_PUBLIC_URL=base_url,
        # Long enough for the in-flight send to outlast the loss and the workers' new reports.
        POLYSMS_TWILIO_TIMEOUT=40.0,
        POLYSMS_RETRY_BASE_DELAY=8.0,
        POLYSMS_IDLE_TIMEOUT=3600.0,
    )
    bind(rig.app)
    run = uuid.uuid4().hex[:8]
    (first,) = rig.start_workers(1)

    def message_of(conversation_id: str):
        with rig.app.app_context():
            return rig.state.store.list_messages(conversation_id)

    # An engaged session whose next turn will wait in Redis.
    chat = rig.send(USERS[0], f"hello {run}").get_json()
    assert rig.reply(USERS[0], chat["agent_number"], "hi there").status_code == 200
    wait_for(lambda: not rig.pending(), "the first turn answered", 60, rig.worker_logs)
    # A send waiting for its retry (8 s), scheduled in Redis.
    rig.emulator.fail_next(1, 20429)
    retried = rig.send(USERS[1], f"retry {run}").get_json()
    wait_for(
        lambda: message_of(retried["conversation_id"])[0].attempts == 1,
        "the first attempt failed with 20429",
        60,
        rig.worker_logs,
    )
    # A send in flight when the keys go: the worker is inside the Twilio call for 20 s, and
    # Twilio then creates the message.
    rig.emulator.hang_next(1, 20, then="create")
    flying = rig.send(USERS[2], f"in flight {run}").get_json()
    wait_for(
        lambda: message_of(flying["conversation_id"])[0].status == "sending",
        "the send in flight",
        60,
        rig.worker_logs,
    )
    # Work waiting in Redis behind it: greetings and the agent's next turn.
    waiting = [rig.send(USERS[3 + i % 10], f"waiting {run} #{i}").get_json() for i in range(20)]
    assert rig.reply(USERS[0], chat["agent_number"], "are you there?").status_code == 200
    assert rig.state.scheduler.queue.count >= 21

    rig.state.scheduler.connection.flushdb()
    flushed = time.monotonic()
    rig.start_workers(1)  # the first is still inside its Twilio call

    def lost_work_done() -> bool:
        conversation_ids = [c["conversation_id"] for c in [chat, retried, *waiting]]
        with rig.app.app_context():
            store = rig.state.store
            messages = [m for cid in conversation_ids for m in store.list_messages(cid)]
        return all(m.status in ("sent", "delivered", "handled") for m in messages)

    wait_for(lost_work_done, "the work Redis lost done", 90, rig.worker_logs)
    recovered = time.monotonic() - flushed
    wait_for(
        lambda: message_of(flying["conversation_id"])[0].status in ("sent", "delivered"),
        "the send in flight done",
        90,
        rig.worker_logs,
    )
    assert first.poll() is None, rig.worker_logs()
    rig.stop_workers()

    bodies = Counter(m["body"] for m in rig.emulator.messages)
    expected = [
        f"hello {run}",
        "echo: hi there",
        "echo: are you there?",
        f"retry {run}",
        f"in flight {run}",
        *(f"waiting {run} #{i}" for i in range(20)),
    ]
    # Every one once: the send in flight was not taken for lost (its worker said it ran it).
    assert sorted(bodies.elements()) == sorted(expected)
    [retry_message] = message_of(retried["conversation_id"])
    assert retry_message.attempts == 2
    print(
        "redis keys lost:",
        json.dumps({"jobs_lost": 22, "seconds_to_lost_work_done": round(recovered, 1)}),
    )
    assert recovered <= RECOVERY_TARGET
