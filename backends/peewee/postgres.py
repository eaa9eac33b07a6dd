"""What only PostgreSQL does: transactions in few round trips, prepared statements, and the send
job's two data-modifying statements.

Everything here uses psycopg2's public API and plain SQL (``PREPARE``/``EXECUTE``); the store
reaches it through the same calls on every database (``execute_statement`` and ``defer_sql``
exist only here, and the store falls back to ``execute_sql`` without them).
"""

from __future__ import annotations

import itertools
import re
import time
import weakref
from types import SimpleNamespace
from typing import Any

import peewee as pw
from playhouse.pool import PooledPostgresqlDatabase

from .databases import _ValuesNotLogged

_DEALLOCATE = "DEALLOCATE ALL"
# Errors of a PREPARE that the same statement, sent with its values written in, would not meet:
# no type can be inferred for a parameter. Such statements run unprepared from then on.
_UNPREPARABLE_PG_CODES = frozenset({"42P18", "42P08", "42725"})


def _prepare_parts(parts: list[str]) -> list[str]:
    """The names a message's ``PREPARE`` parts prepare, and ``DEALLOCATE ALL`` if it is there."""
    return [
        part if part == _DEALLOCATE else part.split(" ", 2)[1]
        for part in parts
        if part.startswith(("PREPARE ", _DEALLOCATE))
    ]


class _PipelinedPostgres(_ValuesNotLogged, pw.PostgresqlDatabase):
    """PostgreSQL with transactions in as few round trips, and statements at as little server
    work, as the work allows.

    ``BEGIN`` is not sent on its own: it leaves with the transaction's first statement. Writes whose
    result nobody reads (:meth:`defer_sql`) wait for the next statement, or for ``COMMIT``, and go
    with it: PostgreSQL runs several ``;``-separated statements sent in one message in order, and
    stops at the first error (which then rolls the transaction back). A transaction that only
    writes is one round trip; one that wrote nothing sends nothing.

    The store's own statements (:meth:`execute_statement`, :meth:`defer_sql`) are prepared on each
    connection the first time they run there (``PREPARE``, in the same message), then run with
    ``EXECUTE``: the server parses them once per connection instead of once per call, and plans
    them once too when one plan fits every value (PostgreSQL's own choice, after five runs).

    A statement counts as prepared on a connection only once a message holding its ``PREPARE``
    ran there without error (``PREPARE`` outlives a rollback). A ``PREPARE`` waiting in an unsent
    message is pending only: a rollback, or any exception before the message leaves (a value
    that cannot be encoded, say), drops it with the message, and the statement is prepared again
    next time. A message that fails leaves the connection's prepared statements unknown: its next
    message starts with ``DEALLOCATE ALL`` and prepares what it runs again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SQL text -> its server-side name, and back; names come from a counter so that two
        # threads naming two statements at once cannot give both the same name.
        self._statement_names: dict[str, str] = {}
        self._statement_sql: dict[str, str] = {}
        self._names = itertools.count(1)
        # Statements whose PREPARE failed (run as plain statements from then on).
        self._unpreparable: set[str] = set()
        # Per connection: the names the server has (None: unknown after an error, deallocate).
        self._prepared_on: weakref.WeakKeyDictionary[Any, set[str] | None] = (
            weakref.WeakKeyDictionary()
        )

    # The thread's unsent message: ``unsent`` (None outside a transaction), ``begun`` (the server
    # saw BEGIN), ``pending`` (the names, and DEALLOCATE ALL, that its PREPAREs will prepare).
    def _hold(self, unsent: list[str] | None, begun: bool) -> None:
        state = self._state
        state.unsent, state.begun, state.pending = unsent, begun, set()

    def begin(self, isolation_level: Any = None) -> None:
        # Connect now, as sending BEGIN would: connecting later, inside the transaction, would
        # reset Peewee's transaction stack under the open transaction.
        self.connection()
        if isolation_level is not None or self._isolation_level:
            super().begin(isolation_level)
            self._hold([], True)
            return
        self._hold(["BEGIN"], False)

    def _take_unsent(self) -> list[str]:
        unsent = getattr(self._state, "unsent", None) or []
        if unsent:
            self._hold([], True)
        return unsent

    def _run_message(self, sql: str, params: Any, parts: list[str]) -> Any:
        """Send one message (``parts``: its statements, to account for its PREPAREs)."""
        conn = self.connection()
        try:
            cursor = self._execute_unlogged(sql, params)
        except BaseException as exc:
            # Which statements ran is unknown, and the server's prepared statements with them
            # (a failed EXECUTE may even say one is missing): prepare afresh on this connection.
            self._prepared_on[conn] = None
            code = getattr(getattr(exc, "orig", None), "pgcode", None)
            if code in _UNPREPARABLE_PG_CODES:
                # Maybe a statement PostgreSQL cannot prepare. Those run unprepared from now on;
                # the caller's request fails once, not always.
                for name in _prepare_parts(parts):
                    if name != _DEALLOCATE:
                        self._unpreparable.add(self._statement_sql[name])
            raise
        prepared = _prepare_parts(parts)
        if prepared:
            done = self._prepared_on.get(conn, set())
            for name in prepared:
                if name == _DEALLOCATE:
                    done = set()
                elif done is not None:
                    done.add(name)
            self._prepared_on[conn] = done
        return cursor

    def _send(self, parts: list[str]) -> Any:
        """One message of several interpolated statements; the cursor holds the last's result."""
        # Interpolated already, so a literal % must reach psycopg2 doubled.
        return self._run_message("; ".join(parts).replace("%", "%%"), None, parts)

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        self._log_statement(sql, params)
        if getattr(self._state, "unsent", None):
            text = self._interpolated(sql, params)  # before taking the message: it may raise
            return self._send([*self._take_unsent(), text])
        return self._execute_unlogged(sql, params)

    def execute_statement(self, sql: str, params: Any) -> Any:
        """Run one of the store's statements (prepared on this connection when it can be)."""
        self._log_statement(sql, params)
        prepare, execute = self._prepared(sql)
        if execute is None:
            if getattr(self._state, "unsent", None):
                text = self._interpolated(sql, params)
                return self._send([*self._take_unsent(), text])
            return self._execute_unlogged(sql, params)
        if not prepare and not getattr(self._state, "unsent", None):
            return self._run_message(execute, params, [])
        # Everything that can raise before the message leaves runs before it is taken.
        text = self._interpolated(execute, params)
        return self._send([*self._take_unsent(), *prepare, text])

    def defer_sql(self, sql: str, params: Any) -> None:
        """Run a write whose result is not needed: later, with the next statement, inside a
        transaction; at once outside one."""
        unsent = getattr(self._state, "unsent", None)
        if unsent is None or not self.in_transaction():
            self.execute_statement(sql, params)
            return
        self._log_statement(sql, params)
        prepare, execute = self._prepared(sql)
        text = self._interpolated(sql if execute is None else execute, params)
        # Nothing was changed before this point: a value that cannot be sent left no trace.
        unsent.extend(prepare)
        unsent.append(text)
        self._state.pending.update(_prepare_parts(prepare))

    def _prepared(self, sql: str) -> tuple[list[str], str | None]:
        """(what to send before ``sql``'s EXECUTE on this connection: its PREPARE, after
        DEALLOCATE ALL when the connection's prepared statements are unknown; the EXECUTE form
        with %s markers). Changes nothing: a PREPARE counts once the server ran it."""
        if sql in self._unpreparable:
            return [], None
        name = self._statement_names.get(sql)
        if name is None:
            name = f"polysms_{next(self._names)}"
            self._statement_sql[name] = sql
            name = self._statement_names.setdefault(sql, name)
        count = sql.count("%s")
        execute = f"EXECUTE {name}({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}"
        done = self._prepared_on.get(self.connection(), ())
        pending = getattr(self._state, "pending", None) or ()
        if (done is not None and name in done) or name in pending:
            return [], execute
        numbered = iter(range(1, count + 1))
        body = re.sub(r"%s", lambda _: f"${next(numbered)}", sql).replace("%%", "%")
        prepare = f"PREPARE {name} AS {body}"
        if done is None and _DEALLOCATE not in pending:
            # After an error we cannot tell what was prepared: start again. Queued PREPAREs of
            # this message, if any, come after it.
            return [_DEALLOCATE, prepare], execute
        return [prepare], execute

    def _interpolated(self, sql: str, params: Any) -> str:
        if not params:
            return sql.replace("%%", "%")
        # One cursor per connection for interpolating (a cursor per statement cost more than the
        # interpolation): kept beside the connection in the thread's state.
        conn = self.connection()
        kept = getattr(self._state, "mogrifier", None)
        if kept is None or kept[0] is not conn:
            kept = self._state.mogrifier = (conn, conn.cursor())
        with pw.__exception_wrapper__:
            return kept[1].mogrify(sql, params).decode()

    def commit(self) -> None:
        begun = getattr(self._state, "begun", True)
        unsent = self._take_unsent()
        self._state.unsent, self._state.pending = None, set()
        if not begun and unsent == ["BEGIN"]:
            return  # nothing was sent, nothing to commit
        if unsent:
            self._send([*unsent, "COMMIT"])
            return
        super().commit()

    def rollback(self) -> None:
        begun = getattr(self._state, "begun", True)
        # The unsent message goes, its PREPAREs with it: they were never counted as prepared.
        self._state.unsent, self._state.pending = None, set()
        if not begun:
            return  # the server never saw this transaction
        super().rollback()


class _PooledPipelinedPostgres(PooledPostgresqlDatabase, _PipelinedPostgres):
    """Pooled, pipelined PostgreSQL that checks a pooled connection with a round trip only when
    it sat idle a while.

    Peewee's pool sends ``SELECT 1`` at every check-out: under load that is one round trip per
    request for nothing. A connection given back less than :attr:`PING_AFTER` seconds ago is
    taken as it is (a server restart in that window costs one request a 503, see
    ``Store.unavailable_errors``); older ones are pinged, and replaced when dead.
    """

    PING_AFTER = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._returned_at: dict[int, float] = {}

    def _is_closed(self, conn: Any) -> bool:
        if conn.closed:
            return True
        returned = self._returned_at.get(self.conn_key(conn))
        if returned is not None and time.time() - returned < self.PING_AFTER:
            return self._adapter.txn_status(conn) == self._adapter.txn_unknown
        return super()._is_closed(conn)

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        if close_conn:
            self._returned_at.pop(self.conn_key(conn), None)
        else:
            self._returned_at[self.conn_key(conn)] = time.time()
        super()._close(conn, close_conn)


def send_statements(models: SimpleNamespace) -> dict[str, str]:
    """The send job's two statements on ``models``' tables, each one data-modifying CTE: "claim"
    (queued -> sending, with the opt-out, the project and the sender) and "sent" (sending ->
    sent, the day's counter, whether status events arrived first)."""

    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def cols(model: type[pw.Model], alias: str) -> str:
        return ", ".join(f"{alias}.{q(f.column_name)}" for f in model._meta.sorted_fields)

    M, P, S, O_, E, N = (
        models.Message,
        models.Project,
        models.Sender,
        models.OptOut,
        models.StatusEvent,
        models.Metric,
    )
    t = {model: q(model._meta.table_name) for model in (M, P, S, O_, E, N)}
    c = {name: q(getattr(M, name).column_name) for name in ("id", "status", "attempts")}
    sender = (
        f"COALESCE(NULLIF(m.{q(M.messaging_service_sid.column_name)}, ''), "
        f"m.{q(M.from_number.column_name)})"
    )
    claim = (
        f"WITH m AS (UPDATE {t[M]} SET {c['status']} = %s, "
        f"{c['attempts']} = {c['attempts']} + 1, {q(M.updated_at.column_name)} = %s "
        f"WHERE {c['id']} = %s AND {c['status']} = %s RETURNING *) "
        f"SELECT {cols(M, 'm')}, "
        # Opted out from the sender or from the Messaging Service the sender belongs to (the
        # joined sender row's), in the same statement.
        f"(SELECT o.{q(O_.opted_out.column_name)} FROM {t[O_]} AS o "
        f"WHERE o.{q(O_.recipient.column_name)} = m.{q(M.to.column_name)} "
        f"AND o.{q(O_.opted_out.column_name)} "
        f"AND (o.{q(O_.sender.column_name)} = {sender} "
        f"OR o.{q(O_.sender.column_name)} = s.{q(S.messaging_service_sid.column_name)}) "
        f"LIMIT 1), "
        f"{cols(P, 'p')}, {cols(S, 's')} FROM m "
        f"LEFT JOIN {t[P]} AS p ON p.{q(P.id.column_name)} = m.{q(M.project_id.column_name)} "
        f"LEFT JOIN {t[S]} AS s ON s.{q(S.address.column_name)} = {sender}"
    )
    metric_keys = ", ".join(
        q(getattr(N, name).column_name) for name in ("project_id", "environment", "day", "name")
    )
    value = q(N.value.column_name)
    sent = (
        f"WITH m AS (UPDATE {t[M]} SET {c['status']} = %s, "
        f"{q(M.twilio_sid.column_name)} = %s, {q(M.error_code.column_name)} = NULL, "
        f"{q(M.error_message.column_name)} = NULL, {q(M.updated_at.column_name)} = %s "
        f"WHERE {c['id']} = %s AND {c['status']} = %s RETURNING *), "
        f"n AS (INSERT INTO {t[N]} ({metric_keys}, {value}) "
        f"SELECT m.{q(M.project_id.column_name)}, m.{q(M.environment.column_name)}, %s, %s, 1 "
        f"FROM m ON CONFLICT ({metric_keys}) DO UPDATE SET {value} = {t[N]}.{value} + 1) "
        f"SELECT {cols(M, 'm')}, EXISTS (SELECT 1 FROM {t[E]} AS e "
        f"WHERE e.{q(E.twilio_sid.column_name)} = %s) FROM m"
    )
    return {"claim": claim, "sent": sent}
