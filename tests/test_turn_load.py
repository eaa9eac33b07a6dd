"""Concurrency in a conversation under load: 20 users send 10 messages each, all
users at once, through the signed inbound webhook. On PostgreSQL and MariaDB the agent turns run
in four `flask polysms worker` processes; on the memory store and SQLite in four threads of this
process. Checked: one session per user, turns of one conversation never overlap, every user's
messages reach the agent in the order sent, no state lost (the agent's counter ends at 10), and
turns of different conversations do overlap (the test can see a race)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.jobs import run_job_in_app
from flask_polysms.ports.schedulers import Scheduler
from flask_polysms.testing import provision, sign_twilio_request

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from turns_app import record_turn  # noqa: E402

AGENT = "+14155552671"
USERS = [f"+1415555{3000 + i:04d}" for i in range(20)]
MESSAGES = 10
WORKERS = 4
ENCRYPTION_KEY = "dMNOlYNhCuKwH-ZYn7106kPfZ9WPjhBc5U2KtgI0sXw="


def load_config(**config: Any) -> dict[str, Any]:
    return {
        "SECRET_KEY": "test",
        "POLYSMS_PUBLIC_URL": "http://localhost",
        "POLYSMS_ENCRYPTION_KEYS": [ENCRYPTION_KEY],
        "POLYSMS_GATEWAY": "outbox",
        # 200 messages in seconds from one project: the abuse limits would drop them.
        "POLYSMS_INBOUND_SENDER_LIMIT": "1000 per minute",
        "POLYSMS_INBOUND_PROJECT_LIMIT": "100000 per minute",
        **config,
    }


def send_everything(app: Flask, tenant) -> float:
    """Each user's messages in order, one thread per user, all users at once; the start time."""
    barrier = threading.Barrier(len(USERS))
    errors: list[BaseException] = []

    def user_thread(u: int) -> None:
        client = app.test_client()
        try:
            barrier.wait(timeout=30)
            for k in range(MESSAGES):
                params = {
                    "MessageSid": f"SM{u:016x}{k:016x}",
                    "From": USERS[u],
                    "To": AGENT,
                    "Body": f"u{u}:{k}",
                }
                signature = sign_twilio_request(
                    "http://localhost/v1/twilio/sms", params, tenant.twilio_auth_token
                )
                response = client.post(
                    "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
                )
                assert response.status_code == 200, response.get_data(as_text=True)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=user_thread, args=(u,)) for u in range(len(USERS))]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a sender hung"
    if errors:
        raise errors[0]
    return started


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end at the moment of a start does not count)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    open_now = most = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


def check(app: Flask, tenant, turns: list[dict], started: float) -> dict[str, Any]:
    """Assert the rules on the recorded turns and the stored sessions; the figures."""
    state = get_state(app)
    with app.app_context():
        state.store.connect()
        try:
            sessions = {
                user: state.store.list_sessions(tenant.project_id, user_number=user)[0]
                for user in USERS
            }
        finally:
            state.store.close()
    per_conversation: dict[str, list[dict]] = {}
    for turn in turns:
        per_conversation.setdefault(turn["conversation"], []).append(turn)
    for u, user in enumerate(USERS):
        assert len(sessions[user]) == 1, f"{user} has {len(sessions[user])} sessions"
        session = sessions[user][0]
        sent = [f"u{u}:{k}" for k in range(MESSAGES)]
        assert session.data["seen"] == sent  # in order, none lost
        assert session.data["count"] == MESSAGES  # no turn overwrote another's state
        mine = sorted(per_conversation[session.id], key=lambda t: t["start"])
        assert [t["text"] for t in mine] == sent
        assert max_overlap([(t["start"], t["end"]) for t in mine]) == 1
    everything = [(t["start"], t["end"]) for t in turns]
    figures = {
        "wall_s": round(max(e for _, e in everything) - started, 2),
        "turns": len(turns),
        "max_concurrent_per_conversation": max(
            max_overlap([(t["start"], t["end"]) for t in ts]) for ts in per_conversation.values()
        ),
        "max_concurrent_overall": max_overlap(everything),
        "processes": len({t["pid"] for t in turns}),
    }
    assert figures["turns"] == len(USERS) * MESSAGES
    assert figures["max_concurrent_overall"] > 1, "no two turns overlapped: the test proves nothing"
    print(f"\nturn load: {figures}")
    return figures


# -- worker processes on PostgreSQL and MariaDB ----------------------------------------------------
@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request):
    pytest.importorskip("rq")
    fixture = "fresh_postgres_url" if request.param == "postgresql" else "fresh_mysql_url"
    return request.getfixturevalue(fixture)


@pytest.mark.services
@pytest.mark.slow
def test_turns_in_worker_processes_never_overlap_per_conversation(
    server_url, redis_url, redis_conn, unique, tmp_path
):
    queue = f"polysms-turns-{unique}"
    log_key = f"polysms-turns-log-{unique}"
    polysms = PolySMS()
    app = Flask(__name__)
    app.testing = True
    app.config.update(
        load_config(
            POLYSMS_SCHEDULER="rq",
            POLYSMS_REDIS_URL=redis_url,
            POLYSMS_STORAGE_URL=server_url,
            POLYSMS_QUEUE_NAME=queue,
        )
    )
    polysms.init_app(app)
    with app.app_context():
        get_state(app).store.upgrade_schema()
    tenant = provision(app, numbers=(AGENT,))
    env = {
        **os.environ,
        "RQ_TEST_REDIS_URL": redis_url,
        "RQ_TEST_STORAGE_URL": server_url,
        "TURNS_QUEUE": queue,
        "TURNS_LOG_KEY": log_key,
    }
    cmd = [sys.executable, "-m", "flask", "--app", str(HERE / "turns_app.py"), "polysms", "worker"]
    logs = [open(tmp_path / f"worker{i}.log", "wb") for i in range(WORKERS)]  # noqa: SIM115
    workers = [subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    try:
        started = send_everything(app, tenant)
        deadline = time.monotonic() + 180
        while redis_conn.llen(log_key) < len(USERS) * MESSAGES:
            assert time.monotonic() < deadline, "the workers did not answer every message"
            assert all(w.poll() is None for w in workers), "a worker died"
            time.sleep(0.2)
        time.sleep(1)  # a turn too many would show up now
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
    turns = [json.loads(item) for item in redis_conn.lrange(log_key, 0, -1)]
    redis_conn.delete(log_key)
    figures = check(app, tenant, turns, started)
    assert figures["processes"] > 1
    with app.app_context():
        get_state(app).store.disconnect()


# -- threads on the memory store and SQLite --------------------------------------------------------
class PoolScheduler(Scheduler):
    """Runs each job on a pool of threads, as several workers would (timed jobs are kept, not
    run: the test's sessions never come due)."""

    def __init__(self, app: Flask, workers: int) -> None:
        super().__init__(app, run_job_in_app)
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.futures: list = []

    def _enqueue(self, job: str, *args: Any, job_id: str | None = None, lane: str = "") -> None:
        self.futures.append(self.pool.submit(self._run, job, args))

    def _enqueue_at(self, when, job: str, *args: Any, job_id: str | None = None, lane: str = ""):
        pass


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_turns_in_threads_never_overlap_per_conversation(backend, tmp_path):
    storage = "memory://" if backend == "memory" else f"sqlite:///{tmp_path / 'load.db'}"
    turns: list[dict] = []
    lock = threading.Lock()

    def push(turn: dict) -> None:
        with lock:
            turns.append(turn)

    polysms = PolySMS()
    polysms.agent(lambda conv, text: record_turn(conv, text, push))
    app = Flask(__name__)
    app.testing = True
    app.config.update(load_config(POLYSMS_STORAGE_URL=storage))
    polysms.init_app(app)
    tenant = provision(app, numbers=(AGENT,))
    scheduler = PoolScheduler(app, WORKERS)
    get_state(app).scheduler = scheduler
    try:
        started = send_everything(app, tenant)
        deadline = time.monotonic() + 120
        while not all(f.done() for f in list(scheduler.futures)):
            assert time.monotonic() < deadline, "the jobs did not finish"
            time.sleep(0.05)
        for future in scheduler.futures:
            future.result()  # a job that raised fails the test
    finally:
        scheduler.pool.shutdown(wait=True)
    check(app, tenant, turns, started)
