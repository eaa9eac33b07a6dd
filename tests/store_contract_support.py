"""What the Store contract tests share: the backend-parametrized store fixture, record builders,
constants and the thread-race helpers.

Backends: ``memory``, ``sqlite`` (a temporary file), ``postgresql`` and ``mysql`` (the servers of
conftest.py; skipped when absent, a failure under CI=true). Each test gets a fresh schema under its
own table prefix, dropped afterwards, so nothing leaks between tests or into other suites sharing
the servers.

A test module uses the fixtures (``backend``, ``store_url``, ``table_prefix``, ``store``) by
importing their functions, ``backend_fixture`` and so on, from here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from store_backends import BACKENDS, PREFIX, storage_url

from flask_polysms import backends
from flask_polysms.ports.store import StaleVersion, Store
from flask_polysms.records import OUTBOUND, Message, Sender, Session, new_id

DATABASE_BACKENDS = BACKENDS[1:]

UTC = timezone.utc
# Microseconds on purpose: a backend that keeps whole seconds fails the equality checks.
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
USER = "+14155550123"
AGENT = "+14155550100"
OTHER_AGENT = "+14155550199"
THREADS = 16


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(name="backend", params=BACKENDS)
def backend_fixture(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(name="store_url")
def store_url_fixture(request: pytest.FixtureRequest, backend: str, tmp_path: Any) -> str:
    """Up-to-date empty tables: a new SQLite file, the servers' test database emptied."""
    return storage_url(request, backend, tmp_path)


@pytest.fixture(name="table_prefix")
def table_prefix_fixture() -> str:
    return PREFIX


@pytest.fixture(name="store")
def store_fixture(store_url: str, table_prefix: str) -> Iterator[Store]:
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
