"""Faults on the way to Twilio, with the real pieces: PostgreSQL, Redis, RQ worker processes
and the Twilio emulator.

The promise under test: whatever Twilio answers (429 bursts, 500s, hanging calls) and even when a
worker is killed in the middle of a send, every message ends in a final status (delivered,
undelivered, or failed with a code), none is lost and none is sent twice by our side.

"Sent twice by our side" is counted at the emulator, which records every message it creates,
with its body (each body here is unique). Every copy beyond the first fails the test, also when
one of our sends of that body ended without Twilio's answer (a timeout or a dropped connection:
the worker processes log those, see ``tests/fault_app.py``) after Twilio had created the message,
exactly what ``hang_next(..., then="create")`` injects: the retry finds that message in Twilio's
list and adopts it instead of sending again.

Each test has a PostgreSQL database and a Redis server of its own (``make_rig`` in
``faults_migrations_support``). The killed worker's test prints the seconds to recovery and fails
above RECOVERY_TARGET; run it with ``pytest -m slow -s tests/test_faults.py -k killed``.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from faults_migrations_support import (
    FINAL,
    RECOVERY_TARGET,
    USERS,
    make_rig_fixture,  # noqa: F401
    private_redis_fixture,  # noqa: F401
    wait_for,
)

pytestmark = pytest.mark.services


# -- 429 bursts, 500s and hanging calls during a 1,000-message run ---------------------------------

# One round of faults, injected after every 50 messages: Twilio answers them to whichever create
# calls come next, in this order.
FAULT_ROUND = (
    ("20429 burst", lambda e: e.fail_next(5, 20429), 5),
    ("500", lambda e: e.fail_next(2, 500), 2),
    ("hang, request lost", lambda e: e.hang_next(1, 1.5, then="drop"), 1),
    ("503", lambda e: e.fail_next(1, 20503), 1),
    ("hang, message created", lambda e: e.hang_next(1, 1.5, then="create"), 1),
)
PERMANENT = ("21211 invalid number (permanent)", lambda e: e.fail_next(1, 21211), 1)


@pytest.mark.slow
def test_a_thousand_messages_through_429_bursts_500s_and_hangs(make_rig, live_server):
    total, chunk = 1000, 50
    base_url, bind = live_server
    rig = make_rig(emulator={"callbacks": "auto"}, POLYSMS_PUBLIC_URL=base_url)
    bind(rig.app)  # the emulator's signed status callbacks reach this app
    rig.emulator.set_outcome(USERS[0], "undelivered")  # 30003
    rig.emulator.set_outcome(USERS[1], "failed")  # 30008, from the carrier
    rig.start_workers(2)

    injected: Counter = Counter()
    bodies: list[str] = []
    run = uuid.uuid4().hex[:8]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, total, chunk):
            batch = [
                (USERS[i % len(USERS)], f"load {run} #{i:04d}") for i in range(start, start + chunk)
            ]
            responses = list(pool.map(lambda args: rig.send(*args), batch))
            for response in responses:
                assert response.status_code == 202, response.get_json()
            bodies.extend(body for _, body in batch)
            if start + chunk < total:  # the last 50 messages (and retries) use up the last faults
                round_ = FAULT_ROUND + ((PERMANENT,) if (start // chunk) % 3 == 0 else ())
                for name, inject, count in round_:
                    inject(rig.emulator)
                    injected[name] += count

    wait_for(
        lambda: not rig.pending(),
        "every message out of queued/sending",
        300,
        lambda: f"{len(rig.pending())} pending\n{rig.worker_logs()}",
    )
    rig.stop_workers()
    steps = {"delivered": 2, "undelivered": 2, "failed": 1}
    outcome = {USERS[0]: "undelivered", USERS[1]: "failed"}
    created = rig.emulator.messages
    expected_callbacks = sum(steps[outcome.get(m["to"], "delivered")] for m in created)
    callbacks = rig.emulator.wait_for_callbacks(expected_callbacks, timeout=120)
    assert {c["status_code"] for c in callbacks} == {200}

    conversations = rig.conversations()
    messages = [m for c in conversations for m in c["messages"] if m["direction"] == "outbound"]
    by_body = {m["body"]: m for m in messages}
    # None lost, none recorded twice.
    assert len(conversations) == total
    assert sorted(m["body"] for m in messages) == sorted(bodies)
    # Each one final; every failure with a code.
    statuses = Counter(m["status"] for m in messages)
    assert set(statuses) <= FINAL, statuses
    for message in messages:
        if message["status"] != "delivered":
            assert message["error_code"] is not None, message

    copies = Counter(m["body"] for m in created)
    sids = {}
    for m in created:
        sids.setdefault(m["body"], set()).add(m["sid"])
    unknown = rig.unknown_outcomes()
    api_failed = [m for m in messages if m["twilio_sid"] is None]
    for body, message in by_body.items():
        if message["twilio_sid"] is None:  # failed at the API: Twilio never accepted a copy...
            assert copies[body] <= unknown[body], (message, copies[body])  # ...that we knew of
        else:
            assert message["twilio_sid"] in sids[body]
            # One copy, even after sends whose outcome was unknown: each retry looked first.
            assert copies[body] == 1, (message, copies[body], unknown[body])
    extra_copies = sum(n - 1 for n in copies.values() if n > 1)
    adopted = sum(1 for m in messages if m["twilio_sid"] and unknown[m["body"]])

    # The metrics count each message once, whatever its retries.
    figures = rig.metrics()
    assert figures["sent"] == total - len(api_failed)
    assert figures["api_failures"] == len(api_failed)
    assert figures["delivered"] == statuses["delivered"]
    assert figures["undelivered"] == statuses["undelivered"]
    assert figures["failed"] == statuses["failed"] - len(api_failed)

    summary = {
        "messages": total,
        "final_statuses": dict(statuses),
        "failed_at_the_api": dict(Counter(m["error_code"] for m in api_failed)),
        "faults_injected": dict(injected),
        "twilio_requests": rig.emulator.requests_count,  # creates and look-ups
        "sends_without_an_answer": sum(unknown.values()),
        "extra_copies_at_twilio": extra_copies,
        "sent_after_an_unknown_outcome": adopted,
    }
    print("fault run:", json.dumps(summary, sort_keys=True))
    assert injected["hang, message created"] > 0 and sum(unknown.values()) > 0
    assert extra_copies == 0


# -- a worker killed with SIGKILL in the middle of a send ------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_mid_send_is_sent_again_by_another_within_seconds(make_rig):
    # A long Twilio timeout: the worker is surely inside the call when it is killed. The last
    # resort (POLYSMS_STUCK_AFTER, 5 min) is not what recovers it.
    rig = make_rig(POLYSMS_TWILIO_TIMEOUT=30.0)
    response = rig.send(USERS[0], "killed mid-send")
    assert response.status_code == 202
    with rig.app.app_context():
        (message,) = rig.state.store.list_messages(response.get_json()["conversation_id"])

    def status() -> str:
        with rig.app.app_context():
            return rig.state.store.get_message(message.id).status

    rig.emulator.hang_next(1, 120, then="drop")
    (victim,) = rig.start_workers(1)
    wait_for(
        lambda: rig.emulator.requests_count == 1 and status() == "sending",
        "the worker inside the Twilio call",
        60,
        rig.worker_logs,
    )
    rig.start_workers(1)  # the survivor, waiting for work
    keys = rig.state.scheduler.keys
    wait_for(
        lambda: rig.state.scheduler.connection.zcard(keys.workers) == 2,
        "both workers reporting",
        60,
        rig.worker_logs,
    )
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    wait_for(lambda: status() == "sent", "sent again", 90, rig.worker_logs)
    recovered = time.monotonic() - killed
    # The lost call, the retry's look-up in Twilio's list (two requests), the send that worked.
    assert rig.emulator.requests_count == 4
    assert [m["body"] for m in rig.emulator.messages] == ["killed mid-send"]
    with rig.app.app_context():
        assert rig.state.store.get_message(message.id).attempts == 2
    print("worker SIGKILL:", json.dumps({"seconds_to_sent_again": round(recovered, 1)}))
    assert recovered <= RECOVERY_TARGET
