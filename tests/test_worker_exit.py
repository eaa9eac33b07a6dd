"""`flask polysms worker` exits in bounded time, under load too, and its scheduler process never
outlives it.

RQ stops its PubSub listener at exit; with redis-py 8.2 that waits for the listener thread with no
timeout, and a listener that read the UNSUBSCRIBE confirmation first then waits RQ's whole poll
(60 s in rq 3.0, for ever in rq 2.x). Under CPU load about one exit in ten hit it.

The worker processes run this module's :func:`create_worker_app`
(``flask --app tests/test_worker_exit.py:create_worker_app``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.clock import utcnow

# RQ's and redis-py's exits differ from version to version: run at the floors too (.ci/run).
pytestmark = [pytest.mark.services, pytest.mark.versions]

QUEUE = "polysms-exit-test"
REDIS_URL_VARIABLE = "POLYSMS_WORKER_EXIT_REDIS_URL"
#: Seconds from "queue empty" to the process's end that count as a bounded exit; the hang this
#: guards against lasted 60 s (or for ever).
EXIT_WITHIN = 10.0


def create_worker_app() -> Flask:
    """The app of the worker processes: RQ on the test Redis, an in-memory store per process."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY="test",
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="rq",
        POLYSMS_REDIS_URL=os.environ[REDIS_URL_VARIABLE],
        POLYSMS_STORAGE_URL="memory://",
        POLYSMS_QUEUE_NAME=QUEUE,
    )
    PolySMS(app)
    return app


@pytest.fixture
def cpu_load():
    """Every core kept busy by a spinning process while the test runs."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    yield
    for spinner in spinners:
        spinner.terminate()
    for spinner in spinners:
        spinner.wait(timeout=30)


@pytest.fixture
def worker_app(redis_url, redis_conn, monkeypatch):
    monkeypatch.setenv(REDIS_URL_VARIABLE, redis_url)
    return create_worker_app()


class WorkerProcess:
    """A `flask polysms worker` process; its output is read as it comes, with the time each line
    arrived."""

    def __init__(self, *args: str) -> None:
        command = [
            sys.executable,
            "-m",
            "flask",
            "--app",
            f"{Path(__file__)}:create_worker_app",
            "polysms",
            "worker",
            *args,
        ]
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.ended_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line))
        self.process.wait()
        self.ended_at = time.monotonic()

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def first(self, text: str) -> float | None:
        """When the first line containing ``text`` arrived."""
        return next((at for at, line in self.lines if text in line), None)

    def wait_for(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while (at := self.first(text)) is None:
            assert self.process.poll() is None, f"ended before {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.output}"
            time.sleep(0.05)
        return at

    def join(self, timeout: float) -> bool:
        """Wait for the process and its output; True when both ended in time."""
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def stop(self) -> None:
        """Kill it (test cleanup only) and release its pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        self.process.stdout.close()


def scheduler_child(worker: WorkerProcess, timeout: float = 60) -> int:
    """The pid of the worker's one child process: RQ's scheduler (Linux /proc)."""
    pid = worker.process.pid
    deadline = time.monotonic() + timeout
    while True:
        children = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += (task / "children").read_text().split()
        if children:
            assert len(children) == 1, children
            return int(children[0])
        assert worker.process.poll() is None, worker.output
        assert time.monotonic() < deadline, f"no scheduler process in {timeout} s"
        time.sleep(0.1)


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (an orphan's zombie may stay unreaped
    when this runs as a container's init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def scheduler_lock_holder(redis_conn) -> bytes | None:
    from rq.scheduler import RQScheduler

    return redis_conn.get(RQScheduler.get_locking_key(QUEUE))


@pytest.mark.slow
@pytest.mark.parametrize("worker_kind", ["--simple", "--fork"])
def test_burst_workers_under_load_exit_within_seconds_of_finishing(
    worker_app, cpu_load, worker_kind
):
    """Rounds of six burst workers at once, a queue of jobs each round, every core busy: each
    process ends within seconds of logging that the queue is empty, and no job is left."""
    from rq.registry import FailedJobRegistry

    scheduler = get_state(worker_app).scheduler
    queue = scheduler.queue
    for _ in range(2):
        for _ in range(30):
            scheduler.enqueue("sweep")
        # Due already: a burst worker's scheduler moves them to the queue before it works.
        scheduler.enqueue_at(
            utcnow() - timedelta(seconds=1), "sweep", job_id=f"exit-{time.time_ns()}"
        )
        workers = [WorkerProcess(worker_kind, "--burst") for _ in range(6)]
        try:
            for worker in workers:
                assert worker.join(timeout=180), f"still running after 180 s:\n{worker.output}"
            for worker in workers:
                assert worker.process.returncode == 0, worker.output
                done = worker.first("done, quitting")
                assert done is not None, worker.output
                took = worker.ended_at - done
                assert took < EXIT_WITHIN, f"ended {took:.1f} s after its queue:\n{worker.output}"
        finally:
            for worker in workers:
                worker.stop()
        assert queue.count == 0
        assert FailedJobRegistry(queue=queue).count == 0


@pytest.mark.slow
def test_many_burst_exits_in_a_row_stay_bounded(worker_app, cpu_load):
    """The worker class itself, in this process: two hundred bursts of one job under load, none
    of whose exits takes seconds (RQ's own class hung in about one exit in ten here)."""
    from flask_polysms.jobs import set_worker_app
    from flask_polysms.ports.schedulers import worker_class

    scheduler = get_state(worker_app).scheduler
    queue = scheduler.queue
    set_worker_app(worker_app)
    slowest = 0.0
    try:
        for _ in range(200):
            scheduler.enqueue("sweep")
            worker = worker_class()(
                [queue], connection=queue.connection, serializer=queue.serializer
            )
            started = time.monotonic()
            worker.work(burst=True, with_scheduler=True)
            slowest = max(slowest, time.monotonic() - started)
    finally:
        set_worker_app(None)
    assert queue.count == 0
    assert slowest < EXIT_WITHIN / 2, f"one burst took {slowest:.1f} s"


@pytest.mark.slow
def test_sigterm_stops_the_worker_and_its_scheduler_within_seconds(worker_app, redis_conn):
    worker = WorkerProcess()
    try:
        scheduler = scheduler_child(worker)
        worker.wait_for("Scheduler for", timeout=60)
        assert scheduler_lock_holder(redis_conn) is not None
        stopping = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        assert worker.join(timeout=60), worker.output
        assert worker.ended_at - stopping < EXIT_WITHIN, worker.output
        assert worker.process.returncode == 0, worker.output
        assert not running(scheduler)
        assert scheduler_lock_holder(redis_conn) is None  # released: another may take over
    finally:
        worker.stop()


@pytest.mark.slow
def test_scheduler_process_stops_when_its_worker_is_killed(worker_app, redis_conn):
    """A worker killed without a teardown (SIGKILL, the OOM killer): its scheduler process stops
    by itself and releases the scheduler lock, instead of running on as an orphan."""
    worker = WorkerProcess()
    scheduler = None
    try:
        scheduler = scheduler_child(worker)
        worker.wait_for("Scheduler for", timeout=60)
        assert scheduler_lock_holder(redis_conn) is not None
        worker.process.kill()
        deadline = time.monotonic() + 3 * EXIT_WITHIN
        while running(scheduler) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(scheduler), "the scheduler process outlived its worker"
        assert scheduler_lock_holder(redis_conn) is None
    finally:
        if scheduler is not None and running(scheduler):
            os.kill(scheduler, signal.SIGKILL)  # the orphan this test is about; ours to end
        worker.stop()  # after the orphan, which holds the worker's output pipe open
