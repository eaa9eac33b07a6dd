"""The Store contract (flask_polysms.ports.store.Store): one suite, run unchanged against every
backend.

Backends: ``memory``, ``sqlite`` (a temporary file), ``postgresql`` and ``mysql`` (the servers of
conftest.py; skipped when absent, a failure under CI=true). Each test gets a fresh schema under its
own table prefix, dropped afterwards, so nothing leaks between tests or into other suites sharing
the servers. The race tests run 16 threads on one store (each thread on its own connection) and,
for the database backends, 4 processes each building its own store from the URL.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from freezegun import freeze_time
from store_backends import BACKENDS, PREFIX, storage_url

from flask_polysms import backends
from flask_polysms.ports.store import Conflict, NotFound, StaleVersion, Store
from flask_polysms.records import (
    ACTIVE,
    CANCELED,
    CLOSED,
    DELIVERED,
    FAILED,
    INBOUND,
    OUTBOUND,
    QUEUED,
    RECEIVED,
    SCHEDULED,
    SENDING,
    SENT,
    WARNED,
    IdempotentRequest,
    Message,
    Sender,
    Session,
    StatusEvent,
    Template,
    new_id,
)

DATABASE_BACKENDS = BACKENDS[1:]

UTC = timezone.utc
# Microseconds on purpose: a backend that keeps whole seconds fails the equality checks.
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
USER = "+14155550123"
AGENT = "+14155550100"
OTHER_AGENT = "+14155550199"
OTHER_USER = "+14155550124"
THREADS = 16
PROCESSES = 4


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(request: pytest.FixtureRequest, backend: str, tmp_path: Any) -> str:
    """Up-to-date empty tables: a new SQLite file, the servers' test database emptied."""
    return storage_url(request, backend, tmp_path)


@pytest.fixture
def table_prefix() -> str:
    return PREFIX


@pytest.fixture
def store(store_url: str, table_prefix: str) -> Iterator[Store]:
    """A store on an empty, up-to-date schema (the memory store ignores the prefix)."""
    store = backends.create_store(store_url, table_prefix=table_prefix)
    store.create_schema()
    yield store
    store.disconnect()  # every pooled connection, the racing threads' too


# -- record builders ------------------------------------------------------------------------------
def a_session(project_id: str = "prj_a", **fields: Any) -> Session:
    values: dict[str, Any] = {
        "id": new_id("ses_"),
        "project_id": project_id,
        "environment": "live",
        "user_number": USER,
        "agent_number": AGENT,
        "created_at": T0,
        "last_activity_at": T0,
    }
    values.update(fields)
    return Session(**values)


def a_message(session_id: str | None = None, **fields: Any) -> Message:
    values: dict[str, Any] = {
        "id": new_id("msg_"),
        "project_id": "prj_a",
        "environment": "live",
        "session_id": session_id,
        "direction": OUTBOUND,
        "kind": "agent",
        "body": "Hello",
        "to": USER,
        "from_": AGENT,
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return Message(**values)


def a_template(project_id: str, title: str, **fields: Any) -> Template:
    values: dict[str, Any] = {
        "id": new_id("tpl_"),
        "project_id": project_id,
        "title": title,
        "body": "Hi ${name}",
        "env_phone_numbers": {"live": AGENT},
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return Template(**values)


def a_sender(project_id: str, address: str, environment: str = "live", **fields: Any) -> Sender:
    return Sender(
        id=new_id("snd_"),
        project_id=project_id,
        environment=environment,
        address=address,
        created_at=fields.pop("created_at", T0),
        **fields,
    )


def a_project(store: Store) -> str:
    return store.create_project(store.create_account("Acme").id, "Support").id


def run_in_threads(store: Store, work: Callable[[int], Any], count: int = THREADS) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released together; their results (or exceptions).

    Each thread opens its own connection first and closes it when done (Peewee connections are
    per thread).
    """
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        try:
            store.connect()  # connected before the start, so that the calls really overlap
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # reported to the test, which asserts on it
            results[i] = exc
        finally:
            store.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return results


def outcomes(results: list[Any]) -> list[Any]:
    """Results, failing on any exception other than the expected StaleVersion."""
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, StaleVersion):
            raise AssertionError(f"unexpected error in a thread: {result!r}") from result
    return results


# -- life cycle -----------------------------------------------------------------------------------
def test_schema_creation_is_idempotent_and_starts_empty(store: Store) -> None:
    store.create_schema()
    assert store.get_account("acc_missing") is None
    assert store.list_sessions("prj_a") == ([], None)
    assert store.get_metrics("prj_a", "live", date(2026, 1, 1), date(2026, 12, 31)) == {}


def test_drop_schema_removes_the_data(store: Store) -> None:
    account = store.create_account("Acme")
    store.drop_schema()
    store.create_schema()
    assert store.get_account(account.id) is None


def test_works_without_connect_and_after_close(store: Store) -> None:
    store.close()
    account = store.create_account("Acme")  # no connect(): the backend opens what it needs
    store.close()
    store.close()  # closing twice is harmless
    assert store.get_account(account.id) == account
    store.connect()
    store.connect()  # reuses the open connection
    assert store.get_account(account.id) == account
    store.close()
    # A unit of work started without connect() opens the connection too.
    other = store.atomic(lambda: store.create_account("Initech"))
    assert store.get_account(other.id) == other


# -- accounts, keys, projects ---------------------------------------------------------------------
def test_accounts(store: Store) -> None:
    account = store.create_account("Acme")
    assert account.id and account.name == "Acme"
    assert account.created_at.tzinfo is not None
    assert account.created_at.utcoffset() == timedelta(0)
    assert store.get_account(account.id) == account
    assert store.get_account("acc_missing") is None
    assert store.create_account("Acme").id != account.id


def test_times_come_from_the_clock_at_call_time(store: Store) -> None:
    moment = datetime(2031, 7, 4, 9, 30, 15, 654321, tzinfo=UTC)
    with freeze_time(moment):
        account = store.create_account("Acme")
        project = store.create_project(account.id, "Support")
        key = store.add_api_key(account.id, "hash-1", "pk_1")
        connector = store.create_connector(project.id, "live")
    for record in (account, project, key, connector):
        assert record.created_at == moment
    assert store.get_account(account.id).created_at == moment
    assert store.get_api_key(key.id).created_at == moment


def test_api_keys_and_revocation(store: Store) -> None:
    account = store.create_account("Acme")
    with pytest.raises(NotFound):
        store.add_api_key("acc_missing", "hash-x", "pk_x")
    key = store.add_api_key(account.id, "hash-1", "pk_1")
    other = store.add_api_key(account.id, "hash-2", "pk_2")
    assert (key.account_id, key.key_hash, key.prefix, key.revoked_at) == (
        account.id,
        "hash-1",
        "pk_1",
        None,
    )
    assert store.get_api_key(key.id) == key
    assert store.get_api_key_by_hash("hash-1") == key
    assert store.get_api_key_by_hash("hash-2") == other
    assert store.get_api_key_by_hash("HASH-1") is None
    assert store.get_api_key("key_missing") is None

    revoked_at = T0 + timedelta(hours=1)
    assert store.revoke_api_key(key.id, revoked_at) is True
    assert store.revoke_api_key(key.id, revoked_at + timedelta(hours=1)) is False
    assert store.revoke_api_key("key_missing", revoked_at) is False
    assert store.get_api_key(key.id).revoked_at == revoked_at
    assert store.get_api_key_by_hash("hash-1").revoked_at == revoked_at
    assert store.get_api_key(other.id).revoked_at is None


def test_projects(store: Store) -> None:
    with pytest.raises(NotFound):
        store.create_project("acc_missing", "Support")
    account = store.create_account("Acme")
    project = store.create_project(account.id, "Support")
    assert (project.account_id, project.name, project.settings) == (account.id, "Support", {})
    assert project.twilio_account_sid is None
    assert store.get_project(project.id) == project
    assert store.get_project("prj_missing") is None

    settings = {"replies": {"HELP": "Call us"}, "sender_guard": False, "variant": {"live": {}}}
    updated = store.update_project(
        project.id,
        name="Support EU",
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token_encrypted="gAAAA-encrypted",
        settings=settings,
    )
    assert updated.name == "Support EU"
    assert updated.twilio_account_sid == "AC" + "0" * 32
    assert updated.twilio_auth_token_encrypted == "gAAAA-encrypted"
    assert updated.settings == settings
    assert store.get_project(project.id) == updated
    # What the caller holds is a copy: changing it changes nothing stored.
    updated.settings["replies"]["HELP"] = "changed"
    settings["sender_guard"] = True
    assert store.get_project(project.id).settings == {
        "replies": {"HELP": "Call us"},
        "sender_guard": False,
        "variant": {"live": {}},
    }
    with pytest.raises(NotFound):
        store.update_project("prj_missing", name="x")


# -- senders and connectors -----------------------------------------------------------------------
def test_senders_are_unique_across_projects(store: Store) -> None:
    first, second = a_project(store), a_project(store)
    sender = store.add_sender(a_sender(first, AGENT, country="US", number_type="long_code"))
    assert sender.address == AGENT and sender.project_id == first
    assert store.get_sender(AGENT) == sender
    with pytest.raises(Conflict):
        store.add_sender(a_sender(second, AGENT))
    with pytest.raises(Conflict):
        store.add_sender(a_sender(first, AGENT, environment="sandbox"))
    assert store.get_sender(AGENT).project_id == first  # the first owner keeps it
    with pytest.raises(NotFound):
        store.add_sender(a_sender("prj_missing", "+14155550111"))
    assert store.get_sender("+14155550111") is None


def test_list_and_update_senders(store: Store) -> None:
    project, other = a_project(store), a_project(store)
    service = "MG" + "ab" * 16
    store.add_sender(a_sender(project, "+14155550102", created_at=T0 + timedelta(seconds=2)))
    store.add_sender(a_sender(project, "+14155550101", created_at=T0 + timedelta(seconds=1)))
    store.add_sender(a_sender(project, service, "sandbox", kind="messaging_service"))
    store.add_sender(a_sender(other, "+14155550103"))

    assert [s.address for s in store.list_senders(project)] == [
        service,
        "+14155550101",
        "+14155550102",
    ]
    assert [s.address for s in store.list_senders(project, "live")] == [
        "+14155550101",
        "+14155550102",
    ]
    assert [s.address for s in store.list_senders(project, "pre-release")] == []
    assert store.get_sender(service).kind == "messaging_service"

    updated = store.update_sender("+14155550101", registration="registered", campaign_id="C1")
    assert (updated.registration, updated.campaign_id) == ("registered", "C1")
    assert store.get_sender("+14155550101") == updated
    assert store.get_sender("+14155550102").registration == "unknown"
    with pytest.raises(NotFound):
        store.update_sender("+14155550999", registration="registered")


def test_connectors(store: Store) -> None:
    project = a_project(store)
    connector = store.create_connector(project, "pre-release")
    assert (connector.project_id, connector.environment) == (project, "pre-release")
    assert store.get_connector(connector.id) == connector
    assert store.get_connector("con_missing") is None
    with pytest.raises(NotFound):
        store.create_connector("prj_missing", "live")


# -- sessions -------------------------------------------------------------------------------------
def test_create_and_get_session_round_trips_every_field(store: Store) -> None:
    session = a_session(
        state=WARNED,
        engaged=True,
        deadline_at=T0 + timedelta(minutes=10, microseconds=7),
        timer_kind="grace",
        wake_at=T0 + timedelta(minutes=9),
        data={"order": 42, "tags": ["a", "b"], "nested": {"ok": True}},
        entities={"name": "Ana", "city": "Zürich 🏔"},
        metadata={"sms_sends": [{"to": USER, "status": "sent"}]},
        language="de",
    )
    created = store.create_session(session)
    assert created == session
    fetched = store.get_session(session.id)
    assert fetched == session
    for moment in (
        fetched.created_at,
        fetched.last_activity_at,
        fetched.deadline_at,
        fetched.wake_at,
    ):
        assert moment.utcoffset() == timedelta(0)
    assert fetched.closed_at is None and fetched.end_reason is None
    assert store.get_session("ses_missing") is None


# The memory store keeps the objects it is given: there is nothing to convert.
@pytest.mark.parametrize("backend", DATABASE_BACKENDS)
def test_a_created_record_is_what_reading_it_back_gives(store: Store) -> None:
    """On a database, what create_* returns is the record as stored: naive and non-UTC times come
    back aware UTC, JSON values as JSON gives them, booleans and integers as themselves."""
    two_hours_east = timezone(timedelta(hours=2))
    session = a_session(
        created_at=T0.replace(tzinfo=None),  # naive: taken as UTC
        last_activity_at=T0.astimezone(two_hours_east),
        engaged=True,
        version=3,
        data={"pair": (1, 2)},  # a tuple: JSON gives a list back
    )
    created = store.create_session(session)
    assert created == store.get_session(session.id)
    assert created.created_at == T0 and created.created_at.utcoffset() == timedelta(0)
    assert created.last_activity_at == T0 and created.last_activity_at.utcoffset() == timedelta(0)
    assert created.data == {"pair": [1, 2]}
    assert (created.engaged, created.version) == (True, 3)

    message = store.add_message(
        a_message(session.id, created_at=T0.astimezone(two_hours_east), segments=2)
    )
    assert message == store.get_message(message.id)
    assert message.created_at.utcoffset() == timedelta(0)


def test_find_open_session(store: Store) -> None:
    closed = store.create_session(a_session(state=CLOSED, end_reason="inactivity"))
    assert store.find_open_session("prj_a", USER, AGENT) is None
    older = store.create_session(a_session())
    newer = store.create_session(a_session(state=WARNED))
    store.create_session(a_session(agent_number=OTHER_AGENT))
    store.create_session(a_session(project_id="prj_b"))

    assert store.find_open_session("prj_a", USER, AGENT).id == newer.id
    store.update_session(newer.id, 1, state=CLOSED, closed_at=T0)
    assert store.find_open_session("prj_a", USER, AGENT).id == older.id
    store.update_session(older.id, 1, state=CLOSED)
    assert store.find_open_session("prj_a", USER, AGENT) is None
    assert store.get_session(closed.id).state == CLOSED
    assert store.find_open_session("prj_a", "+14155550999", AGENT) is None


def test_open_session_records_one_unless_the_triple_has_one_open(store: Store) -> None:
    first, created = store.open_session(a_session())
    assert created is True
    assert store.get_session(first.id) == first
    again, created = store.open_session(a_session(state=WARNED))
    assert (again.id, created) == (first.id, False)
    other, created = store.open_session(a_session(agent_number=OTHER_AGENT))
    assert created is True and other.id != first.id
    store.update_session(first.id, 1, state=CLOSED, closed_at=T0)
    after_close, created = store.open_session(a_session())
    assert created is True and after_close.id not in (first.id, other.id)
    assert store.find_open_session("prj_a", USER, AGENT).id == after_close.id


def test_open_session_joins_a_session_created_by_outbound(store: Store) -> None:
    """An outbound session (create_session) supersedes the open one; open_session joins the
    newest, and a closed newest leaves the older one open."""
    older = store.create_session(a_session())
    newer = store.create_session(a_session())
    assert store.open_session(a_session()) == (store.get_session(newer.id), False)
    store.update_session(newer.id, 1, state=CLOSED)
    assert store.open_session(a_session())[0].id == older.id


def test_race_open_session_opens_one(store: Store) -> None:
    results = outcomes(
        run_in_threads(store, lambda i: store.atomic(lambda: store.open_session(a_session())))
    )
    assert [created for _, created in results].count(True) == 1
    assert len({session.id for session, _ in results}) == 1
    sessions, _ = store.list_sessions("prj_a")
    assert len(sessions) == 1


def test_race_create_session_leaves_one_open_session_per_triple(store: Store) -> None:
    """Outbound sessions created at once: every one is recorded, the newest is the open one."""
    results = outcomes(
        run_in_threads(store, lambda i: store.atomic(lambda: store.create_session(a_session())))
    )
    assert len({session.id for session in results}) == THREADS
    assert len(store.list_sessions("prj_a", limit=100)[0]) == THREADS
    newest = store.list_sessions("prj_a", limit=1)[0][0]
    assert store.find_open_session("prj_a", USER, AGENT).id == newest.id
    assert store.open_session(a_session())[0].id == newest.id


def test_claim_turn_holds_until_released_or_run_out(store: Store) -> None:
    session = store.create_session(a_session())
    later = T0 + timedelta(minutes=5)
    assert store.claim_turn(session.id, "a", T0, later) is True
    assert store.claim_turn(session.id, "b", T0 + timedelta(minutes=4), later) is False
    assert store.claim_turn(session.id, "a", T0, later + timedelta(seconds=1)) is True  # renewed
    assert store.release_turn(session.id, "b") is False
    assert store.release_turn(session.id, "a") is True
    assert store.release_turn(session.id, "a") is False
    assert store.claim_turn(session.id, "b", T0, later) is True
    # b crashed: its claim runs out and c takes it over.
    assert store.claim_turn(session.id, "c", later - timedelta(microseconds=1), later) is False
    assert store.claim_turn(session.id, "c", later + timedelta(microseconds=1), later) is True
    assert store.release_turn(session.id, "b") is False
    other = store.create_session(a_session(agent_number=OTHER_AGENT))
    assert store.claim_turn(other.id, "b", T0, later) is True  # per session
    # The claim is not part of the session's version.
    assert store.get_session(session.id).version == 1


def test_race_claim_turn_has_one_winner(store: Store) -> None:
    session = store.create_session(a_session())
    later = T0 + timedelta(minutes=5)
    results = outcomes(
        run_in_threads(store, lambda i: store.claim_turn(session.id, f"owner{i}", T0, later))
    )
    assert results.count(True) == 1 and results.count(False) == THREADS - 1


def test_waiting_turn_messages_are_received_inbound_in_order(store: Store) -> None:
    session = store.create_session(a_session())
    inbound = {"direction": INBOUND, "kind": "user", "status": RECEIVED}
    first = store.add_message(a_message(session.id, body="1", **inbound))
    store.add_message(a_message(session.id, body="out"))
    handled = store.add_message(a_message(session.id, body="2", **inbound))
    third = store.add_message(a_message(session.id, body="3", **inbound))
    store.add_message(a_message(None, body="none", **inbound))
    store.update_message(handled.id, status="handled")
    assert [m.id for m in store.waiting_turn_messages(session.id)] == [first.id, third.id]
    assert store.waiting_turn_messages(session.id, limit=1) == [store.get_message(first.id)]
    assert store.waiting_turn_messages("ses_none") == []


def test_update_session_is_compare_and_set(store: Store) -> None:
    session = store.create_session(a_session())
    assert session.version == 1
    moved = store.update_session(
        session.id,
        1,
        state=WARNED,
        engaged=True,
        deadline_at=T0 + timedelta(minutes=10),
        data={"step": 2},
    )
    assert (moved.version, moved.state, moved.engaged) == (2, WARNED, True)
    assert moved.deadline_at == T0 + timedelta(minutes=10)
    assert store.get_session(session.id) == moved

    with pytest.raises(StaleVersion):
        store.update_session(session.id, 1, state=CLOSED)
    with pytest.raises(StaleVersion):
        store.update_session(session.id, 3, state=CLOSED)
    assert store.get_session(session.id) == moved  # a lost update changes nothing

    closed = store.update_session(session.id, 2, state=CLOSED, end_reason="inactivity")
    assert (closed.version, closed.state, closed.end_reason) == (3, CLOSED, "inactivity")
    assert closed.data == {"step": 2}  # fields not named keep their values
    with pytest.raises(NotFound):
        store.update_session("ses_missing", 1, state=CLOSED)


def test_list_sessions_filters_and_pages_to_the_end(store: Store) -> None:
    made = []
    for i in range(7):
        made.append(
            store.create_session(
                a_session(
                    environment="live" if i % 2 == 0 else "sandbox",
                    user_number=USER if i < 4 else "+14155550124",
                    state=CLOSED if i in (1, 5) else ACTIVE,
                )
            )
        )
    store.create_session(a_session(project_id="prj_b"))
    newest_first = [s.id for s in reversed(made)]

    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = store.list_sessions("prj_a", cursor=cursor, limit=3)
        seen += [s.id for s in page]
        pages += 1
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"
    assert seen == newest_first
    assert pages == 3

    exact, cursor = store.list_sessions("prj_a", limit=7)
    assert [s.id for s in exact] == newest_first and cursor is None

    def ids(**filters: Any) -> list[str]:
        return [s.id for s in store.list_sessions("prj_a", limit=50, **filters)[0]]

    assert ids(environment="sandbox") == [made[5].id, made[3].id, made[1].id]
    assert ids(user_number="+14155550124") == [made[6].id, made[5].id, made[4].id]
    assert ids(state=CLOSED) == [made[5].id, made[1].id]
    assert ids(environment="live", state=ACTIVE, user_number=USER) == [made[2].id, made[0].id]
    assert ids(state=WARNED) == []

    page, cursor = store.list_sessions("prj_a", state=ACTIVE, limit=2)
    assert [s.id for s in page] == [made[6].id, made[4].id]
    page, cursor = store.list_sessions("prj_a", state=ACTIVE, limit=2, cursor=cursor)
    assert [s.id for s in page] == [made[3].id, made[2].id]
    page, cursor = store.list_sessions("prj_a", state=ACTIVE, limit=2, cursor=cursor)
    assert [s.id for s in page] == [made[0].id] and cursor is None

    with pytest.raises(ValueError):
        store.list_sessions("prj_a", cursor="not a cursor!")


def test_due_sessions(store: Store) -> None:
    now = T0 + timedelta(hours=24)
    late = store.create_session(a_session(deadline_at=now - timedelta(hours=1)))
    exactly = store.create_session(a_session(state=WARNED, deadline_at=now))
    store.create_session(a_session(deadline_at=now + timedelta(microseconds=1)))
    store.create_session(a_session())  # no deadline
    store.create_session(a_session(state=CLOSED, deadline_at=now - timedelta(hours=2)))
    earliest = store.create_session(
        a_session(project_id="prj_b", deadline_at=now - timedelta(days=1))
    )

    assert [s.id for s in store.due_sessions(now)] == [earliest.id, late.id, exactly.id]
    assert [s.id for s in store.due_sessions(now, limit=2)] == [earliest.id, late.id]
    assert store.due_sessions(now - timedelta(days=1, microseconds=1)) == []


def test_waking_sessions(store: Store) -> None:
    now = T0 + timedelta(hours=24)
    # A wake-up due while the deadline moved later (a reply): waking, not due.
    sleeper = store.create_session(
        a_session(wake_at=now - timedelta(hours=1), deadline_at=now + timedelta(hours=5))
    )
    exactly = store.create_session(a_session(state=WARNED, wake_at=now, deadline_at=now))
    store.create_session(a_session(wake_at=now + timedelta(microseconds=1)))
    store.create_session(a_session())  # no wake-up
    store.create_session(a_session(state=CLOSED, wake_at=now - timedelta(hours=2)))
    earliest = store.create_session(a_session(project_id="prj_b", wake_at=now - timedelta(days=1)))

    assert [s.id for s in store.waking_sessions(now)] == [earliest.id, sleeper.id, exactly.id]
    assert [s.id for s in store.waking_sessions(now, limit=2)] == [earliest.id, sleeper.id]
    assert store.waking_sessions(now - timedelta(days=1, microseconds=1)) == []
    assert sleeper.id not in [s.id for s in store.due_sessions(now)]


def test_last_agent_number(store: Store) -> None:
    assert store.last_agent_number("prj_a", "live", USER) is None
    store.create_session(a_session(agent_number=AGENT))
    store.create_session(a_session(agent_number=OTHER_AGENT, state=CLOSED))
    store.create_session(a_session(agent_number="+14155550177", environment="sandbox"))
    store.create_session(a_session(agent_number="+14155550188", project_id="prj_b"))
    assert store.last_agent_number("prj_a", "live", USER) == OTHER_AGENT
    assert store.last_agent_number("prj_a", "sandbox", USER) == "+14155550177"
    assert store.last_agent_number("prj_a", "live", "+14155550999") is None


def test_get_sender_with_project_is_get_sender_and_get_project(store: Store) -> None:
    project = a_project(store)
    assert store.get_sender_with_project(AGENT) == (None, None)
    store.add_sender(a_sender(project, AGENT))
    assert store.get_sender_with_project(AGENT) == (
        store.get_sender(AGENT),
        store.get_project(project),
    )


def test_inbound_context_is_open_session_block_and_opt_out(store: Store) -> None:
    assert store.inbound_context("prj_a", USER, AGENT) == (None, None, False)
    store.create_session(a_session(agent_number=AGENT, state=CLOSED))
    assert store.inbound_context("prj_a", USER, AGENT) == (None, None, False)
    opened = store.create_session(a_session(agent_number=AGENT))
    store.create_session(a_session(agent_number=OTHER_AGENT))
    store.block_number("prj_a", USER, T0 + timedelta(minutes=10), "duplicate_text")
    store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0)
    session, blocked, opted_out = store.inbound_context("prj_a", USER, AGENT)
    assert session == opened == store.find_open_session("prj_a", USER, AGENT)
    assert blocked == store.blocked_until("prj_a", USER) == T0 + timedelta(minutes=10)
    assert opted_out is True
    # Each part follows its own key: another number, another project, another pair.
    assert store.inbound_context("prj_a", USER, OTHER_AGENT)[2] is False
    assert store.inbound_context("prj_b", USER, AGENT) == (None, None, True)
    store.set_opt_out("prj_a", USER, AGENT, False, "START", T0)
    assert store.inbound_context("prj_a", USER, AGENT)[2] is False


def test_senders_for_user_is_list_senders_and_last_agent_number(store: Store) -> None:
    project = a_project(store)
    assert store.senders_for_user(project, "live", USER) == ([], None)
    for address, environment in (
        (AGENT, "live"),
        (OTHER_AGENT, "live"),
        ("+14155550177", "sandbox"),
    ):
        store.add_sender(a_sender(project, address, environment))
    assert store.senders_for_user(project, "live", USER) == (
        store.list_senders(project, "live"),
        None,
    )
    store.create_session(a_session(project, agent_number=OTHER_AGENT))
    store.create_session(a_session(project, agent_number="+14155550177", environment="sandbox"))
    senders, previous = store.senders_for_user(project, "live", USER)
    assert [s.address for s in senders] == [AGENT, OTHER_AGENT] and previous == OTHER_AGENT
    assert store.senders_for_user(project, "sandbox", USER)[1] == "+14155550177"
    assert store.senders_for_user(project, "live", "+14155550999")[1] is None


def test_senders_for_outbound_adds_the_senders_the_user_opted_out_from(store: Store) -> None:
    project = a_project(store)
    service, third = "MG" + "e" * 32, "+14155550178"
    assert store.senders_for_outbound(project, "live", USER) == ([], None, frozenset())
    store.add_sender(a_sender(project, service, kind="messaging_service"))
    store.add_sender(a_sender(project, AGENT, messaging_service_sid=service))
    store.add_sender(a_sender(project, OTHER_AGENT))
    store.add_sender(a_sender(project, third))
    store.create_session(a_session(project, agent_number=OTHER_AGENT))
    senders, previous = store.senders_for_user(project, "live", USER)
    assert store.senders_for_outbound(project, "live", USER) == (senders, previous, frozenset())
    # Opted out from the service (covers its member AGENT) and from OTHER_AGENT itself; THIRD,
    # another user's opt-out and an opt-out undone by START do not count.
    store.set_opt_out(project, USER, service, True, "STOP", T0)
    store.set_opt_out(project, USER, OTHER_AGENT, True, "STOP", T0)
    store.set_opt_out(project, "+14155550124", third, True, "STOP", T0)
    store.set_opt_out(project, USER, third, True, "STOP", T0)
    store.set_opt_out(project, USER, third, False, "START", T0 + timedelta(seconds=1))
    assert store.senders_for_outbound(project, "live", USER) == (
        senders,
        previous,
        frozenset({service, AGENT, OTHER_AGENT}),
    )
    for sender in senders:
        assert store.is_opted_out(USER, sender.address) == (
            sender.address in store.senders_for_outbound(project, "live", USER)[2]
        )


# -- messages -------------------------------------------------------------------------------------
def test_messages_add_get_and_list_in_recording_order(store: Store) -> None:
    session = store.create_session(a_session())
    # Created-at times out of order: the list follows the recording order, not the times.
    first = store.add_message(a_message(session.id, kind="greeting", created_at=T0))
    second = store.add_message(
        a_message(
            session.id,
            direction=INBOUND,
            kind="user",
            body="Hi ✓",
            to=AGENT,
            from_=USER,
            status=RECEIVED,
            twilio_sid="SM" + "1" * 32,
            created_at=T0 - timedelta(minutes=5),
        )
    )
    third = store.add_message(a_message(session.id, body="x" * 1600, segments=11, template="t"))
    store.add_message(a_message(None, body="no session"))
    store.add_message(a_message("ses_other"))

    assert store.get_message(second.id) == second
    assert store.get_message("msg_missing") is None
    assert [m.id for m in store.list_messages(session.id)] == [first.id, second.id, third.id]
    assert store.list_messages(session.id)[2] == third
    assert store.list_messages("ses_missing") == []
    assert store.get_message_by_sid("SM" + "1" * 32) == second
    assert store.get_message_by_sid("SM" + "2" * 32) is None


def test_a_messages_media_round_trips_through_every_read(store: Store) -> None:
    """A message's pictures (a list of {"url", "content_type"}) come back as written, in order,
    from every read, the send job's claim and ``sent`` record included; none is ``[]``."""
    session = store.create_session(a_session())
    media = [
        {
            "url": "https://api.twilio.com/2010-04-01/Accounts/AC1/Media/ME1",
            "content_type": "image/jpeg",
        },
        {"url": "https://example.org/é?q=1&x=<b>", "content_type": None},
    ]
    plain = store.add_message(a_message(session.id))
    inbound = store.add_message(
        a_message(
            session.id, direction=INBOUND, status=RECEIVED, twilio_sid="MM" + "1" * 32, media=media
        )
    )
    outbound = store.add_message(a_message(session.id, status=QUEUED, media=media[1:]))
    assert plain.media == [] and store.get_message(plain.id).media == []
    assert inbound.media == media and store.get_message(inbound.id).media == media
    assert store.get_message_by_sid("MM" + "1" * 32).media == media
    assert [m.media for m in store.list_messages(session.id)] == [[], media, media[1:]]
    assert [m.media for m in store.list_messages_of_sessions([session.id])[session.id]] == [
        [],
        media,
        media[1:],
    ]
    claim = store.claim_send(outbound.id, T0 + timedelta(seconds=1))
    assert claim.message.media == media[1:]
    sent, _ = store.record_sent(outbound.id, "MM" + "2" * 32, T0 + timedelta(seconds=2))
    assert sent.media == media[1:]
    updated = store.update_message(inbound.id, RECEIVED, status="processing")
    assert updated.media == media


def test_update_message_with_expected_status(store: Store) -> None:
    message = store.add_message(a_message())
    later = T0 + timedelta(seconds=30)

    claimed = store.update_message(message.id, QUEUED, status=SENDING, attempts=1, updated_at=later)
    assert (claimed.status, claimed.attempts, claimed.updated_at) == (SENDING, 1, later)
    # A second claimer expecting "queued" loses and changes nothing.
    assert store.update_message(message.id, QUEUED, status=SENDING, attempts=2) is None
    assert store.get_message(message.id) == claimed

    sid = "SM" + "a" * 32
    sent = store.update_message(message.id, (SENDING, QUEUED), status=SENT, twilio_sid=sid)
    assert (sent.status, sent.twilio_sid) == (SENT, sid)
    assert store.get_message_by_sid(sid).id == message.id

    assert store.update_message(message.id, (QUEUED, SENDING), status=FAILED) is None
    # Writing the value already stored still counts as a match.
    assert store.update_message(message.id, SENT, status=SENT).status == SENT
    delivered = store.update_message(message.id, status=DELIVERED)  # unconditional
    assert delivered.status == DELIVERED
    failed = store.update_message(message.id, DELIVERED, error_code=30003, error_message="x")
    assert (failed.status, failed.error_code, failed.error_message) == (DELIVERED, 30003, "x")
    assert store.update_message("msg_missing", status=SENT) is None
    assert store.update_message("msg_missing", QUEUED, status=SENT) is None


def test_stuck_messages(store: Store) -> None:
    cutoff = T0 + timedelta(minutes=10)
    old_sending = store.add_message(a_message(status=SENDING, updated_at=T0 + timedelta(minutes=1)))
    old_queued = store.add_message(a_message(status=QUEUED, updated_at=T0))
    store.add_message(a_message(status=SENT, updated_at=T0))
    store.add_message(a_message(status=QUEUED, updated_at=cutoff))  # not before the cutoff
    store.add_message(a_message(direction=INBOUND, status=QUEUED, updated_at=T0))

    assert [m.id for m in store.stuck_messages(cutoff)] == [old_queued.id, old_sending.id]
    assert [m.id for m in store.stuck_messages(cutoff, limit=1)] == [old_queued.id]
    assert store.stuck_messages(T0) == []


def test_scheduled_messages_due_and_listed(store: Store) -> None:
    at = T0 + timedelta(hours=1)
    later = store.add_message(a_message(status=SCHEDULED, send_at=at + timedelta(minutes=5)))
    due = store.add_message(a_message(status=SCHEDULED, send_at=at))
    early = store.add_message(a_message(status=SCHEDULED, send_at=at - timedelta(minutes=5)))
    store.add_message(a_message(status=CANCELED, send_at=at - timedelta(minutes=9)))
    store.add_message(a_message(status=QUEUED, send_at=at - timedelta(minutes=9)))  # released
    store.add_message(a_message(status=SCHEDULED, environment="sandbox", send_at=at))
    other = store.add_message(a_message(status=SCHEDULED, project_id="prj_b", send_at=at))
    assert store.get_message(due.id).send_at == at  # round trip, aware UTC
    assert store.add_message(a_message()).send_at is None

    found = store.due_scheduled_messages(at)
    assert [m.id for m in found if m.project_id == "prj_a" and m.environment == "live"] == [
        early.id,
        due.id,
    ]
    assert {m.id for m in found} >= {other.id}
    assert len(store.due_scheduled_messages(at, limit=1)) == 1
    assert store.due_scheduled_messages(at - timedelta(minutes=6)) == []
    listed = store.list_scheduled_messages("prj_a", "live")
    assert [m.id for m in listed] == [early.id, due.id, later.id]
    assert [m.id for m in store.list_scheduled_messages("prj_a", "live", limit=2)] == [
        early.id,
        due.id,
    ]
    # Released (a compare-and-set on scheduled), it is neither due nor listed any more.
    assert store.update_message(due.id, SCHEDULED, status=QUEUED) is not None
    assert store.update_message(due.id, SCHEDULED, status=CANCELED) is None
    assert [m.id for m in store.list_scheduled_messages("prj_a", "live")] == [early.id, later.id]
    assert store.list_scheduled_messages("prj_a", "pre-release") == []


def test_status_events_are_recorded_once_per_sid_and_status(store: Store) -> None:
    sid, other = "SM" + "b" * 32, "SM" + "c" * 32
    delivered = StatusEvent(sid, DELIVERED, T0 + timedelta(seconds=5))
    sent = StatusEvent(sid, SENT, T0 + timedelta(seconds=1))
    assert store.add_status_event(delivered) is True  # out of order, as Twilio may send them
    assert store.add_status_event(sent) is True
    assert store.add_status_event(StatusEvent(sid, SENT, T0 + timedelta(seconds=9))) is False
    assert store.add_status_event(StatusEvent(other, SENT, T0, error_code=30007)) is True
    assert store.list_status_events(sid) == [sent, delivered]
    assert store.list_status_events(other) == [StatusEvent(other, SENT, T0, error_code=30007)]
    assert store.list_status_events("SM_missing") == []


def test_claim_inbound_once(store: Store) -> None:
    sid = "SM" + "d" * 32
    assert store.claim_inbound(sid, T0) is True
    assert store.claim_inbound(sid, T0 + timedelta(seconds=1)) is False
    assert store.claim_inbound(sid.lower(), T0) is True
    assert store.claim_inbound("SM" + "e" * 32, T0) is True


# -- templates ------------------------------------------------------------------------------------
def test_templates_unique_title_per_project(store: Store) -> None:
    welcome = store.create_template(a_template("prj_a", "welcome"))
    assert store.get_template("prj_a", welcome.id) == welcome
    with pytest.raises(Conflict):
        store.create_template(a_template("prj_a", "welcome"))
    in_b = store.create_template(a_template("prj_b", "welcome"))  # another project: fine
    assert store.get_template_by_title("prj_b", "welcome") == in_b
    assert store.get_template_by_title("prj_a", "welcome") == welcome
    # Scoping: another project's id answers as if absent.
    assert store.get_template("prj_b", welcome.id) is None
    assert store.get_template("prj_a", "tpl_missing") is None
    assert store.get_template_by_title("prj_c", "welcome") is None


def test_titles_and_addresses_match_exactly(store: Store) -> None:
    # Case and trailing spaces make different titles (MySQL's default collation would merge them).
    store.create_template(a_template("prj_a", "Welcome"))
    store.create_template(a_template("prj_a", "welcome"))
    store.create_template(a_template("prj_a", "welcome "))
    assert store.get_template_by_title("prj_a", "WELCOME") is None
    assert store.get_template_by_title("prj_a", "welcome").title == "welcome"
    service = "MG" + "Ab" * 16
    store.add_sender(a_sender(a_project(store), service))
    assert store.get_sender(service.upper()) is None
    assert store.get_sender(service).address == service


def test_list_templates_orders_by_title(store: Store) -> None:
    for title in ("b", "a", "B", "Ä", "a2"):
        store.create_template(a_template("prj_a", title))
    store.create_template(a_template("prj_b", "0"))
    # Code point order, as Python sorts strings.
    assert [t.title for t in store.list_templates("prj_a")] == ["B", "a", "a2", "b", "Ä"]
    assert store.list_templates("prj_c") == []


def test_update_and_delete_templates(store: Store) -> None:
    welcome = store.create_template(a_template("prj_a", "welcome"))
    store.create_template(a_template("prj_a", "bye"))
    later = T0 + timedelta(hours=1)
    updated = store.update_template(
        "prj_a",
        welcome.id,
        title="hello",
        body="Hello {{entity:name}}",
        env_phone_numbers={"live": AGENT, "sandbox": OTHER_AGENT},
        updated_at=later,
    )
    assert (updated.title, updated.body, updated.updated_at) == (
        "hello",
        "Hello {{entity:name}}",
        later,
    )
    assert updated.env_phone_numbers == {"live": AGENT, "sandbox": OTHER_AGENT}
    assert store.get_template("prj_a", welcome.id) == updated
    assert store.get_template_by_title("prj_a", "welcome") is None

    with pytest.raises(Conflict):
        store.update_template("prj_a", welcome.id, title="bye")
    assert store.get_template("prj_a", welcome.id) == updated  # nothing half-applied
    assert store.update_template("prj_a", welcome.id, title="hello").title == "hello"  # own title
    with pytest.raises(NotFound):
        store.update_template("prj_b", welcome.id, body="x")  # another project's template
    with pytest.raises(NotFound):
        store.update_template("prj_a", "tpl_missing", body="x")

    assert store.delete_template("prj_b", welcome.id) is False
    assert store.delete_template("prj_a", welcome.id) is True
    assert store.delete_template("prj_a", welcome.id) is False
    assert store.get_template("prj_a", welcome.id) is None
    # The title is free again.
    assert store.create_template(a_template("prj_a", "hello")).title == "hello"


# -- opt-outs -------------------------------------------------------------------------------------
def test_opt_out_changes_and_history(store: Store) -> None:
    assert store.is_opted_out(USER, AGENT) is False
    # Opting in a pair that never opted out is no change.
    assert store.set_opt_out("prj_a", USER, AGENT, False, "START", T0) is False
    assert store.opt_out_history("prj_a", USER) == []

    assert store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0) is True
    assert store.set_opt_out("prj_a", USER, AGENT, True, "QUIT", T0 + timedelta(seconds=1)) is False
    assert store.is_opted_out(USER, AGENT) is True
    history = store.opt_out_history("prj_a", USER, AGENT)
    assert [(e.action, e.keyword, e.at) for e in history] == [("opt_out", "STOP", T0)]
    assert (history[0].project_id, history[0].recipient, history[0].sender) == (
        "prj_a",
        USER,
        AGENT,
    )

    later = T0 + timedelta(minutes=5)
    assert store.set_opt_out("prj_a", USER, AGENT, False, "START", later) is True
    assert store.set_opt_out("prj_a", USER, AGENT, False, "UNSTOP", later) is False
    assert store.is_opted_out(USER, AGENT) is False
    assert store.set_opt_out("prj_a", USER, AGENT, True, None, later + timedelta(seconds=1)) is True
    assert [(e.action, e.keyword) for e in store.opt_out_history("prj_a", USER, AGENT)] == [
        ("opt_out", "STOP"),
        ("opt_in", "START"),
        ("opt_out", None),
    ]


def test_an_opt_out_of_a_messaging_service_covers_its_member_numbers(store: Store) -> None:
    project = a_project(store)
    service, other_service = "MG" + "c" * 32, "MG" + "d" * 32
    store.add_sender(a_sender(project, service, kind="messaging_service"))
    store.add_sender(a_sender(project, other_service, kind="messaging_service"))
    store.add_sender(a_sender(project, AGENT, messaging_service_sid=service))
    store.add_sender(a_sender(project, OTHER_AGENT))
    assert store.get_sender(AGENT).messaging_service_sid == service

    assert store.set_opt_out(project, USER, service, True, None, T0, "carrier") is True

    assert store.is_opted_out(USER, service) and store.is_opted_out(USER, AGENT)
    assert not store.is_opted_out(USER, OTHER_AGENT)
    assert not store.is_opted_out(USER, other_service)
    assert not store.is_opted_out("+14155550124", AGENT)
    assert store.inbound_context(project, USER, AGENT)[2] is True
    assert store.inbound_context(project, USER, OTHER_AGENT)[2] is False
    [event] = store.opt_out_history(project, USER)
    assert (event.sender, event.action, event.keyword, event.source) == (
        service,
        "opt_out",
        None,
        "carrier",
    )
    # Membership decides: a number that leaves the service leaves its opt-outs; one that joins
    # another takes that service's.
    store.update_sender(AGENT, messaging_service_sid=None)
    assert not store.is_opted_out(USER, AGENT)
    assert store.inbound_context(project, USER, AGENT)[2] is False
    store.update_sender(OTHER_AGENT, messaging_service_sid=service)
    assert store.is_opted_out(USER, OTHER_AGENT)
    store.set_opt_out(project, USER, service, False, "START", T0 + timedelta(seconds=1))
    assert not store.is_opted_out(USER, OTHER_AGENT)
    assert [e.source for e in store.opt_out_history(project, USER, service)] == [
        "carrier",
        "keyword",
    ]


def test_opt_out_pairs_are_isolated(store: Store) -> None:
    assert store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0) is True
    assert store.is_opted_out(USER, OTHER_AGENT) is False
    assert store.is_opted_out("+14155550124", AGENT) is False
    assert store.set_opt_out("prj_a", USER, OTHER_AGENT, True, "END", T0) is True
    assert store.set_opt_out("prj_b", "+14155550124", "+14155550177", True, "STOP", T0) is True
    assert store.set_opt_out("prj_a", USER, OTHER_AGENT, False, "START", T0) is True
    assert store.is_opted_out(USER, AGENT) is True

    assert [(e.sender, e.action) for e in store.opt_out_history("prj_a", USER)] == [
        (AGENT, "opt_out"),
        (OTHER_AGENT, "opt_out"),
        (OTHER_AGENT, "opt_in"),
    ]
    assert [e.action for e in store.opt_out_history("prj_a", USER, OTHER_AGENT)] == [
        "opt_out",
        "opt_in",
    ]
    assert store.opt_out_history("prj_b", USER) == []
    assert len(store.opt_out_history("prj_b", "+14155550124")) == 1


def test_opt_out_changes_keep_their_source_and_api_key(store: Store) -> None:
    store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0)
    store.set_opt_out("prj_a", USER, AGENT, False, None, T0 + timedelta(seconds=1), "api", "key_1")
    store.set_opt_out(
        "prj_a", USER, AGENT, True, "twilio:21610", T0 + timedelta(seconds=2), "carrier"
    )
    store.set_opt_out("prj_a", USER, OTHER_AGENT, True, "ARRET", T0, source="import")
    history = store.opt_out_history("prj_a", USER)
    assert [(e.action, e.keyword, e.source, e.api_key_id) for e in history] == [
        ("opt_out", "STOP", "keyword", None),
        ("opt_in", None, "api", "key_1"),
        ("opt_out", "twilio:21610", "carrier", None),
        ("opt_out", "ARRET", "import", None),
    ]
    # A refused change (already in that state) records nothing, whatever its source.
    assert store.set_opt_out("prj_a", USER, AGENT, True, None, T0, "api", "key_2") is False
    assert len(store.opt_out_history("prj_a", USER)) == 4


def test_current_opt_outs_list_by_project_and_filters_in_pages(store: Store) -> None:
    users = [f"+1415555{n:04d}" for n in range(5)]
    for i, user in enumerate(users):
        store.set_opt_out("prj_a", user, AGENT, True, f"STOP{i}", T0 + timedelta(seconds=i))
    store.set_opt_out("prj_a", users[0], OTHER_AGENT, True, None, T0, "api", "key_1")
    store.set_opt_out("prj_b", users[0], "+14155550177", True, "STOP", T0)
    store.set_opt_out("prj_a", users[1], AGENT, False, "START", T0 + timedelta(minutes=1))

    everything, cursor = store.list_opt_outs("prj_a", limit=50)
    assert cursor is None
    assert [(o.recipient, o.sender, o.keyword, o.source) for o in everything] == [
        (users[0], AGENT, "STOP0", "keyword"),
        (users[2], AGENT, "STOP2", "keyword"),
        (users[3], AGENT, "STOP3", "keyword"),
        (users[4], AGENT, "STOP4", "keyword"),
        (users[0], OTHER_AGENT, None, "api"),
    ]
    assert everything[1].created_at == T0 + timedelta(seconds=2)
    assert {o.project_id for o in everything} == {"prj_a"}

    # Pages of two follow each other without gaps or repeats.
    seen, cursor = [], None
    while True:
        page, cursor = store.list_opt_outs("prj_a", cursor=cursor, limit=2)
        seen.extend(page)
        assert len(page) <= 2
        if cursor is None:
            break
    assert [(o.recipient, o.sender) for o in seen] == [(o.recipient, o.sender) for o in everything]

    by_user, _ = store.list_opt_outs("prj_a", recipient=users[0])
    assert [o.sender for o in by_user] == [AGENT, OTHER_AGENT]
    by_sender, _ = store.list_opt_outs("prj_a", sender=OTHER_AGENT)
    assert [o.recipient for o in by_sender] == [users[0]]
    pair, _ = store.list_opt_outs("prj_a", recipient=users[1], sender=AGENT)
    assert pair == []  # opted back in
    other, _ = store.list_opt_outs("prj_b")
    assert [(o.recipient, o.sender) for o in other] == [(users[0], "+14155550177")]
    every_project, _ = store.list_opt_outs(None)
    assert len(every_project) == 6

    # A pair opted out again keeps its place and shows its latest opt-out.
    store.set_opt_out("prj_a", users[1], AGENT, True, "QUIT", T0 + timedelta(minutes=2))
    again, _ = store.list_opt_outs("prj_a", recipient=users[1])
    assert [(o.keyword, o.created_at) for o in again] == [("QUIT", T0 + timedelta(minutes=2))]
    assert [o.recipient for o in store.list_opt_outs("prj_a")[0]][:2] == users[:2]

    with pytest.raises(ValueError):
        store.list_opt_outs("prj_a", cursor="not a cursor!")
    with pytest.raises(ValueError):
        store.list_opt_outs("prj_a", limit=0)
    assert store.list_opt_outs("prj_a", cursor="999999") == ([], None)


def test_opt_out_events_page_a_recipients_history(store: Store) -> None:
    for i in range(3):
        store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0 + timedelta(minutes=2 * i))
        store.set_opt_out("prj_a", USER, AGENT, False, "START", T0 + timedelta(minutes=2 * i + 1))
    store.set_opt_out("prj_a", "+14155550124", AGENT, True, "STOP", T0)
    store.set_opt_out("prj_b", USER, "+14155550177", True, "STOP", T0)

    seen, cursor = [], None
    while True:
        page, cursor = store.opt_out_events("prj_a", USER, cursor=cursor, limit=4)
        seen.extend(page)
        if cursor is None:
            break
    assert [e.action for e in seen] == ["opt_out", "opt_in"] * 3
    assert [e.at for e in seen] == [T0 + timedelta(minutes=i) for i in range(6)]
    assert all(e.id for e in seen) and len({e.id for e in seen}) == 6
    assert [e.id for e in seen] == [e.id for e in store.opt_out_history("prj_a", USER)]
    assert [e.sender for e in store.opt_out_events("prj_b", USER)[0]] == ["+14155550177"]
    assert store.opt_out_events("prj_b", "+14155550124") == ([], None)
    with pytest.raises(ValueError):
        store.opt_out_events("prj_a", USER, limit=0)


# -- metrics and blocks ---------------------------------------------------------------------------
def test_metrics_increment_per_day_and_range(store: Store) -> None:
    day1, day2, day3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 5)
    store.incr_metric("prj_a", "live", day1, "sent")
    store.incr_metric("prj_a", "live", day1, "sent", 4)
    store.incr_metric("prj_a", "live", day1, "delivered", 3)
    store.incr_metric("prj_a", "live", day2, "sent", 2)
    store.incr_metric("prj_a", "live", day3, "failed")
    store.incr_metric("prj_a", "sandbox", day1, "sent", 100)
    store.incr_metric("prj_b", "live", day1, "sent", 1000)

    assert store.get_metrics("prj_a", "live", day1, day3) == {
        day1: {"sent": 5, "delivered": 3},
        day2: {"sent": 2},
        day3: {"failed": 1},
    }
    assert store.get_metrics("prj_a", "live", day2, day2) == {day2: {"sent": 2}}
    assert store.get_metrics("prj_a", "live", date(2026, 3, 3), date(2026, 3, 4)) == {}
    assert store.get_metrics("prj_a", "sandbox", day1, day3) == {day1: {"sent": 100}}
    assert store.get_metrics("prj_b", "live", day1, day1) == {day1: {"sent": 1000}}


def test_block_number_keeps_the_later_deadline(store: Store) -> None:
    assert store.blocked_until("prj_a", USER) is None
    first = T0 + timedelta(minutes=10)
    store.block_number("prj_a", USER, first, "duplicate_text")
    assert store.blocked_until("prj_a", USER) == first
    store.block_number("prj_a", USER, T0 + timedelta(minutes=5), "rate")
    assert store.blocked_until("prj_a", USER) == first
    later = T0 + timedelta(minutes=20, microseconds=1)
    store.block_number("prj_a", USER, later, "rate")
    assert store.blocked_until("prj_a", USER) == later
    assert store.blocked_until("prj_b", USER) is None
    assert store.blocked_until("prj_a", "+14155550124") is None


# -- races (threads) ------------------------------------------------------------------------------
def test_claim_inbound_with_context_claims_once_and_reads_the_context(store: Store) -> None:
    sid = "SM" + "c" * 32
    opened = store.create_session(a_session(agent_number=AGENT))
    store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0)
    first = store.claim_inbound_with_context(sid, T0, "prj_a", USER, AGENT)
    assert first == (True, opened, None, True)
    assert first[1:] == store.inbound_context("prj_a", USER, AGENT)
    # Claimed already, by either method: nothing read.
    assert store.claim_inbound_with_context(sid, T0, "prj_a", USER, AGENT) == (
        False,
        None,
        None,
        False,
    )
    assert store.claim_inbound(sid, T0) is False
    other = "SM" + "d" * 32
    assert store.claim_inbound(other, T0) is True
    assert store.claim_inbound_with_context(other, T0, "prj_a", USER, AGENT)[0] is False
    # Inside a caller's transaction too.
    third = "SM" + "f" * 32
    claimed = store.atomic(
        lambda: store.claim_inbound_with_context(third, T0, "prj_a", USER, OTHER_AGENT)
    )
    assert claimed == (True, None, None, False)


def test_race_claim_inbound_with_context_has_one_winner(store: Store) -> None:
    sid = "SM" + "9" * 32
    results = outcomes(
        run_in_threads(
            store,
            lambda i: store.atomic(
                lambda: store.claim_inbound_with_context(sid, T0, "prj_a", USER, AGENT)[0]
            ),
        )
    )
    assert sorted(results, key=str) == [False] * (THREADS - 1) + [True]


def test_race_claim_inbound_has_one_winner(store: Store) -> None:
    sid = "SM" + "f" * 32
    results = outcomes(run_in_threads(store, lambda i: store.claim_inbound(sid, T0)))
    assert results.count(True) == 1
    assert results.count(False) == THREADS - 1


def test_race_opt_out_and_in_have_one_winner_each(store: Store) -> None:
    def flip(opted_out: bool) -> Callable[[int], bool]:
        keyword = "STOP" if opted_out else "START"
        return lambda i: store.set_opt_out("prj_a", USER, AGENT, opted_out, keyword, T0)

    results = outcomes(run_in_threads(store, flip(True)))
    assert results.count(True) == 1 and results.count(False) == THREADS - 1
    assert store.is_opted_out(USER, AGENT) is True
    assert [e.action for e in store.opt_out_history("prj_a", USER, AGENT)] == ["opt_out"]

    results = outcomes(run_in_threads(store, flip(False)))
    assert results.count(True) == 1 and results.count(False) == THREADS - 1
    assert store.is_opted_out(USER, AGENT) is False
    assert [e.action for e in store.opt_out_history("prj_a", USER, AGENT)] == [
        "opt_out",
        "opt_in",
    ]


def test_race_update_session_has_one_winner(store: Store) -> None:
    session = store.create_session(a_session())

    def update(i: int) -> Session:
        return store.update_session(session.id, 1, data={"winner": i})

    results = outcomes(run_in_threads(store, update))
    winners = [r for r in results if isinstance(r, Session)]
    assert len(winners) == 1
    assert sum(isinstance(r, StaleVersion) for r in results) == THREADS - 1
    stored = store.get_session(session.id)
    assert stored.version == 2
    assert stored.data == winners[0].data


def test_race_incr_metric_loses_no_increment(store: Store) -> None:
    day = date(2026, 3, 1)

    def add(i: int) -> None:
        for _ in range(25):
            store.incr_metric("prj_a", "live", day, "sent")

    outcomes(run_in_threads(store, add))
    assert store.get_metrics("prj_a", "live", day, day) == {day: {"sent": THREADS * 25}}


# -- races (processes, database backends) ---------------------------------------------------------
def _race_in_process(
    url: str,
    prefix: str,
    message_sid: str,
    session_id: str,
    barrier: Any,
    results: Any,
) -> None:
    """One competitor: its own store from the URL, released with the others by the barrier."""
    store = backends.create_store(url, table_prefix=prefix)
    try:
        store.connect()
        barrier.wait(timeout=60)
        claimed = store.claim_inbound(message_sid, T0)
        try:
            store.update_session(session_id, 1, state=WARNED, data={"pid": message_sid})
            updated = True
        except StaleVersion:
            updated = False
        opened = store.atomic(lambda: store.open_session(a_session(user_number=OTHER_USER)))
        results.put((claimed, updated, opened[0].id, opened[1]))
    except BaseException as exc:
        results.put(("error", repr(exc)))
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", DATABASE_BACKENDS)
def test_race_across_processes_has_one_winner(
    store: Store, store_url: str, table_prefix: str
) -> None:
    session = store.create_session(a_session())
    sid = "SM" + "9" * 32
    store.close()  # nothing of this process's connection crosses into the children
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(
            target=_race_in_process,
            args=(store_url, table_prefix, sid, session.id, barrier, results),
        )
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        outcomes_ = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=60)
        results.close()
        results.join_thread()
    assert all(process.exitcode == 0 for process in processes)
    errors = [o for o in outcomes_ if o[0] == "error"]
    assert not errors, errors
    assert [o[0] for o in outcomes_].count(True) == 1
    assert [o[1] for o in outcomes_].count(True) == 1
    # Two first messages at once, in processes: one session.
    assert [o[3] for o in outcomes_].count(True) == 1
    assert len({o[2] for o in outcomes_}) == 1
    stored = store.get_session(session.id)
    assert (stored.version, stored.state) == (2, WARNED)


# -- database backends only -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", DATABASE_BACKENDS)
def test_times_are_stored_as_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=2))
    local = datetime(2026, 6, 1, 14, 0, 0, 5, tzinfo=paris)
    store.block_number("prj_a", USER, local, "rate")
    stored = store.blocked_until("prj_a", USER)
    assert stored == local
    assert stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
    assert stored.hour == 12
    session = store.create_session(a_session(created_at=local, deadline_at=local))
    assert session.created_at.utcoffset() == timedelta(0)
    assert store.due_sessions(local) == [store.get_session(session.id)]
    assert store.due_sessions(local - timedelta(microseconds=1)) == []


@pytest.mark.parametrize("backend", DATABASE_BACKENDS)
def test_every_lookup_has_an_index(store: Store) -> None:
    database = store.database  # type: ignore[attr-defined]
    prefix = store.table_prefix  # type: ignore[attr-defined]
    expected = {
        "sender": [(("address",), True), (("project_id", "environment", "created_at"), False)],
        "template": [(("project_id", "title"), True)],
        "status_event": [(("twilio_sid", "status"), True)],
        "inbound_claim": [(("message_sid",), True)],
        "opt_out": [(("recipient", "sender"), True)],
        "opt_out_event": [(("project_id", "recipient", "sender"), False)],
        "metric": [(("project_id", "environment", "day", "name"), True)],
        "number_block": [(("project_id", "number"), True)],
        "session": [
            (("id",), True),
            (("project_id", "user_number", "agent_number", "seq"), False),
            (("project_id", "user_number", "agent_number", "open_mark"), True),
            (("state", "deadline_at"), False),
            (("state", "wake_at"), False),
            (("project_id", "seq"), False),
            (("project_id", "environment", "user_number", "seq"), False),
        ],
        "message": [
            (("id",), True),
            (("twilio_sid",), False),
            (("session_id", "seq"), False),
            (("status", "updated_at"), False),
        ],
        "api_key": [(("key_hash",), False)],
    }
    for table, wanted in expected.items():
        name = prefix + table
        found = {(tuple(i.columns), i.unique) for i in database.get_indexes(name)}
        primary = tuple(database.get_primary_keys(name))
        found.add((primary, True))
        for columns, unique in wanted:
            assert (columns, unique) in found, f"{name} lacks an index on {columns}"


@pytest.mark.parametrize("backend", DATABASE_BACKENDS)
def test_two_stores_on_different_urls_coexist(
    store: Store, tmp_path: Any, table_prefix: str
) -> None:
    # Same prefix, another database: each store's models must be bound to its own database only.
    other = backends.create_store(f"sqlite:///{tmp_path / 'other.db'}", table_prefix=table_prefix)
    other.create_schema()
    try:
        mine = store.create_account("Mine")
        theirs = other.create_account("Theirs")
        assert store.get_account(theirs.id) is None
        assert other.get_account(mine.id) is None
        assert store.get_account(mine.id) == mine
        assert other.get_account(theirs.id) == theirs
        assert store.claim_inbound("SM1", T0) is True
        assert other.claim_inbound("SM1", T0) is True  # a separate database
    finally:
        other.drop_schema()
        other.close()


@pytest.mark.parametrize("backend", DATABASE_BACKENDS[1:])  # SQLite has one writer: no deadlocks
def test_a_deadlock_victim_is_run_again(store: Store) -> None:
    # Plumbing of the Peewee store: two transactions lock two rows in opposite orders, the server
    # picks a victim, and the store runs the victim's transaction again instead of failing.
    day = date(2026, 3, 1)
    store.incr_metric("prj_a", "live", day, "a")
    store.incr_metric("prj_a", "live", day, "b")
    metric = store._m.Metric  # type: ignore[attr-defined]
    seq = {row.name: row.seq for row in metric.select()}
    attempts: list[str] = []
    both_hold_one = threading.Barrier(2)

    def crossing(first: str, second: str) -> Callable[[], None]:
        def work() -> None:
            attempts.append(first)
            metric.update(value=metric.value + 1).where(metric.seq == seq[first]).execute()
            if len(attempts) <= 2:  # only the first round meets, so that it deadlocks
                both_hold_one.wait(timeout=30)
            metric.update(value=metric.value + 1).where(metric.seq == seq[second]).execute()

        return lambda: store._atomically(work)  # type: ignore[attr-defined]

    runs = [crossing("a", "b"), crossing("b", "a")]
    results = run_in_threads(store, lambda i: runs[i](), count=2)
    assert results == [None, None]
    # A victim ran again (a retry can lose once more to the other transaction, hence ">=").
    assert len(attempts) >= 3
    assert store.get_metrics("prj_a", "live", day, day) == {day: {"a": 3, "b": 3}}


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_sqlite_in_memory_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="in-memory"):
        backends.create_store(url)


def test_returned_records_are_copies(store: Store) -> None:
    session = a_session(data={"k": [1]})
    created = store.create_session(session)
    session.data["k"].append(2)
    created.data["k"].append(3)
    fetched = store.get_session(session.id)
    fetched.data["k"].append(4)
    assert store.get_session(session.id).data == {"k": [1]}
    assert replace(fetched, data={"k": [1]}) == store.get_session(session.id)


# -- the send job's two calls ---------------------------------------------------------------------
def test_claim_send_moves_queued_to_sending_and_reads_what_the_send_needs(store: Store) -> None:
    project_id = a_project(store)
    store.add_sender(a_sender(project_id, AGENT, country="US", registration="registered"))
    message = store.add_message(a_message(project_id=project_id, attempts=1))
    at = T0 + timedelta(seconds=5)

    claim = store.claim_send(message.id, at)

    assert claim is not None
    assert claim.message == replace(message, status=SENDING, attempts=2, updated_at=at)
    assert store.get_message(message.id) == claim.message
    assert claim.opted_out is False
    assert claim.project == store.get_project(project_id)
    assert claim.sender == store.get_sender(AGENT)
    # Of two claims, one wins; a message that is not queued (or absent) is nobody's to send.
    assert store.claim_send(message.id, at) is None
    assert store.claim_send("msg_missing", at) is None
    assert store.get_message(message.id).attempts == 2


def test_claim_send_reads_the_opt_out_of_the_messages_own_sender(store: Store) -> None:
    service = "MG" + "a" * 32
    store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0)
    opted_out = store.add_message(a_message())
    other_number = store.add_message(a_message(from_=OTHER_AGENT))
    through_service = store.add_message(a_message(from_=None, messaging_service_sid=service))
    store.set_opt_out("prj_a", USER, service, True, "STOP", T0)

    first = store.claim_send(opted_out.id, T0)
    second = store.claim_send(other_number.id, T0)
    third = store.claim_send(through_service.id, T0)

    assert first is not None and first.opted_out is True
    assert second is not None and second.opted_out is False
    assert third is not None and third.opted_out is True
    # Neither the project ("prj_a" was never created) nor the senders exist: None, not an error.
    assert (first.project, first.sender, third.sender) == (None, None, None)


def test_claim_send_reads_the_opt_out_of_the_senders_messaging_service(store: Store) -> None:
    project_id = a_project(store)
    service = "MG" + "b" * 32
    store.add_sender(a_sender(project_id, service, kind="messaging_service"))
    store.add_sender(a_sender(project_id, AGENT, messaging_service_sid=service))
    store.add_sender(a_sender(project_id, OTHER_AGENT))
    # The member's own row, opted back in, must not hide its service's opt-out.
    store.set_opt_out(project_id, USER, AGENT, True, "STOP", T0)
    store.set_opt_out(project_id, USER, AGENT, False, "START", T0)
    store.set_opt_out(project_id, USER, service, True, "STOP", T0)
    member = store.add_message(a_message(project_id=project_id))
    outside = store.add_message(a_message(project_id=project_id, from_=OTHER_AGENT))
    other_user = store.add_message(a_message(project_id=project_id, to="+14155550124"))

    claims = [store.claim_send(m.id, T0) for m in (member, outside, other_user)]

    assert [c.opted_out for c in claims] == [True, False, False]
    assert claims[0].sender == store.get_sender(AGENT)
    assert claims[0].sender.messaging_service_sid == service


def test_claim_send_race_has_one_winner(store: Store) -> None:
    message = store.add_message(a_message())
    results = run_in_threads(store, lambda i: store.claim_send(message.id, T0))
    assert not [r for r in results if isinstance(r, BaseException)]
    assert len([r for r in results if r is not None]) == 1
    assert store.get_message(message.id).attempts == 1


def test_record_sent_records_counts_and_returns_callbacks_that_raced_ahead(store: Store) -> None:
    day = T0.date()
    message = store.add_message(
        a_message(status=SENDING, error_code=20429, error_message="Too Many Requests")
    )
    quiet = store.add_message(a_message(status=SENDING))
    store.add_status_event(StatusEvent("SM1", DELIVERED, T0))
    at = T0 + timedelta(seconds=1)

    sent, raced = store.record_sent(message.id, "SM1", at)
    quiet_sent, quiet_raced = store.record_sent(quiet.id, "SM2", at)

    expected = replace(
        message, status=SENT, twilio_sid="SM1", error_code=None, error_message=None, updated_at=at
    )
    assert sent == expected == store.get_message(message.id)
    assert [(e.twilio_sid, e.status) for e in raced] == [("SM1", DELIVERED)]
    assert quiet_sent is not None and quiet_raced == []
    assert store.get_metrics("prj_a", "live", day, day) == {day: {"sent": 2}}
    # Only a `sending` message is recorded: nothing changes, nothing is counted.
    assert store.record_sent(message.id, "SM3", at) == (None, [])
    assert store.record_sent("msg_missing", "SM4", at) == (None, [])
    assert store.get_message(message.id).twilio_sid == "SM1"
    assert store.get_metrics("prj_a", "live", day, day) == {day: {"sent": 2}}


# -- idempotency keys -----------------------------------------------------------------------------
def an_idempotent_request(token: str, at: datetime = T0, **fields: Any) -> IdempotentRequest:
    values: dict[str, Any] = {
        "id": "a" * 64,
        "project_id": "prj_a",
        "route": "polysms_outbound.send_outbound",
        "fingerprint": "f" * 64,
        "token": token,
        "created_at": at,
        "expires_at": at + timedelta(hours=24),
    }
    values.update(fields)
    return IdempotentRequest(**values)


def test_an_idempotency_key_is_held_by_its_first_claim_until_answered(store: Store) -> None:
    first = an_idempotent_request("t1")
    assert store.claim_idempotent_request(first, T0 - timedelta(minutes=2)) == first
    held = store.claim_idempotent_request(an_idempotent_request("t2"), T0 - timedelta(minutes=2))
    assert held.token == "t1" and held.response is None
    assert not store.finish_idempotent_request(first.id, "t2", {"status": 200})
    response = {"status": 202, "body": '{"a": 1}', "headers": {"Location": "/x"}}
    assert store.finish_idempotent_request(first.id, "t1", response)
    assert not store.finish_idempotent_request(first.id, "t1", {"status": 500})
    later = store.claim_idempotent_request(an_idempotent_request("t3", T0 + timedelta(hours=1)), T0)
    assert (later.token, later.response, later.created_at) == ("t1", response, T0)
    assert not store.release_idempotent_request(first.id, "t1")  # answered: kept


def test_an_idempotency_key_is_free_again_once_expired_released_or_abandoned(
    store: Store,
) -> None:
    first = an_idempotent_request("t1")
    store.claim_idempotent_request(first, T0)
    # Released by its own try only.
    assert not store.release_idempotent_request(first.id, "t2")
    assert store.release_idempotent_request(first.id, "t1")
    assert store.claim_idempotent_request(an_idempotent_request("t2"), T0).token == "t2"
    # Abandoned: held without an answer since before the limit.
    soon = T0 + timedelta(minutes=1)
    assert store.claim_idempotent_request(an_idempotent_request("t3", soon), T0).token == "t2"
    late = T0 + timedelta(minutes=3)
    taken = store.claim_idempotent_request(
        an_idempotent_request("t4", late), T0 + timedelta(1 / 1440)
    )
    assert taken.token == "t4"
    assert not store.finish_idempotent_request(first.id, "t2", {"status": 202})
    # Answered, then expired.
    assert store.finish_idempotent_request(first.id, "t4", {"status": 202})
    expiry = late + timedelta(hours=24)
    kept = store.claim_idempotent_request(
        an_idempotent_request("t5", expiry - timedelta(seconds=1)), T0
    )
    assert kept.token == "t4"
    assert store.claim_idempotent_request(an_idempotent_request("t6", expiry), T0).token == "t6"


def test_expired_idempotency_keys_are_purged(store: Store) -> None:
    for i in range(3):
        store.claim_idempotent_request(an_idempotent_request("t", id=f"{i}" * 64), T0)
    fresh = an_idempotent_request("t", T0 + timedelta(hours=2), id="f" * 64)
    store.claim_idempotent_request(fresh, T0)
    end = T0 + timedelta(hours=24)
    assert store.purge_idempotent_requests(end - timedelta(seconds=1)) == 0
    assert store.purge_idempotent_requests(end, limit=2) == 2
    assert store.purge_idempotent_requests(end, limit=2) == 1
    assert store.purge_idempotent_requests(end + timedelta(hours=5)) == 1


def test_one_of_concurrent_idempotency_claims_wins(store: Store) -> None:
    barrier = threading.Barrier(THREADS)
    tokens: list[str] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        barrier.wait()
        try:
            held = store.claim_idempotent_request(an_idempotent_request(f"t{i}"), T0)
        finally:
            store.close()
        with lock:
            tokens.append(held.token)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(tokens) == THREADS
    assert len(set(tokens)) == 1  # every caller sees the one winner
