"""The Store contract (flask_polysms.ports.store.Store), one suite run unchanged against every
backend: the schema's life cycle, accounts, API keys, projects, senders, connectors, templates,
metrics and number blocks, and what only the database backends promise (UTC times, indexes,
separate databases, deadlock retries).

The other parts of the contract are in the other ``tests/test_store_*.py`` files; their fixtures
and builders are in ``tests/store_contract_support.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from freezegun import freeze_time
from store_contract_support import (
    AGENT,
    DATABASE_BACKENDS,
    OTHER_AGENT,
    T0,
    USER,
    UTC,
    a_project,
    a_sender,
    a_session,
    backend_fixture,  # noqa: F401
    run_in_threads,
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
    table_prefix_fixture,  # noqa: F401
)

from flask_polysms import backends
from flask_polysms.ports.store import Conflict, NotFound, Store
from flask_polysms.records import Template, new_id


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
