"""The rq scheduler on the real Redis, with real RQ workers (in-process and as processes)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.jobs import set_worker_app
from flask_polysms.testing import provision, sign_twilio_request

pytestmark = pytest.mark.services

AGENT = "+14155552671"
USER = "+14155552672"
HERE = Path(__file__).parent


def make_app(redis_url: str, storage_url: str = "memory://", **config) -> tuple[Flask, PolySMS]:
    polysms = PolySMS()

    @polysms.agent
    def answer(conv, text):
        return f"echo: {text}"

    app = Flask(__name__)
    app.testing = True
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="rq",
        POLYSMS_REDIS_URL=redis_url,
        POLYSMS_STORAGE_URL=storage_url,
        POLYSMS_QUEUE_NAME="polysms-test",
        **config,
    )
    polysms.init_app(app)
    return app, polysms


def work(app: Flask) -> None:
    """One burst of a real RQ worker (with its scheduler) in this process: the worker class of
    `flask polysms worker`, whose exit takes no more than a second or two."""
    from flask_polysms.ports.schedulers import worker_class

    state = get_state(app)
    set_worker_app(app)
    try:
        queue = state.scheduler.queue
        worker_class()([queue], connection=queue.connection, serializer=queue.serializer).work(
            burst=True, with_scheduler=True
        )
    finally:
        set_worker_app(None)


def inbound(app, tenant, body, sid):
    params = {"MessageSid": sid, "From": USER, "To": AGENT, "Body": body}
    signature = sign_twilio_request(
        "http://localhost/v1/twilio/sms", params, tenant.twilio_auth_token
    )
    response = app.test_client().post(
        "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
    )
    assert response.status_code == 200


def outbox(app, polysms):
    with app.app_context():
        return [m["body"] for m in polysms.outbox]


def conversation_state(app, conversation_id):
    with app.app_context():
        return get_state(app).store.get_session(conversation_id)


def start(app, tenant) -> str:
    response = app.test_client().post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "Hi!"}, headers=tenant.headers
    )
    assert response.status_code == 202, response.json
    return response.json["conversation_id"]


def wait_until(deadline_at) -> None:
    """Sleep until the shared wake-up of ``deadline_at`` is due: the next whole second."""
    from flask_polysms.clock import utcnow

    delay = math.ceil(deadline_at.timestamp()) - utcnow().timestamp()
    if delay > 0:
        time.sleep(delay + 0.05)


def test_send_job_waits_in_redis_until_a_worker_runs_it(redis_conn, redis_url):
    app, polysms = make_app(redis_url)
    tenant = provision(app, numbers=(AGENT,))
    response = app.test_client().post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "Hi!"}, headers=tenant.headers
    )
    assert response.status_code == 202
    assert response.json["status"] == "queued"
    assert outbox(app, polysms) == []
    assert get_state(app).scheduler.queue.count == 1
    work(app)
    assert outbox(app, polysms) == ["Hi!"]


def test_agent_and_timers_run_on_the_rq_worker_and_its_scheduler(redis_conn, redis_url):
    app, polysms = make_app(redis_url, POLYSMS_IDLE_TIMEOUT=1.5, POLYSMS_GRACE_PERIOD=1.0)
    tenant = provision(app, numbers=(AGENT,))
    conv = start(app, tenant)
    inbound(app, tenant, "hello", "SM" + "a" * 32)
    work(app)
    assert outbox(app, polysms) == ["Hi!", "echo: hello"]
    # The wake-up job sits in RQ's scheduled registry, not in the queue: the shared one of the
    # second the session's wake-up time falls in. (The reply moved the deadline later without
    # touching Redis; wake_at stays at the first deadline, whose wake-up puts the session back
    # to sleep until the new one. The two fall in different seconds when the reply crossed one.)
    from rq.registry import ScheduledJobRegistry

    queue = get_state(app).scheduler.queue
    scheduled = ScheduledJobRegistry(queue=queue).get_job_ids()
    session = conversation_state(app, conv)
    assert session.wake_at <= session.deadline_at
    assert scheduled == [f"wake-{math.ceil(session.wake_at.timestamp())}"]
    wait_until(conversation_state(app, conv).deadline_at)
    work(app)
    assert conversation_state(app, conv).state == "warned"
    assert outbox(app, polysms)[-1] == get_state(app).settings.warning_message
    wait_until(conversation_state(app, conv).deadline_at)
    work(app)
    s = conversation_state(app, conv)
    assert (s.state, s.end_reason) == ("closed", "inactivity")
    assert outbox(app, polysms)[-1] == "I am going to end conversation now"


def test_sessions_opened_in_one_second_share_one_wake_up_scheduled_once(redis_conn, redis_url):
    from freezegun import freeze_time
    from rq.registry import ScheduledJobRegistry

    app, polysms = make_app(redis_url)
    tenant = provision(app, numbers=(AGENT,))
    client = app.test_client()

    def zadds() -> int:
        return redis_conn.info("commandstats").get("cmdstat_zadd", {}).get("calls", 0)

    with freeze_time("2026-12-01 10:00:00.250"):
        first = start(app, tenant)
        before = zadds()
        for user in ("+14155552673", "+14155552674"):
            response = client.post(
                "/v1/outbound-sms",
                json={"user_number": user, "message": "Hi!"},
                headers=tenant.headers,
            )
            assert response.status_code == 202
        # Two more sessions: their send jobs went to Redis, their wake-up was already there.
        assert zadds() == before
    deadline = conversation_state(app, first).deadline_at
    registry = ScheduledJobRegistry(queue=get_state(app).scheduler.queue)
    assert registry.get_job_ids() == [f"wake-{math.ceil(deadline.timestamp())}"]
    assert get_state(app).scheduler.queue.count == 3  # the three greetings


def test_redis_flush_between_scheduling_and_firing_is_recovered_by_sweep(redis_conn, redis_url):
    app, polysms = make_app(redis_url, POLYSMS_IDLE_TIMEOUT=1.0)
    tenant = provision(app, numbers=(AGENT,))
    conv = start(app, tenant)
    inbound(app, tenant, "hello", "SM" + "b" * 32)
    work(app)
    redis_conn.flushdb()  # every job and timer gone
    wait_until(conversation_state(app, conv).deadline_at)
    work(app)
    assert conversation_state(app, conv).state == "active"  # nothing left in Redis to wake it
    result = app.test_cli_runner().invoke(args=["polysms", "sweep"])
    assert result.exit_code == 0, result.output
    assert "1 timers fired" in result.output
    assert conversation_state(app, conv).state == "warned"
    work(app)  # the warning's send job was enqueued by the sweep
    assert outbox(app, polysms)[-1] == get_state(app).settings.warning_message


def test_worker_command_refuses_without_rq_scheduler():
    app = Flask(__name__)
    app.testing = True
    app.config.update(SECRET_KEY="test")
    PolySMS(app)
    result = app.test_cli_runner().invoke(args=["polysms", "worker", "--burst"])
    assert result.exit_code != 0
    assert "POLYSMS_SCHEDULER" in result.output


def test_two_worker_processes_racing_for_one_timer_make_one_transition(
    redis_conn, redis_url, postgres_url, unique
):
    """Two `flask polysms worker` processes, the same due timer enqueued twice: one warning."""
    storage = postgres_url
    app, polysms = make_app(redis_url, storage_url=storage, POLYSMS_IDLE_TIMEOUT=1.0)
    with app.app_context():
        get_state(app).store.drop_schema()
        get_state(app).store.create_schema()
    tenant = provision(app, numbers=(AGENT,))
    conv = start(app, tenant)
    inbound(app, tenant, "hello", "SM" + "c" * 32)
    work(app)
    wait_until(conversation_state(app, conv).deadline_at)
    # Twice the same wake-up, as duplicate RQ runs would do (rq#1354).
    scheduler = get_state(app).scheduler
    for _ in range(4):
        scheduler.enqueue("timer", conv)
    env = {
        **os.environ,
        "RQ_TEST_REDIS_URL": redis_url,
        "RQ_TEST_STORAGE_URL": storage,
    }
    cmd = [sys.executable, "-m", "flask", "--app", str(HERE / "rq_app.py"), "polysms", "worker"]
    workers = [
        subprocess.Popen(
            [*cmd, "--burst"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            output, _ = worker.communicate(timeout=60)
            assert worker.returncode == 0, output.decode()
    finally:
        for worker in workers:  # after a failure: end the other one too, and read its pipe
            if worker.poll() is None:
                worker.kill()
            worker.communicate()
    with app.app_context():
        messages = get_state(app).store.list_messages(conv)
    assert [m.kind for m in messages].count("warning") == 1
    assert conversation_state(app, conv).state == "warned"
    with app.app_context():
        get_state(app).store.drop_schema()
