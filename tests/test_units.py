"""Units of work (one transaction, jobs after the commit), the compact RQ job format, the one-query
credential lookup and the pooled connections: the paths the benchmarks made faster."""

from __future__ import annotations

import pickle
import zlib
from typing import Any

import pytest
import store_backends as backend_urls
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms import backends as store_backends
from flask_polysms.clock import utcnow
from flask_polysms.crypto import hash_api_key
from flask_polysms.ports.schedulers import RUN_JOB, JobSerializer
from flask_polysms.records import Sender, Session, new_id
from flask_polysms.services.units import unit_of_work


def make_app(storage_url: str) -> Flask:
    app = Flask(__name__)
    app.testing = True
    app.config.update(SECRET_KEY="test", POLYSMS_GATEWAY="outbox", POLYSMS_STORAGE_URL=storage_url)
    PolySMS(app)
    return app


def a_session(**fields: Any) -> Session:
    now = utcnow()
    values = {
        "id": new_id("conv_"),
        "project_id": "prj_units",
        "environment": "live",
        "user_number": "+14155550123",
        "agent_number": "+14155550100",
        "created_at": now,
        "last_activity_at": now,
    }
    values.update(fields)
    return Session(**values)


@pytest.fixture
def sqlite_app(tmp_path) -> Flask:
    return make_app(f"sqlite:///{tmp_path / 'units.db'}")


def test_jobs_wait_for_the_end_of_the_unit(sqlite_app, monkeypatch):
    state = get_state(sqlite_app)
    ran: list[tuple] = []
    monkeypatch.setattr(
        state.scheduler, "_enqueue", lambda job, *args, **_: ran.append((job, args))
    )
    with sqlite_app.app_context():

        def work() -> str:
            session = state.store.create_session(a_session())
            state.scheduler.enqueue("agent", session.id, "msg_1")
            assert ran == []  # held: the row is not committed yet
            return session.id

        session_id = unit_of_work(state, work)
    assert ran == [("agent", (session_id, "msg_1"))]


def test_a_failed_unit_writes_nothing_and_enqueues_nothing(sqlite_app, monkeypatch):
    state = get_state(sqlite_app)
    ran: list[tuple] = []
    monkeypatch.setattr(
        state.scheduler, "_enqueue", lambda job, *args, **_: ran.append((job, args))
    )
    session = a_session()
    with sqlite_app.app_context():

        def work() -> None:
            state.store.create_session(session)
            state.scheduler.enqueue("agent", session.id, "msg_1")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            unit_of_work(state, work)
        assert state.store.get_session(session.id) is None
    assert ran == []


def test_nested_units_hand_over_once_at_the_outermost(sqlite_app, monkeypatch):
    state = get_state(sqlite_app)
    ran: list[str] = []
    monkeypatch.setattr(state.scheduler, "_enqueue", lambda job, *args, **_: ran.append(args[0]))
    with sqlite_app.app_context():

        def inner(n: int) -> None:
            state.scheduler.enqueue("send", f"msg_{n}")

        def outer() -> None:
            for n in range(3):
                unit_of_work(state, lambda n=n: inner(n))
            assert ran == []

        unit_of_work(state, outer)
    assert ran == ["msg_0", "msg_1", "msg_2"]


def test_our_jobs_are_written_short_and_read_back():
    call = (RUN_JOB, None, ("timer", "conv_" + "a" * 32), {})
    data = JobSerializer.dumps(call)
    assert JobSerializer.loads(data) == call
    # RQ compresses the data; under 64 bytes Redis keeps the job's hash compact (listpack).
    assert len(zlib.compress(data)) <= 64
    other = ("some.module.func", None, (1, {"a": 2}), {"k": 3})
    assert JobSerializer.loads(JobSerializer.dumps(other)) == other
    assert JobSerializer.loads(pickle.dumps(call)) == call  # jobs written before still load


@pytest.mark.services
def test_a_scheduled_wake_up_is_a_compact_hash_in_redis(redis_conn, redis_url):
    app = Flask(__name__)
    app.testing = True
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="rq",
        POLYSMS_REDIS_URL=redis_url,
        POLYSMS_QUEUE_NAME="polysms-test",
    )
    PolySMS(app)
    scheduler = get_state(app).scheduler
    session_id = "conv_" + "b" * 32
    scheduler.enqueue_at(utcnow(), "timer", session_id, job_id=f"timer-{session_id}-1")
    key = f"rq:job:timer-{session_id}-1"
    assert redis_conn.object("encoding", key) == b"listpack"
    assert redis_conn.memory_usage(key, samples=0) < 700


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.services),
        pytest.param("mysql", marks=pytest.mark.services),
    ]
)
def store(request, tmp_path, unique):
    url = backend_urls.storage_url(request, request.param, tmp_path)
    store = store_backends.create_store(url, table_prefix=backend_urls.PREFIX)
    store.create_schema()
    yield store
    store.disconnect()


def test_credentials_come_together(store):
    account = store.create_account("acme")
    project = store.create_project(account.id, "reminders")
    connector = store.create_connector(project.id, "live")
    key = store.add_api_key(account.id, hash_api_key("pk_secret"), "pk_secr")
    assert store.get_credentials(hash_api_key("pk_other"), connector.id) == (None, None, None)
    found_key, found_connector, found_project = store.get_credentials(
        hash_api_key("pk_secret"), connector.id
    )
    assert (found_key, found_connector, found_project) == (key, connector, project)
    assert store.get_credentials(hash_api_key("pk_secret"), "con_missing") == (key, None, None)
    assert store.get_credentials(hash_api_key("pk_secret"), None) == (key, None, None)


def test_credentials_come_with_the_senders_only_when_they_authorise(store):
    """The outbound route's one read: the senders of the connector's environment, the user's
    last number and the senders the user opted out from, joined only to credentials that let the
    caller in (another account's key, a revoked key or a missing connector read no senders)."""
    account = store.create_account("acme")
    project = store.create_project(account.id, "reminders")
    live = store.create_connector(project.id, "live")
    sandbox = store.create_connector(project.id, "sandbox")
    key = store.add_api_key(account.id, hash_api_key("pk_secret"), "pk_secr")
    other_account = store.create_account("other")
    other_key = store.add_api_key(other_account.id, hash_api_key("pk_other"), "pk_othe")
    revoked = store.add_api_key(account.id, hash_api_key("pk_old"), "pk_old_")
    store.revoke_api_key(revoked.id, utcnow())
    user, first, second, third = "+14155552671", "+14155550100", "+14155550101", "+14155550199"
    for address, environment in ((first, "live"), (second, "live"), (third, "sandbox")):
        store.add_sender(
            Sender(
                id=new_id("snd_"),
                project_id=project.id,
                environment=environment,
                address=address,
                created_at=utcnow(),
            )
        )
    now = utcnow()
    store.create_session(
        Session(
            id=new_id("conv_"),
            project_id=project.id,
            environment="live",
            user_number=user,
            agent_number=second,
            created_at=now,
            last_activity_at=now,
        )
    )
    store.set_opt_out(project.id, user, first, True, "STOP", now)

    found = store.get_credentials_and_senders(hash_api_key("pk_secret"), live.id, user)
    assert found[:3] == (key, live, project)
    assert found[3] == store.senders_for_outbound(project.id, "live", user)
    senders, previous, opted_out = found[3]
    assert [s.address for s in senders] == [first, second]
    assert previous == second and opted_out == frozenset({first})
    sandbox_found = store.get_credentials_and_senders(hash_api_key("pk_secret"), sandbox.id, user)
    assert [s.address for s in sandbox_found[3][0]] == [third]
    assert sandbox_found[3][1:] == (None, frozenset())

    assert store.get_credentials_and_senders(hash_api_key("pk_other"), live.id, user) == (
        other_key,
        live,
        project,
        None,
    )
    assert store.get_credentials_and_senders(hash_api_key("pk_old"), live.id, user)[3] is None
    assert store.get_credentials_and_senders(hash_api_key("pk_secret"), "con_x", user) == (
        key,
        None,
        None,
        None,
    )
    assert store.get_credentials_and_senders(hash_api_key("pk_nobody"), live.id, user) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.services
def test_pooled_connections_are_reused_and_closed_on_disconnect(postgres_url, unique):
    store = store_backends.create_store(postgres_url, table_prefix=f"polysms_{unique}_")
    store.connect()
    first = store.database.connection()
    store.close()
    store.connect()
    assert store.database.connection() is first  # back from the pool, not opened again
    store.close()
    store.disconnect()
    assert first.closed
