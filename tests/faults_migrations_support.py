"""Helpers shared by the fault tests and the schema migration tests.

Fault tests (``test_faults.py``, ``test_redis_faults.py``, ``test_database_faults.py``):
:class:`Rig` (an app, its RQ worker processes and the Twilio emulator), :class:`PrivateRedis` (a
``redis-server`` of the test's own), the fixtures ``private_redis`` and ``make_rig``, and the
numbers and limits the tests share.

Migration tests (``test_migrations.py``, ``test_data_migrations.py``, ``test_schema_versions.py``,
``test_migration_packaging.py``): the ``empty_url`` fixture (an empty database of each dialect),
the migration scripts this version ships, and helpers making a store, an app and CLI calls.

A test module imports the fixtures it uses by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playhouse.migrations import Migration

from flask_polysms import PolySMS, backends
from flask_polysms.backends.peewee_migrations import DIRECTORY
from flask_polysms.clock import utcnow
from flask_polysms.ports.store import migration_number
from flask_polysms.services.lifecycle import sweep
from flask_polysms.services.state import get_state
from flask_polysms.testing import TwilioEmulator, provision, sign_twilio_request

# == faults =======================================================================================
HERE = Path(__file__).parent
FAULT_APP = HERE / "fault_app.py"
CONFIG_ENV = "POLYSMS_FAULT_CONFIG"
TIMEOUT_LOG_ENV = "POLYSMS_FAULT_TIMEOUT_LOG"

ACCOUNT_SID = "AC" + "fa" * 16
AUTH_TOKEN = "fault-auth-token-0123456789abcdef"
AGENTS = ("+14155552671", "+14155552672")
USERS = tuple(f"+141555526{i:02d}" for i in range(20))
FINAL = frozenset({"delivered", "undelivered", "failed"})
#: Seconds from a fault to everything it hit being done again (the recovery promise is 30 s).
RECOVERY_TARGET = 30.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float, on_fail=None) -> Any:
    """Poll ``condition`` until it returns a true value; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = on_fail() if on_fail else ""
            pytest.fail(f"{what}: not reached within {timeout} s\n{detail}")
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (RQ's scheduler is forked by the worker)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class Rig:
    """One app (the web side, in this process), its RQ worker processes and the emulator."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], emulator: TwilioEmulator) -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.emulator = emulator
        self.polysms = PolySMS()

        @self.polysms.agent
        def answer(conv, text):
            return f"echo: {text}"

        self.app = Flask(f"polysms_faults_{uuid.uuid4().hex[:6]}")
        self.app.config.update(config)
        self.polysms.init_app(self.app)
        with self.app.app_context():
            self.state.store.create_schema()
        self.tenant = provision(
            self.app, numbers=AGENTS, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN
        )
        self.client = self.app.test_client()
        self.workers: list[subprocess.Popen] = []
        self._worker_children: set[int] = set()
        self._replaced: set[int] = set()
        self.timeout_log = tmp_path / "timeouts"
        self.timeout_log.mkdir()
        self._local = threading.local()
        self.redis: PrivateRedis | None = None  # set by make_rig

    @property
    def state(self):
        return get_state(self.app)

    # -- worker processes -------------------------------------------------------------------------
    def start_workers(self, count: int, *, burst: bool = False) -> list[subprocess.Popen]:
        env = {
            **os.environ,
            CONFIG_ENV: json.dumps(self.config),
            TIMEOUT_LOG_ENV: str(self.timeout_log),
        }
        command = [sys.executable, "-m", "flask", "--app", str(FAULT_APP), "polysms", "worker"]
        if burst:
            command.append("--burst")
        started = []
        for _ in range(count):
            path = self.tmp_path / f"worker-{len(self.workers)}.log"
            with path.open("wb") as log:  # a file, not a pipe: a full pipe would block the worker
                process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.workers.append(process)
            started.append(process)
        return started

    def replace_dead_workers(self) -> None:
        """What a process supervisor does: start a new worker for each that exited."""
        for worker in list(self.workers):
            if worker.poll() is None or self._is_burst(worker) or worker.pid in self._replaced:
                continue
            self._replaced.add(worker.pid)
            self.start_workers(1)

    @staticmethod
    def _is_burst(process: subprocess.Popen) -> bool:
        return "--burst" in process.args

    def stop_workers(self) -> None:
        """Warm shutdown (SIGTERM) of every worker still running, SIGKILL if it hangs; the
        workers' forked schedulers too. Only processes this rig started are signalled."""
        for process in self.workers:
            if process.poll() is None:
                self._worker_children.update(_children(process.pid))
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in self._worker_children:
            if _alive(pid) and "polysms" in Path(f"/proc/{pid}/cmdline").read_text(errors="ignore"):
                os.kill(pid, signal.SIGKILL)

    def worker_logs(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.tmp_path.glob("worker-*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def unknown_outcomes(self) -> Counter:
        """Bodies of the sends that ended without Twilio's answer, with how often."""
        found: Counter = Counter()
        for path in self.timeout_log.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                found[json.loads(line)["body"]] += 1
        return found

    # -- the API and Twilio's side ---------------------------------------------------------------
    def _thread_client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.app.test_client()
        return client

    def send(self, user: str, body: str):
        """POST /v1/outbound-sms (thread-safe: a test client per thread)."""
        return self._thread_client().post(
            "/v1/outbound-sms",
            json={"user_number": user, "message": body},
            headers=self.tenant.headers,
        )

    def reply(self, user: str, agent: str, body: str):
        """The user's SMS to ``agent``, posted to the webhook as Twilio signs it."""
        params = {
            "MessageSid": f"SM{uuid.uuid4().hex}",
            "AccountSid": ACCOUNT_SID,
            "From": user,
            "To": agent,
            "Body": body,
        }
        url = self.config["POLYSMS_PUBLIC_URL"] + "/v1/twilio/sms"
        signature = sign_twilio_request(url, params, AUTH_TOKEN)
        return self.client.post(
            "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
        )

    def pending(self) -> list:
        """Outbound messages still ``queued`` or ``sending`` (one query)."""
        with self.app.app_context():
            return self.state.store.stuck_messages(utcnow() + timedelta(days=1), limit=100_000)

    def run_sweep(self) -> int:
        with self.app.app_context():
            return sweep(self.state)

    def conversations(self) -> list[dict]:
        """Every conversation of the tenant, with its messages, through the public API."""
        found: list[dict] = []
        cursor = None
        while True:
            query = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            response = self.client.get(
                "/v1/conversations", query_string=query, headers=self.tenant.headers
            )
            assert response.status_code == 200, response.get_json()
            page = response.get_json()
            found.extend(page["conversations"])
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    def metrics(self) -> dict:
        response = self.client.get("/v1/sms/metrics", headers=self.tenant.headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free port: stopped, it refuses connections; started
    again, on the same port, it is empty, as a restarted Redis without persistence is."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
        ]
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.answers, f"Redis answering on port {self.port}", 30)

    def stop(self) -> None:
        """Stop it as a crash or a restart does: no save, every key gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        wait_for(lambda: not self.answers(), "Redis stopped", 30)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1


@contextmanager
def private_redis_server(directory: Path) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis` keeping its files in ``directory``, stopped after; skips
    the test (fails it under CI=true) without ``redis-server``."""
    if shutil.which("redis-server") is None:
        reason = "redis-server is needed to run a Redis of the test's own"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI=true requires it")
        pytest.skip(reason)
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="private_redis")
def private_redis_fixture(tmp_path) -> Iterator[PrivateRedis]:
    """A Redis server of this test's own (the machine's Redis is never stopped or flushed)."""
    with private_redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture(name="make_rig")
def make_rig_fixture(
    tmp_path, fresh_postgres_url, private_redis, unique
) -> Iterator[Callable[..., Rig]]:
    """``make_rig(emulator={...}, **config)``: a Rig on a fresh database and a Redis server of
    its own (``rig.redis``); torn down after."""
    rigs: list[Rig] = []
    emulators: list[TwilioEmulator] = []

    def make(*, emulator: dict | None = None, **config: Any) -> Rig:
        twilio = TwilioEmulator(
            **{"callbacks": "manual", "callback_delay": 0.02, **(emulator or {})}
        )
        twilio.start()
        twilio.add_account(ACCOUNT_SID, AUTH_TOKEN)
        emulators.append(twilio)
        settings = {
            "SECRET_KEY": "fault-tests-secret",
            "POLYSMS_PUBLIC_URL": "http://localhost",
            "POLYSMS_ENCRYPTION_KEYS": ["dMNOlYNhCuKwH-ZYn7106kPfZ9WPjhBc5U2KtgI0sXw="],
            "POLYSMS_STORAGE_URL": fresh_postgres_url,
            "POLYSMS_SCHEDULER": "rq",
            "POLYSMS_REDIS_URL": private_redis.url,
            # The limits count in the same Redis, as in production: they go down with it.
            "POLYSMS_RATE_LIMIT_STORAGE_URL": private_redis.url,
            "POLYSMS_QUEUE_NAME": f"polysms-faults-{unique}",
            "POLYSMS_GATEWAY": "twilio",
            "POLYSMS_TWILIO_BASE_URL": twilio.base_url,
            "POLYSMS_TWILIO_TIMEOUT": 0.5,
            "POLYSMS_RETRY_BASE_DELAY": 0.05,
            "POLYSMS_RATE_LIMIT": "100000 per second",
            "POLYSMS_READ_RATE_LIMIT": "100000 per second",
            **config,
        }
        directory = tmp_path / f"rig{len(rigs)}"
        directory.mkdir()
        rig = Rig(directory, settings, twilio)
        rig.redis = private_redis
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.stop_workers()
    for twilio in emulators:
        twilio.stop()


# == migrations ===================================================================================
#: The scripts this version ships, in order (0001 is 0.1.0's schema).
EVERY_MIGRATION = tuple(migration.name for migration in Migration.load_directory(DIRECTORY))
LATEST = EVERY_MIGRATION[-1]
LATEST_VERSION = f"version {migration_number(LATEST)} ({LATEST})"
SECRET = "the-0.1-secret-key-of-this-deployment"

DIALECTS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mysql", marks=pytest.mark.services),
]


# -- databases ------------------------------------------------------------------------------------
@pytest.fixture(name="empty_url", params=DIALECTS)
def empty_url_fixture(request, tmp_path):
    """An empty database of each dialect, this test's own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'polysms.db'}"
    if request.param == "postgresql":
        return request.getfixturevalue("fresh_postgres_url")
    return request.getfixturevalue("fresh_mysql_url")


def _store(url: str, prefix: str = "polysms_"):
    return backends.create_store(url, table_prefix=prefix)


def _app(url: str, prefix: str = "polysms_") -> Flask:
    app = Flask("migrations")
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        POLYSMS_STORAGE_URL=url,
        POLYSMS_TABLE_PREFIX=prefix,
    )
    PolySMS(app)
    return app


def _cli(app: Flask, *args: str):
    return app.test_cli_runner().invoke(args=["polysms", *args])


def pending(names: tuple[str, ...]) -> str:
    """How `db current` names pending migrations."""
    plural = "s" if len(names) > 1 else ""
    return f"{len(names)} migration{plural} pending: {', '.join(names)}"
