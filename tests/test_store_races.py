"""The Store contract under concurrency: 16 threads on one store (each thread on its own
connection) and, for the database backends, 4 processes each building its own store from the URL,
racing to claim an inbound message, flip an opt-out, update a session, count a metric or open a
session; exactly one wins and nothing is lost.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from store_contract_support import (
    AGENT,
    DATABASE_BACKENDS,
    T0,
    THREADS,
    USER,
    a_session,
    backend_fixture,  # noqa: F401
    outcomes,
    run_in_threads,
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
    table_prefix_fixture,  # noqa: F401
)

from flask_polysms import backends
from flask_polysms.ports.store import StaleVersion, Store
from flask_polysms.records import WARNED, Session

OTHER_USER = "+14155550124"
PROCESSES = 4


# -- races (threads) ------------------------------------------------------------------------------
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
