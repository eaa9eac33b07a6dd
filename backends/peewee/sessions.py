"""Sessions: their records, the inbound context query, the compare-and-set update and the lists."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import peewee as pw

from flask_polysms.authorisation import authorises
from flask_polysms.ports.store import Conflict, NotFound, StaleVersion, check_cursor
from flask_polysms.records import CLOSED, ApiKey, Connector, Project, Sender, Session

from .statements import StatementRunner, _is_open_clash, _prefixed_record, _record, _values


class SessionRecords(StatementRunner):
    """The store's sessions."""

    # -- sessions ---------------------------------------------------------------------------------
    def create_session(self, session: Session) -> Session:
        """Record a new session; one not closed takes its triple's open mark from the session
        that had it (which stays open, superseded). Raises Conflict when its id is taken.

        Two at once for one triple clash on the open key: the transaction is run again whole
        (see ``_atomically``), and the second then supersedes the first."""
        S = self._m.Session
        values = _values(session)
        if session.state == CLOSED:
            values["open_mark"] = None
        else:
            values["open_mark"] = 1

        def work() -> None:
            if session.state != CLOSED:
                self._supersede(session)
            # A fresh random id: no savepoint for a clash that does not happen.
            self._insert(S, values, may_fail=False)

        try:
            self._atomically(work)
        except pw.IntegrityError as exc:
            if _is_open_clash(exc):
                raise
            raise Conflict(f"session {session.id} exists") from exc
        return self._roundtrip(S, Session, session)

    def _supersede(self, session: Session) -> None:
        """Take the open mark from the session of ``session``'s triple that holds it."""
        S = self._m.Session
        triple = [session.project_id, session.user_number, session.agent_number]
        if self._is_mysql:
            # By primary key: an update by the triple that finds no row takes a gap lock, and two
            # transactions inserting into the same gap deadlock each other.
            row = self._first(
                S.select(S.seq).where(
                    (S.project_id == triple[0])
                    & (S.user_number == triple[1])
                    & (S.agent_number == triple[2])
                    & (S.open_mark == 1)
                )
            )
            if row is not None:
                S.update({S.open_mark: None}).where(
                    (S.seq == row["seq"]) & (S.open_mark == 1)
                ).execute()
            return
        self._defer(
            "supersede_open_session",
            lambda param: S.update({S.open_mark: None}).where(
                (S.project_id == param(0))
                & (S.user_number == param(1))
                & (S.agent_number == param(2))
                & (S.open_mark == 1)
            ),
            triple,
        )

    def get_session(self, session_id: str) -> Session | None:
        """The session with this id, None when unknown."""
        S = self._m.Session
        row = self._by(S, "id", session_id)
        return _record(Session, row) if row else None

    def find_open_session(
        self, project_id: str, user_number: str, agent_number: str
    ) -> Session | None:
        """The newest session of the triple that is not closed, None when there is none."""
        S = self._m.Session

        def build(param: Callable[[int], pw.Value]) -> Any:
            return (
                S.select()
                .where(
                    (S.project_id == param(0))
                    & (S.user_number == param(1))
                    & (S.agent_number == param(2))
                    & (S.state != CLOSED)
                )
                .order_by(S.seq.desc())
                .limit(1)
            )

        row = self._row("find_open_session", build, [project_id, user_number, agent_number], S)
        return _record(Session, row) if row else None

    def _inbound_context_sql(self, claim: bool) -> str:
        """The inbound context query (one row always: the open session, or NULLs, beside the
        block and the opt-out); with ``claim``, PostgreSQL only, it first claims the MessageSid
        in a data-modifying WITH and says whether the claim was ours."""
        key = ("inbound_context", claim)
        found = self._statements.get(key)
        if found is not None:
            return found[0]
        S, B, O_, C = self._m.Session, self._m.NumberBlock, self._m.OptOut, self._m.InboundClaim
        SV = self._m.Sender
        q, p = self._db.quote, self._db.param

        def name(identifier: str) -> str:
            return q[0] + identifier + q[1]

        session_columns = ", ".join(
            f"s.{name(f.column_name)} AS {name(f.column_name)}" for f in S._meta.sorted_fields
        )
        sql = (
            f"SELECT {session_columns}, "
            f"(SELECT b.{name('blocked_until')} FROM {name(B._meta.table_name)} AS b "
            f"WHERE b.{name('project_id')} = {p} AND b.{name('number')} = {p} LIMIT 1) "
            f"AS {name('ctx_blocked_until')}, "
            # Opted out from the agent number, or from the Messaging Service it belongs to.
            f"(SELECT o.{name('opted_out')} FROM {name(O_._meta.table_name)} AS o "
            f"WHERE o.{name('recipient')} = {p} AND o.{name('opted_out')} = {p} "
            f"AND (o.{name('sender')} = {p} OR o.{name('sender')} = "
            f"(SELECT sv.{name('messaging_service_sid')} FROM {name(SV._meta.table_name)} AS sv "
            f"WHERE sv.{name('address')} = {p} LIMIT 1)) LIMIT 1) "
            f"AS {name('ctx_opted_out')}"
            + (f", (SELECT count(*) FROM claim) AS {name('ctx_claimed')} " if claim else " ")
            + f"FROM (SELECT 1 AS {name('one')}) AS base "
            f"LEFT JOIN {name(S._meta.table_name)} AS s ON s.{name('id')} = "
            f"(SELECT s2.{name('id')} FROM {name(S._meta.table_name)} AS s2 "
            f"WHERE s2.{name('project_id')} = {p} AND s2.{name('user_number')} = {p} "
            f"AND s2.{name('agent_number')} = {p} AND s2.{name('state')} <> {p} "
            f"ORDER BY s2.{name('seq')} DESC LIMIT 1)"
        )
        if claim:
            sql = (
                f"WITH claim AS (INSERT INTO {name(C._meta.table_name)} "
                f"({name('message_sid')}, {name('claimed_at')}) VALUES ({p}, {p}) "
                f"ON CONFLICT DO NOTHING RETURNING 1) " + sql
            )
        self._statements[key] = (sql, None)
        return sql

    def _inbound_context_row(
        self, values: dict[str, Any]
    ) -> tuple[Session | None, datetime | None, bool]:
        S = self._m.Session
        session = None
        if values["id"] is not None:
            columns = S._meta.columns
            session = _record(
                Session, {n: columns[n].python_value(v) for n, v in values.items() if n in columns}
            )
        blocked = self._m.NumberBlock.blocked_until.python_value(values["ctx_blocked_until"])
        return session, blocked, bool(values["ctx_opted_out"])

    def _run_inbound_context(self, sql: str, args: list[Any]) -> dict[str, Any]:
        cursor = self._execute_statement(sql, args)
        names = [d[0] for d in cursor.description]
        return dict(zip(names, cursor.fetchone(), strict=True))

    @staticmethod
    def _context_args(project_id: str, user_number: str, agent_number: str) -> list[Any]:
        """The context query's values, in the order of its markers (see _inbound_context_sql)."""
        block = [project_id, user_number]
        opt_out = [user_number, True, agent_number, agent_number]
        return [*block, *opt_out, project_id, user_number, agent_number, CLOSED]

    def inbound_context(
        self, project_id: str, user_number: str, agent_number: str
    ) -> tuple[Session | None, datetime | None, bool]:
        """The triple's open session, its user's block and its opt-out, in one query."""
        args = self._context_args(project_id, user_number, agent_number)
        values = self._run_inbound_context(self._inbound_context_sql(claim=False), args)
        return self._inbound_context_row(values)

    def claim_inbound_with_context(
        self, message_sid: str, at: datetime, project_id: str, user_number: str, agent_number: str
    ) -> tuple[bool, Session | None, datetime | None, bool]:
        """Claim the MessageSid and, when the claim is ours, read the inbound context: one statement
        on PostgreSQL, the Store's two steps elsewhere."""
        if self._is_sqlite or self._is_mysql:  # the claim in a WITH: PostgreSQL only
            return super().claim_inbound_with_context(
                message_sid, at, project_id, user_number, agent_number
            )
        claimed_at = self._m.InboundClaim.claimed_at.db_value(at)
        args = [
            message_sid,
            claimed_at,
            *self._context_args(project_id, user_number, agent_number),
        ]
        values = self._atomically(
            lambda: self._run_inbound_context(self._inbound_context_sql(claim=True), args),
            one_statement=True,
        )
        if not values["ctx_claimed"]:
            return False, None, None, False
        return (True, *self._inbound_context_row(values))

    def update_session(self, session_id: str, expected_version: int, **fields: Any) -> Session:
        """Compare-and-set: apply ``fields`` and bump the version only if the stored version is
        ``expected_version``. Raises StaleVersion otherwise, NotFound when the session is
        unknown."""
        S = self._m.Session
        changes = self._changes(S, Session, fields)
        if fields.get("state") == CLOSED:
            changes[S.open_mark] = None  # a closed session leaves its triple free
        # As in the memory store, the stored version after the update is one more than before (or
        # than the version the caller set).
        changes[S.version] = fields["version"] + 1 if "version" in fields else S.version + 1

        cas = S.update(changes).where((S.id == session_id) & (S.version == expected_version))
        if self._db.returning_clause:
            # PostgreSQL: the update returns the new row, one statement and no transaction.
            row = self._atomically(
                lambda: self._updated_row(
                    "update_session",
                    S,
                    changes,
                    lambda param: (S.id == param(0)) & (S.version == param(1)),
                    [session_id, expected_version],
                ),
                one_statement=True,
            )
            if row is not None:
                return _record(Session, row)
            current = self._first(S.select(S.version).where(S.id == session_id))
            if current is None:
                raise NotFound(f"no session {session_id}")
            raise StaleVersion(f"session {session_id} is at version {current['version']}")

        def work() -> dict[str, Any]:
            # Compare-and-set: the row count says whether our expected version was still current.
            won = cas.execute()
            row = self._first(S.select().where(S.id == session_id))
            if row is None:
                raise NotFound(f"no session {session_id}")
            if not won:
                raise StaleVersion(f"session {session_id} is at version {row['version']}")
            return row

        return _record(Session, self._atomically(work))

    def list_sessions(
        self,
        project_id: str,
        *,
        environment: str | None = None,
        user_number: str | None = None,
        state: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Session], str | None]:
        """A page of a project's sessions, newest first, and the cursor of the next page (the id of
        the page's last session; None on the last page). Raises ValueError for a cursor that
        cannot be an id or a limit below 1."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = check_cursor(cursor)
        S = self._m.Session
        query = S.select().where(S.project_id == project_id)
        if environment is not None:
            query = query.where(S.environment == environment)
        if user_number is not None:
            query = query.where(S.user_number == user_number)
        if state is not None:
            query = query.where(S.state == state)
        if after is not None:
            # The position of the cursor's session, found by its id within the project (an id
            # of another project, or of none, gives no position and an empty page).
            last = S.alias("last")
            position = last.select(last.seq).where(
                (last.id == after) & (last.project_id == project_id)
            )
            query = query.where(S.seq < position)
        # One row more than the page tells whether there is a next page.
        rows = list(query.order_by(S.seq.desc()).limit(limit + 1).dicts())
        page = rows[:limit]
        next_cursor = page[-1]["id"] if len(rows) > limit else None
        return [_record(Session, row) for row in page], next_cursor

    def waking_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        """Sessions not closed whose ``wake_at`` is at or before ``now``, earliest first."""
        return self._open_sessions_by(self._m.Session.wake_at, now, limit)

    def due_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        """Sessions not closed whose deadline is at or before ``now``, earliest first."""
        return self._open_sessions_by(self._m.Session.deadline_at, now, limit)

    def _open_sessions_by(self, time: pw.Field, now: datetime, limit: int) -> list[Session]:
        """Sessions not closed whose ``time`` is at or before ``now``, earliest first."""
        S = self._m.Session
        query = (
            S.select()
            .where(
                # "state != closed" as two ranges, so that the (state, time) index serves it.
                ((S.state < CLOSED) | (S.state > CLOSED)) & time.is_null(False) & (time <= now)
            )
            .order_by(time, S.seq)
            .limit(limit)
        )
        return [_record(Session, row) for row in query.dicts()]

    def last_agent_number(self, project_id: str, environment: str, user_number: str) -> str | None:
        """The agent number of this user's most recent session in the environment, if any."""
        S = self._m.Session

        def build(param: Callable[[int], pw.Value]) -> Any:
            return (
                S.select(S.agent_number)
                .where(
                    (S.project_id == param(0))
                    & (S.environment == param(1))
                    & (S.user_number == param(2))
                )
                .order_by(S.seq.desc())
                .limit(1)
            )

        row = self._row("last_agent_number", build, [project_id, environment, user_number], S)
        return row["agent_number"] if row else None

    def sender_user_numbers(
        self, project_id: str, agent_number: str, newest: int
    ) -> tuple[list[str], bool]:
        """One query: the sender's user numbers among the project's ``newest`` sessions, grouped,
        beside the position of the first session left out (NULL when none is)."""
        if newest < 1:
            raise ValueError("newest must be at least 1")
        S = self._m.Session
        q, p = self._db.quote, self._db.param

        def name(identifier: str) -> str:
            return q[0] + identifier + q[1]

        table = name(S._meta.table_name)
        seq, project, user = name("seq"), name("project_id"), name("user_number")
        # The scan is bounded: the (project_id, seq) index walks at most ``newest`` entries to
        # the edge, and the sessions after it.
        sql = (
            f"SELECT s.{user} AS {user}, base.edge AS edge "
            f"FROM (SELECT (SELECT e.{seq} FROM {table} AS e WHERE e.{project} = {p} "
            f"ORDER BY e.{seq} DESC LIMIT 1 OFFSET {int(newest)}) AS edge) AS base "
            f"LEFT JOIN {table} AS s ON s.{project} = {p} AND s.{name('agent_number')} = {p} "
            f"AND s.{seq} > COALESCE(base.edge, 0) "
            f"GROUP BY s.{user}, base.edge"
        )
        rows = self._db.execute_sql(sql, (project_id, project_id, agent_number)).fetchall()
        numbers = sorted(number for number, _ in rows if number is not None)
        return numbers, any(edge is not None for _, edge in rows)

    def _senders_with_previous(self, param: Callable[[int], pw.Value], *extra: Any) -> Any:
        """The environment's senders (params 0, 1), oldest first, each row carrying the user's
        (param 2) last agent number, and ``extra`` columns."""
        S, Sn = self._m.Sender, self._m.Session
        previous = (
            Sn.select(Sn.agent_number)
            .where(
                (Sn.project_id == param(0))
                & (Sn.environment == param(1))
                & (Sn.user_number == param(2))
            )
            .order_by(Sn.seq.desc())
            .limit(1)
        )
        return (
            S.select(S, previous.alias("previous_agent_number"), *extra)
            .where((S.project_id == param(0)) & (S.environment == param(1)))
            .order_by(S.created_at, S.address)
        )

    def senders_for_user(
        self, project_id: str, environment: str, user_number: str
    ) -> tuple[list[Sender], str | None]:
        """The environment's senders, oldest first, and this user's last agent number, in one
        query."""
        rows = self._rows(
            "senders_for_user",
            self._senders_with_previous,
            [project_id, environment, user_number],
            self._m.Sender,
        )
        previous = rows[0]["previous_agent_number"] if rows else None
        return [_record(Sender, row) for row in rows], previous

    def senders_for_outbound(
        self, project_id: str, environment: str, user_number: str
    ) -> tuple[list[Sender], str | None, frozenset[str]]:
        """:meth:`senders_for_user` with, on each sender's row, whether the user opted out from
        it or from its Messaging Service (as :meth:`is_opted_out`): one query."""
        S = self._m.Sender

        def build(param: Callable[[int], pw.Value]) -> Any:
            opted_out = self._user_opted_out(param(2))
            return self._senders_with_previous(param, opted_out.alias("user_opted_out"))

        rows = self._rows("senders_for_outbound", build, [project_id, environment, user_number], S)
        previous = rows[0]["previous_agent_number"] if rows else None
        opted_out = frozenset(row["address"] for row in rows if row["user_opted_out"])
        return [_record(Sender, row) for row in rows], previous, opted_out

    def _user_opted_out(self, user: pw.Node) -> pw.Node:
        """Whether ``user`` opted out from the sender of the row, or from its Messaging Service."""
        S, O_ = self._m.Sender, self._m.OptOut
        return pw.fn.EXISTS(
            O_.select(O_.recipient).where(
                (O_.recipient == user)
                & ((O_.sender == S.address) | (O_.sender == S.messaging_service_sid))
                & (O_.opted_out == True)  # noqa: E712
            )
        )

    def get_credentials_and_senders(
        self, key_hash: str, connector_id: str | None, user_number: str
    ) -> tuple[
        ApiKey | None,
        Connector | None,
        Project | None,
        tuple[list[Sender], str | None, frozenset[str]] | None,
    ]:
        """:meth:`get_credentials` and, when they authorise, :meth:`senders_for_outbound` of the
        connector's environment: one query (a sender's row is joined only to credentials that
        authorise, so nobody else's senders are read)."""
        K, C, P, S, Sn = (
            self._m.ApiKey,
            self._m.Connector,
            self._m.Project,
            self._m.Sender,
            self._m.Session,
        )
        parts = self._credential_parts()
        sender_part = ("s_", S, Sender)

        def build(param: Callable[[int], pw.Value]) -> Any:
            previous = (
                Sn.select(Sn.agent_number)
                .where(
                    (Sn.project_id == C.project_id)
                    & (Sn.environment == C.environment)
                    & (Sn.user_number == param(2))
                )
                .order_by(Sn.seq.desc())
                .limit(1)
            )
            authorised = (
                (S.project_id == P.id)
                & (S.environment == C.environment)
                & (P.account_id == K.account_id)
                & K.revoked_at.is_null()
            )
            extra = (previous.alias("previous"), self._user_opted_out(param(2)).alias("opted"))
            return (
                self._credentials_select(param, (*parts, sender_part), *extra)
                .join(S, pw.JOIN.LEFT_OUTER, on=authorised)
                .order_by(K.created_at, K.id, S.created_at, S.address)
            )

        rows = self._prefixed_rows(
            "get_credentials_and_senders", build, [key_hash, connector_id or "", user_number]
        )
        if not rows:
            return None, None, None, None
        first_key = rows[0]["k_id"]
        rows = [row for row in rows if row["k_id"] == first_key]  # the first key's rows only
        key, connector, project = (_prefixed_record(rows[0], *part) for part in parts)
        if not authorises(key, connector, project):
            return key, connector, project, None
        rows = [row for row in rows if row["s_id"] is not None]
        senders = [_prefixed_record(row, *sender_part) for row in rows]
        opted_out = frozenset(row["s_address"] for row in rows if row["opted"])
        return key, connector, project, (senders, rows[0]["previous"] if rows else None, opted_out)
