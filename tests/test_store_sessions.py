"""The Store contract on sessions, run against every backend: creating, opening and finding the
open session of a number pair, turn claims, compare-and-set updates, listing, due and waking
timers, and the combined reads of inbound and outbound handling (sender, block and opt-out).
"""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

import pytest
from store_contract_support import (
    AGENT,
    DATABASE_BACKENDS,
    OTHER_AGENT,
    T0,
    THREADS,
    USER,
    a_message,
    a_project,
    a_sender,
    a_session,
    backend_fixture,  # noqa: F401
    outcomes,
    run_in_threads,
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
    table_prefix_fixture,  # noqa: F401
)

from flask_polysms.ports.store import NotFound, StaleVersion, Store
from flask_polysms.records import ACTIVE, CLOSED, INBOUND, RECEIVED, WARNED


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
