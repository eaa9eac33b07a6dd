"""Redis is never needed to accept a message, and work whose job Redis lost runs again within
seconds; a greeting accepted for an opted-out recipient is never sent.

Every test runs its own ``redis-server`` (:class:`faults_migrations_support.PrivateRedis`),
stopped and started again as the test needs: the rate limits count in it and RQ keeps its jobs in
it, as in production. Workers here run in this process (the worker class of ``flask polysms
worker``); tests/test_faults.py and tests/test_redis_faults.py run worker processes.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest
from faults_migrations_support import PrivateRedis, private_redis_server
from flask import Flask
from rq.job import Job

from flask_polysms import PolySMS, get_state
from flask_polysms.clock import utcnow
from flask_polysms.jobs import set_worker_app
from flask_polysms.ports.schedulers import (
    ALIVE_TTL,
    LOST,
    MISSING,
    PENDING,
    RUNNING,
    SWEEP_JOB_ID,
    UNSURE,
    keep_worker,
    worker_class,
)
from flask_polysms.services import lifecycle
from flask_polysms.services.job_ids import agent_job_id, send_job_id
from flask_polysms.services.lifecycle import run_sweep
from flask_polysms.testing import provision, sign_twilio_request

pytestmark = pytest.mark.services

AGENT = "+14155552671"
USERS = ("+14155552672", "+14155552673", "+14155552674")


@pytest.fixture
def redis_server(tmp_path):
    """A Redis server of this test's own, to stop and start again."""
    with private_redis_server(tmp_path / "redis") as server:
        yield server


def make_app(redis: PrivateRedis, tmp_path, **config) -> tuple[Flask, PolySMS]:
    """A testing app whose scheduler (RQ) and limits both use ``redis``; SQLite for the rows."""
    polysms = PolySMS()

    @polysms.agent
    def answer(conv, text):
        return f"echo: {text}"

    app = Flask(f"outage_{id(polysms)}")
    app.testing = True
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="rq",
        POLYSMS_REDIS_URL=redis.url,
        POLYSMS_RATE_LIMIT_STORAGE_URL=redis.url,
        POLYSMS_STORAGE_URL=f"sqlite:///{tmp_path / 'outage.db'}",
        POLYSMS_QUEUE_NAME="polysms-outage",
        **config,
    )
    polysms.init_app(app)
    return app, polysms


def work(app: Flask) -> None:
    """One burst of the worker class of `flask polysms worker`, in this process."""
    state = get_state(app)
    set_worker_app(app)
    try:
        queue = state.scheduler.queue
        worker_class()([queue], connection=queue.connection, serializer=queue.serializer).work(
            burst=True, with_scheduler=True
        )
    finally:
        set_worker_app(None)


def send(app, tenant, user, body):
    return app.test_client().post(
        "/v1/outbound-sms", json={"user_number": user, "message": body}, headers=tenant.headers
    )


def inbound(app, tenant, user, body, sid):
    params = {"MessageSid": sid, "From": user, "To": AGENT, "Body": body}
    signature = sign_twilio_request(
        "http://localhost/v1/twilio/sms", params, tenant.twilio_auth_token
    )
    return app.test_client().post(
        "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
    )


def outbox(app, polysms) -> list[str]:
    with app.app_context():
        return [m["body"] for m in polysms.outbox]


def messages(app, conversation_id):
    with app.app_context():
        return get_state(app).store.list_messages(conversation_id)


def sweep(app):
    with app.app_context():
        return run_sweep(get_state(app))


@pytest.fixture
def no_grace(monkeypatch):
    """The sweep looks up every waiting message at once (not only those 3 s old)."""
    monkeypatch.setattr(lifecycle, "LOSS_GRACE", timedelta(0))


# -- accepting with Redis down ---------------------------------------------------------------------


def test_outbound_and_inbound_are_accepted_with_redis_down_and_sent_once_it_is_back(
    redis_server, tmp_path, caplog, no_grace
):
    app, polysms = make_app(
        redis_server,
        tmp_path,
        POLYSMS_RATE_LIMIT="2 per minute",
        POLYSMS_INBOUND_SENDER_LIMIT="1 per minute",
    )
    tenant = provision(app, numbers=(AGENT,))
    chat = send(app, tenant, USERS[0], "hello").get_json()
    assert inbound(app, tenant, USERS[0], "hi", "SM" + "1" * 32).status_code == 200
    work(app)
    assert outbox(app, polysms) == ["hello", "echo: hi"]

    redis_server.stop()  # the limits' counts and every job with it
    with caplog.at_level(logging.WARNING):
        answers = [send(app, tenant, USERS[i % 3], f"down #{i}") for i in range(4)]
        # The user's second message in the minute: over its limit, but nothing can count it.
        reply = inbound(app, tenant, USERS[0], "are you there?", "SM" + "2" * 32)
    # Accepted: the limits failed open (4 sends over a limit of 2 per minute, 2 inbound over
    # 1 per minute), the rows are written, the jobs wait for Redis.
    assert [a.status_code for a in answers] == [202] * 4, [a.get_json() for a in answers]
    assert reply.status_code == 200
    conversations = [chat["conversation_id"], *(a.get_json()["conversation_id"] for a in answers)]
    rows = [m for c in conversations for m in messages(app, c)]
    assert [m.status for m in rows if m.body.startswith("down")] == ["queued"] * 4
    # The user's message joined the newest session with that user (the one opened just now).
    [user_message] = [m for m in rows if m.body == "are you there?"]
    assert user_message.status == "received"
    for what in ("rate limit not counted", "request budget not counted", "inbound limit not"):
        assert sum(what in r.getMessage() for r in caplog.records) == 1, what  # once, not per call
    assert "not enqueued (the sweep recovers it)" in caplog.text

    redis_server.start()  # empty
    report = sweep(app)
    assert (report.sends_enqueued, report.turns_enqueued, report.broker_reachable) == (4, 1, True)
    work(app)
    sent = outbox(app, polysms)
    assert sorted(sent) == sorted(
        ["hello", "echo: hi", *(f"down #{i}" for i in range(4)), "echo: are you there?"]
    )
    assert sweep(app).recovered == 0  # nothing left, nothing sent twice
    work(app)
    assert len(outbox(app, polysms)) == len(sent)


def test_the_limits_count_again_once_their_redis_is_back(redis_server, tmp_path, caplog):
    app, _ = make_app(redis_server, tmp_path, POLYSMS_RATE_LIMIT="1 per minute")
    tenant = provision(app, numbers=(AGENT,))
    redis_server.stop()
    assert [send(app, tenant, USERS[0], f"#{i}").status_code for i in range(3)] == [202] * 3
    redis_server.start()
    with caplog.at_level(logging.INFO, logger="flask_polysms.rate_limits"):
        assert send(app, tenant, USERS[0], "first counted").status_code == 202
    assert "rate limit counted again" in caplog.text
    limited = send(app, tenant, USERS[0], "over the limit")
    assert limited.status_code == 429 and "Retry-After" in limited.headers


def test_a_sweep_with_redis_down_fires_timers_and_says_it_enqueued_nothing(
    redis_server, tmp_path, no_grace
):
    app, polysms = make_app(redis_server, tmp_path, POLYSMS_IDLE_TIMEOUT=0.5)
    tenant = provision(app, numbers=(AGENT,))
    chat = send(app, tenant, USERS[0], "hello").get_json()
    work(app)
    redis_server.stop()
    time.sleep(0.6)
    report = sweep(app)
    assert report.broker_reachable is False
    assert report.timers_fired == 1 and report.recovered == 0
    assert "Redis unreachable" in report.lines()[-1]
    redis_server.start()
    assert sweep(app).sends_enqueued == 0  # the unengaged close sends nothing
    with app.app_context():
        assert get_state(app).store.get_session(chat["conversation_id"]).state == "closed"
    assert outbox(app, polysms) == ["hello"]


# -- opted out when accepted: suppressed at once, never sent -------------------------------------


def test_a_greeting_accepted_for_an_opted_out_user_is_never_sent_whatever_follows(
    redis_server, tmp_path, no_grace
):
    app, polysms = make_app(redis_server, tmp_path)
    tenant = provision(app, numbers=(AGENT,))
    assert inbound(app, tenant, USERS[0], "STOP", "SM" + "3" * 32).status_code == 200
    work(app)
    redis_server.stop()  # and its job could not even be enqueued
    response = send(app, tenant, USERS[0], "we miss you")
    assert response.status_code == 202
    assert response.get_json()["status"] == "suppressed"
    [greeting] = messages(app, response.get_json()["conversation_id"])
    assert (greeting.status, greeting.drop_reason) == ("suppressed", "opted_out")
    redis_server.start()

    # The user opts back in; then every path that could send it runs.
    assert inbound(app, tenant, USERS[0], "START", "SM" + "4" * 32).status_code == 200
    report = sweep(app)
    work(app)
    with app.app_context():
        state = get_state(app)
        # A send job run anyway (a duplicate, an old job) finds nothing to claim.
        state.scheduler.requeue("send", greeting.id, job_id=send_job_id(greeting.id, 0))
    work(app)
    with app.app_context():
        # ...and the last resort, long after.
        later = utcnow() + timedelta(hours=1)
        assert state.store.stuck_messages(later, limit=1000) == []
    assert report.sends_enqueued == 0
    assert "we miss you" not in outbox(app, polysms)
    assert outbox(app, polysms)[-1].startswith("You have been resubscribed")
    [greeting] = [m for m in messages(app, greeting.session_id) if m.kind == "greeting"]
    assert (greeting.status, greeting.attempts) == ("suppressed", 0)
    response = app.test_client().get("/v1/sms/metrics", headers=tenant.headers)
    assert response.get_json()["suppressed"] == 1


def test_a_greeting_whose_recipient_opts_out_before_it_is_sent_is_suppressed_for_good(
    redis_server, tmp_path, no_grace
):
    app, polysms = make_app(redis_server, tmp_path)
    tenant = provision(app, numbers=(AGENT,))
    redis_server.stop()
    response = send(app, tenant, USERS[1], "big news")  # queued, its job lost with Redis
    assert response.status_code == 202
    assert inbound(app, tenant, USERS[1], "STOP", "SM" + "5" * 32).status_code == 200
    redis_server.start()
    sweep(app)
    work(app)  # checked at send time: suppressed
    [greeting] = [
        m for m in messages(app, response.get_json()["conversation_id"]) if m.kind == "greeting"
    ]
    assert (greeting.status, greeting.drop_reason) == ("suppressed", "opted_out")
    assert inbound(app, tenant, USERS[1], "START", "SM" + "6" * 32).status_code == 200
    sweep(app)
    work(app)
    assert "big news" not in outbox(app, polysms)


# -- what the sweep asks Redis ---------------------------------------------------------------------


@pytest.fixture
def rq_app(redis_server, tmp_path):
    app, polysms = make_app(redis_server, tmp_path)
    tenant = provision(app, numbers=(AGENT,))
    return app, polysms, tenant, get_state(app).scheduler


def _job(scheduler, job_id, status, worker=""):
    """A job hash as RQ leaves it (status and worker)."""
    scheduler.connection.hset(
        Job.key_for(job_id), mapping={"status": status, "worker_name": worker}
    )


def test_check_jobs_tells_waiting_running_lost_and_unsure_jobs_apart(rq_app):
    _, _, _, scheduler = rq_app
    connection = scheduler.connection
    keys = scheduler.keys
    scheduler.beat("alive", ["reported-without-hash"])
    connection.zadd(keys.workers, {"dead": time.time() - ALIVE_TTL - 1})
    connection.set(keys.since, time.time() - ALIVE_TTL - 1)  # every live worker has reported
    connection.hset("rq:worker:not-ours", "state", "busy")
    _job(scheduler, "queued", "queued")
    _job(scheduler, "scheduled", "scheduled")
    _job(scheduler, "on-alive", "started", "alive")
    _job(scheduler, "on-dead", "started", "dead")
    _job(scheduler, "on-not-ours", "started", "not-ours")
    _job(scheduler, "on-forgotten", "started", "gone-from-rq")
    _job(scheduler, "failed", "failed")
    _job(scheduler, "finished", "finished")

    verdicts = scheduler.check_jobs(
        [
            "queued",
            "scheduled",
            "on-alive",
            "reported-without-hash",
            "on-dead",
            "on-not-ours",
            "on-forgotten",
            "failed",
            "finished",
            "never-enqueued",
        ]
    )
    assert verdicts == {
        "queued": PENDING,
        "scheduled": PENDING,
        "on-alive": RUNNING,
        "reported-without-hash": RUNNING,  # Redis lost its keys while the worker ran it
        "on-dead": LOST,
        "on-not-ours": UNSURE,
        "on-forgotten": LOST,
        "failed": LOST,
        "finished": LOST,
        "never-enqueued": LOST,
    }
    connection.set(keys.since, time.time())  # Redis lost its keys moments ago
    assert scheduler.check_jobs(["never-enqueued"]) == {"never-enqueued": MISSING}


def test_the_sweep_enqueues_at_once_what_redis_lost_and_leaves_running_work_alone(rq_app, no_grace):
    app, polysms, tenant, scheduler = rq_app
    connection = scheduler.connection
    waiting = send(app, tenant, USERS[0], "waiting").get_json()
    running = send(app, tenant, USERS[1], "running").get_json()
    dead = send(app, tenant, USERS[2], "on a dead worker").get_json()
    [waiting_m] = messages(app, waiting["conversation_id"])
    [running_m] = messages(app, running["conversation_id"])
    [dead_m] = messages(app, dead["conversation_id"])
    assert sweep(app).recovered == 0  # every job is in Redis: nothing to do
    with app.app_context():
        store = get_state(app).store
        for message in (running_m, dead_m):  # claimed by a worker: attempt 1
            store.claim_send(message.id, utcnow())
    connection.flushdb()  # every job gone
    scheduler.beat("alive", [send_job_id(running_m.id, 0)])
    connection.set(scheduler.keys.since, time.time() - ALIVE_TTL - 1)
    _job(scheduler, send_job_id(dead_m.id, 0), "started", "dead")
    connection.zadd(scheduler.keys.workers, {"dead": time.time() - ALIVE_TTL - 1})

    report = sweep(app)
    # POLYSMS_STUCK_AFTER (5 min) has not passed: found by asking Redis.
    assert (report.sends_enqueued, report.sends_requeued, report.stuck_requeued) == (1, 1, 0)
    assert not Job.exists(send_job_id(dead_m.id, 0), connection=connection)  # discarded
    with app.app_context():
        assert store.get_message(running_m.id).status == "sending"  # its worker is on it
        assert store.get_message(dead_m.id).status == "queued"
    assert connection.lrange(scheduler.queue.key, 0, -1) == [
        send_job_id(waiting_m.id, 0).encode(),
        send_job_id(dead_m.id, 1).encode(),
    ]
    work(app)
    assert sorted(outbox(app, polysms)) == ["on a dead worker", "waiting"]
    with app.app_context():
        assert store.get_message(dead_m.id).attempts == 2


def test_a_lost_agent_turn_runs_again_once(rq_app, no_grace):
    app, polysms, tenant, scheduler = rq_app
    chat = send(app, tenant, USERS[0], "hello").get_json()
    work(app)
    assert inbound(app, tenant, USERS[0], "hi", "SM" + "7" * 32).status_code == 200
    [turn] = [m for m in messages(app, chat["conversation_id"]) if m.kind == "user"]
    _job(scheduler, agent_job_id(turn.id), "started", "dead")
    scheduler.connection.zadd(scheduler.keys.workers, {"dead": time.time() - ALIVE_TTL - 1})
    with app.app_context():  # the dead worker had claimed it
        get_state(app).store.update_message(
            turn.id, expected_status="received", status="processing"
        )
    report = sweep(app)
    assert report.turns_rerun == 1
    work(app)
    assert outbox(app, polysms) == ["hello", "echo: hi"]
    assert sweep(app).recovered == 0


def test_a_lost_retry_is_scheduled_again_for_its_own_time(rq_app, no_grace):
    app, polysms, tenant, scheduler = rq_app
    chat = send(app, tenant, USERS[0], "retry me").get_json()
    [message] = messages(app, chat["conversation_id"])
    now = utcnow()
    with app.app_context():
        store = get_state(app).store
        store.claim_send(message.id, now)
        store.update_message(message.id, status="queued", last_error_at=now, updated_at=now)
    scheduler.connection.flushdb()  # its retry job (send-<id>-1) gone
    assert sweep(app).sends_enqueued == 1
    registry_ids = [
        job_id.decode()
        for job_id in scheduler.connection.zrange(f"rq:scheduled:{scheduler.queue.name}", 0, -1)
    ]
    assert registry_ids == [send_job_id(message.id, 1)]  # at its backoff's end, not now
    assert sweep(app).sends_enqueued == 0  # waiting in Redis again


def test_due_timed_jobs_are_moved_when_no_rq_scheduler_runs(rq_app):
    from rq.scheduler import RQScheduler as RQOwnScheduler

    app, _, _, scheduler = rq_app
    past = utcnow() - timedelta(seconds=5)
    with app.app_context():
        scheduler.enqueue_at(past, "wake", job_id="wake-1")
        scheduler.enqueue_at(utcnow() + timedelta(hours=1), "wake", job_id="wake-2")
    lock = RQOwnScheduler.get_locking_key(scheduler.queue.name)
    scheduler.connection.set(lock, "someone")
    assert scheduler.move_due_jobs() == 0  # an RQ scheduler runs: its work
    scheduler.connection.delete(lock)
    assert scheduler.move_due_jobs() == 1
    assert scheduler.queue.job_ids == ["wake-1"]
    assert sweep(app).scheduled_moved == 0


def test_due_timed_jobs_of_each_lane_are_moved_to_their_own_queue(rq_app):
    from rq.scheduler import RQScheduler as RQOwnScheduler

    app, _, _, scheduler = rq_app
    deliveries = scheduler.queues["deliveries"]
    past = utcnow() - timedelta(seconds=5)
    with app.app_context():
        scheduler.enqueue_at(past, "wake", job_id="wake-1")
        scheduler.enqueue_at(past, "deliver", job_id="deliver-1", lane="deliveries")
    # An RQ scheduler holds the main queue only (its workers take no deliveries): the keeper
    # moves the deliveries lane's due job, and leaves the main one to it.
    main_lock = RQOwnScheduler.get_locking_key(scheduler.queue.name)
    scheduler.connection.set(main_lock, "someone")
    assert scheduler.move_due_jobs() == 1
    assert (scheduler.queue.job_ids, deliveries.job_ids) == ([], ["deliver-1"])
    scheduler.connection.delete(main_lock)
    scheduler.connection.delete(scheduler.keys.moving)  # the keepers' short lock, as if expired
    assert scheduler.move_due_jobs() == 1
    assert scheduler.queue.job_ids == ["wake-1"]


def test_the_sweep_command_says_what_it_did(rq_app, redis_server, no_grace):
    app, _, tenant, scheduler = rq_app
    send(app, tenant, USERS[0], "lost")
    scheduler.connection.flushdb()
    result = app.test_cli_runner().invoke(args=["polysms", "sweep"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "0 timers fired",
        "0 scheduled messages released",
        "1 sends enqueued (queued, their job not in Redis)",
        "0 sends re-queued (their worker died or their job was lost)",
        "0 inbound turns enqueued (their agent job not in Redis)",
        "0 inbound turns re-run (their worker died or their job was lost)",
        "0 messages re-queued after POLYSMS_STUCK_AFTER (last resort)",
        "0 due timed jobs moved to the queue (no RQ scheduler held its lock)",
    ]
    redis_server.stop()
    result = app.test_cli_runner().invoke(args=["polysms", "sweep"])
    assert result.exit_code == 1  # cron (or whatever watches it) hears of it
    assert result.output.splitlines()[-1].startswith("Redis unreachable")


# -- the keeper beside every worker ----------------------------------------------------------------


def test_the_keeper_reports_its_worker_and_asks_for_one_sweep_per_interval(rq_app):
    app, _, _, scheduler = rq_app
    queue = scheduler.queue
    worker = worker_class()([queue], connection=queue.connection, serializer=queue.serializer)
    keepers = [keep_worker(scheduler, worker, burst=False)]
    try:
        wait = time.monotonic() + 10
        while scheduler.connection.zscore(scheduler.keys.workers, worker.name) is None:
            assert time.monotonic() < wait, "the keeper never reported"
            time.sleep(0.05)
        # A second keeper (another worker) asks too: one sweep waits, not two.
        other = worker_class()([queue], connection=queue.connection, serializer=queue.serializer)
        keepers.append(keep_worker(scheduler, other, burst=False))
        time.sleep(2.5)
        assert queue.job_ids == [SWEEP_JOB_ID]
        assert worker.max_connection_wait_time <= 5
    finally:
        for keeper in keepers:
            keeper.stop()
    assert not any(keeper.is_alive() for keeper in keepers)
    assert scheduler.connection.zcard(scheduler.keys.workers) == 0  # they left cleanly
    work(app)  # the sweep job runs like any other
    assert queue.count == 0
