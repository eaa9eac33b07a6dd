"""The PostgreSQL store's round-trip savings, on the real server: pipelined transactions,
prepared statements, and the pool that does not ping a connection it just had back.

Each saving must keep the behaviour: these tests count the messages sent to the server (one
message may hold several statements) and check what was written.
"""

from __future__ import annotations

import dataclasses

import pytest

from flask_polysms import backends
from flask_polysms.clock import utcnow
from flask_polysms.ports.store import Conflict
from flask_polysms.records import Message, Session, new_id

pytestmark = pytest.mark.services

USER, AGENT = "+14155552671", "+14155550100"
# For the tests through the routes: the numbers provisioned, and users writing to them.
AGENT_NUMBERS = (AGENT, "+14155550101", "+14155550102")
USER_NUMBERS = ("+14155552674", "+14155552675", "+14155552676")


@pytest.fixture
def store(fresh_postgres_url):
    store = backends.create_store(fresh_postgres_url)
    store.create_schema()
    store.connect()
    yield store
    store.close()
    store.disconnect()


class Messages:
    """Counts the messages the store sends to PostgreSQL (Peewee's query hook: one per
    ``cursor.execute``), with their text."""

    def __init__(self, store) -> None:
        self.sent: list[str] = []
        store.database.query_hooks = [lambda event: self.sent.append(event.sql)]

    def __len__(self) -> int:
        return len(self.sent)


def a_session() -> Session:
    now = utcnow()
    return Session(
        id=new_id("conv_"),
        project_id="prj_a",
        environment="live",
        user_number=USER,
        agent_number=AGENT,
        created_at=now,
        last_activity_at=now,
    )


def a_message(session_id: str, body: str = "Hi 100% ✓") -> Message:
    now = utcnow()
    return Message(
        id=new_id("msg_"),
        project_id="prj_a",
        environment="live",
        session_id=session_id,
        direction="outbound",
        kind="greeting",
        body=body,
        to=USER,
        from_=AGENT,
        created_at=now,
        updated_at=now,
    )


def test_a_transaction_of_new_rows_is_one_message(store):
    messages = Messages(store)
    session = a_session()

    def write():
        store.create_session(session)
        store.add_message(a_message(session.id))
        store.incr_metric("prj_a", "live", utcnow().date(), "conversations")

    store.atomic(write)

    assert len(messages) == 1
    assert messages.sent[0].startswith("BEGIN;") and messages.sent[0].endswith("COMMIT")
    # Written as given (a literal % and non-ASCII text survive the interpolation).
    assert [m.body for m in store.list_messages(session.id)] == ["Hi 100% ✓"]
    today = utcnow().date()
    assert store.get_metrics("prj_a", "live", today, today) == {today: {"conversations": 1}}


def test_a_transaction_that_wrote_nothing_sends_nothing(store):
    messages = Messages(store)
    assert store.atomic(lambda: 42) == 42
    assert len(messages) == 0


def test_a_waiting_insert_that_fails_rolls_the_whole_transaction_back(store):
    session = store.create_session(a_session())
    taken = store.add_message(a_message(session.id))
    other = a_session()

    def write():
        store.create_session(other)
        store.add_message(dataclasses.replace(a_message(session.id), id=taken.id))

    with pytest.raises(Exception) as raised:
        store.atomic(write)
    assert "duplicate key" in str(raised.value)
    assert store.get_session(other.id) is None
    # The connection is usable again, with its prepared statements.
    assert store.get_session(session.id) == session


def test_statements_are_prepared_once_per_connection(store):
    session = store.create_session(a_session())
    store.get_session(session.id)
    messages = Messages(store)
    for _ in range(3):
        assert store.get_session(session.id) == session
    assert len(messages) == 3
    assert all(sql.startswith("EXECUTE ") for sql in messages.sent)


def test_a_statement_postgresql_cannot_prepare_runs_unprepared_after_one_failure(store):
    database = store.database
    sql = "SELECT %s IS NULL"  # no type can be inferred for the parameter: PREPARE fails
    with pytest.raises(Exception, match="could not determine data type"):
        database.execute_statement(sql, [None])
    assert database.execute_statement(sql, [None]).fetchone() == (True,)
    # The connection's other prepared statements were dropped and come back.
    session = store.create_session(a_session())
    assert store.get_session(session.id) == session


def test_a_connection_back_in_the_pool_moments_ago_is_not_pinged(store):
    store.get_session("conv_none")
    store.close()  # back to the pool
    pings: list[str] = []
    original = store.database._adapter.is_connection_closed
    store.database._adapter.is_connection_closed = lambda conn: (
        pings.append("ping") or original(conn)
    )
    store.connect()
    store.get_session("conv_none")
    assert pings == []
    # After PING_AFTER seconds idle it is checked (and replaced when dead).
    store.close()
    store.database.PING_AFTER = 0
    store.connect()
    assert pings == ["ping"]


def test_the_last_agent_lookup_stays_on_the_users_index_in_a_generic_plan(store):
    """After five runs PostgreSQL may keep a generic plan for a prepared statement, one that
    cannot see the values: the last-agent lookup then walked every session of the project
    (0.9 -> 2.9 ms after 8,000 outbound requests). Its index (ending in seq) serves it in any
    plan, even before the table has statistics."""
    sessions = [dataclasses.replace(a_session(), user_number=f"+1415{i:07d}") for i in range(3000)]
    store.atomic(lambda: [store.create_session(s) for s in sessions])
    database = store.database
    database.execute_sql("SET plan_cache_mode = force_generic_plan")  # as after five runs
    checks = {"senders_for_user": ["prj_a", "live", USER, "prj_a", "live"]}
    store.senders_for_user("prj_a", "live", USER)
    for statement, args in checks.items():
        sql = store._statements[statement][0]  # noqa: SLF001 - the statement under test
        name = database._statement_names[sql]  # noqa: SLF001
        markers = ", ".join(["%s"] * len(args))
        plan = "\n".join(
            row[0] for row in database.execute_sql(f"EXPLAIN EXECUTE {name}({markers})", args)
        )
        # The session is found through an index on the user's number, not along the project.
        session_scan = [line for line in plan.splitlines() if "polysms_session" in line]
        assert session_scan and "session_list" not in plan, plan
        assert "user_number" in plan.split("Filter")[0], plan


def test_every_prepared_statement_finds_its_rows_by_key_in_a_generic_plan(
    make_sms, fresh_postgres_url
):
    """PostgreSQL may keep one generic plan for a prepared statement after five runs, a plan that
    cannot see the values. The statements the routes and jobs prepare must each find their rows
    through a key's index in that plan: no sequential scan of the sessions or messages, and no
    walk along a project's sessions (the session_list index) for one user's lookup."""
    import re

    import psycopg2

    schema = backends.create_store(fresh_postgres_url)
    schema.create_schema()
    # Other projects' rows, so that the tables span many pages (no statistics yet, as at first).
    many = [dataclasses.replace(a_session(), user_number=f"+1415{i:07d}") for i in range(3000)]
    schema.atomic(lambda: [schema.create_session(s) for s in many])
    schema.atomic(lambda: [schema.add_message(a_message(s.id)) for s in many])
    schema.disconnect()
    sms = make_sms(
        agent=lambda conv, text: f"echo {text}",
        numbers=AGENT_NUMBERS,
        POLYSMS_STORAGE_URL=fresh_postgres_url,
        POLYSMS_RATE_LIMIT="1000 per second",
    )
    # The request and job paths: outbound (sender chosen and given), inbound routed to the
    # session and answered, a new user writing first, a status callback, STOP, reads.
    sent = sms.send_ok(USER_NUMBERS[0], "Hi")
    sms.send_ok(USER_NUMBERS[1], "Hi", agent_number=AGENT_NUMBERS[2])
    sms.inbound_ok(USER_NUMBERS[0], "Hello back", to=sent["agent_number"])
    sms.inbound_ok(USER_NUMBERS[2], "Hi, who is this?")
    greeting = sms.store.list_messages(sent["conversation_id"])[0]
    assert sms.status_callback(greeting.twilio_sid, "delivered").status_code == 200
    sms.inbound_ok(USER_NUMBERS[1], "STOP", to=AGENT_NUMBERS[2])
    sms.send_ok(USER_NUMBERS[1], "Still there?", agent_number=AGENT_NUMBERS[2])
    sms.conversation(sent["conversation_id"])
    sms.metrics()
    statements = list(sms.store.database._statement_names)  # noqa: SLF001 - all it prepared
    assert len(statements) >= 15, statements

    checked = psycopg2.connect(fresh_postgres_url)
    checked.autocommit = True
    try:
        with checked.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            # Before the tables have statistics (a new deployment) and after ANALYZE.
            for stage in ("no statistics", "analyzed"):
                if stage == "analyzed":
                    cursor.execute("ANALYZE")
                for i, sql in enumerate(statements):
                    count = sql.count("%s")
                    numbered = iter(range(1, count + 1))
                    body = re.sub(r"%s", lambda _, n=numbered: f"${next(n)}", sql)
                    name = f"check_{stage[0]}_{i}"
                    cursor.execute(f"PREPARE {name} AS {body.replace('%%', '%')}")
                    values = f"({', '.join(['NULL'] * count)})" if count else ""
                    cursor.execute(f"EXPLAIN EXECUTE {name}{values}")
                    plan = "\n".join(row[0] for row in cursor.fetchall())
                    for scan in ("Seq Scan on polysms_session", "Seq Scan on polysms_message"):
                        assert scan not in plan, f"{stage}: {sql}\n{plan}"
                    assert "session_list" not in plan, f"{stage}: {sql}\n{plan}"
    finally:
        checked.close()


def test_an_outbound_request_reads_its_credentials_and_senders_in_one_message(
    make_sms, fresh_postgres_url
):
    """One read before the writes: the credentials, the senders and the user's last number come
    in one message; the writes follow in one transaction. The number the user knows is still the
    one chosen."""
    schema = backends.create_store(fresh_postgres_url)
    schema.create_schema()
    schema.disconnect()
    sms = make_sms(numbers=AGENT_NUMBERS, POLYSMS_STORAGE_URL=fresh_postgres_url)
    first = sms.send_ok(USER, "first", agent_number=AGENT_NUMBERS[1])
    messages = Messages(sms.state.store)

    again = sms.send_ok(USER, "second")

    shown = [sql[:60] for sql in messages.sent]
    begun = next(i for i, sql in enumerate(messages.sent) if sql.startswith("BEGIN"))
    committed = next(i for i, sql in enumerate(messages.sent) if sql.endswith("COMMIT"))
    # One read, then the transaction, whose BEGIN leaves with its first write.
    assert begun == 1 and begun <= committed, shown
    assert again["agent_number"] == first["agent_number"] == AGENT_NUMBERS[1]
    stored = sms.state.store.get_session(again["conversation_id"])
    assert stored.agent_number == AGENT_NUMBERS[1]
    assert [m.body for m in sms.state.store.list_messages(stored.id)] == ["second"]


# -- prepared statements after failures -----------------------------------------------------------
@pytest.fixture
def pooled(fresh_postgres_url):
    """A pooled store whose schema exists, with no connection opened yet (a fresh process)."""
    schema = backends.create_store(fresh_postgres_url)
    schema.create_schema()
    schema.disconnect()
    store = backends.create_store(fresh_postgres_url)
    yield store
    store.disconnect()


def _write_a_conversation(store) -> Session:
    session = a_session()

    def write():
        store.create_session(session)
        store.add_message(a_message(session.id))

    store.atomic(write)
    return session


def _same_pooled_connection(store, conn) -> None:
    """Give the connection back to the pool and take it again: the pool hands out the same one."""
    store.close()
    store.connect()
    assert store.database.connection() is conn


def _unencodable_message(store, session: Session) -> None:
    store.add_message(a_message(session.id, body="\ud800"))  # a lone surrogate


def _python_error(store, session: Session) -> None:
    raise RuntimeError("the caller failed before the transaction's next statement")


@pytest.mark.parametrize("failure", [_unencodable_message, _python_error])
def test_a_write_that_never_left_does_not_break_the_connections_prepared_statements(
    pooled, failure
):
    """The first write on a fresh pooled connection fails before its message is sent (a value
    psycopg2 cannot encode, any Python exception in the transaction): its PREPAREs went with the
    rolled-back message, so they were never prepared. The next writes on that same connection
    prepare again and succeed (they failed with 'prepared statement "polysms_1" does not exist',
    for every request the connection served until the pool renewed it)."""
    pooled.connect()
    conn = pooled.database.connection()
    broken = a_session()

    def write():
        pooled.create_session(broken)  # waits for the next statement, its PREPARE with it
        failure(pooled, broken)

    with pytest.raises((UnicodeEncodeError, RuntimeError)):
        pooled.atomic(write)
    assert pooled.get_session(broken.id) is None

    for _ in range(3):
        _same_pooled_connection(pooled, conn)
        session = _write_a_conversation(pooled)
        assert pooled.get_session(session.id) == session
        assert [m.body for m in pooled.list_messages(session.id)] == ["Hi 100% ✓"]


def test_a_connection_that_lost_a_prepared_statement_recovers_after_one_failure(pooled):
    """Whatever the cause (here: deallocated behind the store's back), a statement that fails on
    a connection makes it prepare afresh: one request fails, not every request until the pool
    renews the connection."""
    pooled.connect()
    session = _write_a_conversation(pooled)
    assert pooled.get_session(session.id) == session
    pooled.database.execute_sql("DEALLOCATE ALL")
    with pytest.raises(Exception, match="does not exist"):
        pooled.get_session(session.id)
    for _ in range(3):
        assert pooled.get_session(session.id) == session
        assert _write_a_conversation(pooled)


def test_a_failed_insert_leaves_its_statements_prepared(pooled):
    """A duplicate key is the data's fault, not the statement's: an insert that fails in the
    message preparing it is prepared again next time and runs as EXECUTE, not as a plain
    statement for the rest of the process."""
    pooled.connect()
    session = _write_a_conversation(pooled)
    (taken,) = pooled.list_messages(session.id)
    pooled.disconnect()  # a fresh connection: the next insert carries its PREPARE
    pooled.connect()
    with pytest.raises(Conflict):
        pooled.add_message(dataclasses.replace(a_message(session.id), id=taken.id))
    messages = Messages(pooled)
    pooled.add_message(a_message(session.id))
    pooled.add_message(a_message(session.id))
    assert messages.sent[-1].startswith("EXECUTE "), messages.sent
    assert len(pooled.list_messages(session.id)) == 3
