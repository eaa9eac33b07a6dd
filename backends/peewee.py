"""The Peewee Store: SQLite, PostgreSQL and MySQL/MariaDB through ``playhouse.db_url``.

Every decision a race depends on is taken by the database, so it holds across threads and across
processes: unique constraints (claims, status events, sender addresses, template titles),
compare-and-set updates whose row count says who won (session versions, message statuses, opt-out
state) and atomic upserts (metrics, number blocks). No Python lock is involved.

Each store owns its Database object and its own model classes bound to it, so stores on different
URLs coexist in one process. Connections are per thread (Peewee's default): ``connect()`` and
``close()`` open and close the calling thread's connection, and a method called without
``connect()`` opens one on first use.

Times are stored as naive UTC with microseconds and come back as aware UTC datetimes; the JSON-ish
fields (settings, data, entities, metadata, env_phone_numbers) are stored as JSON text, so their
values must be JSON-serialisable and come back as JSON values (tuples become lists).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import re
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import date, datetime, timezone
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import peewee as pw
from playhouse.db_url import parse as parse_url
from playhouse.pool import PooledDatabase, PooledMySQLDatabase, PooledPostgresqlDatabase

from flask_polysms.backends.peewee_migrations import SchemaMigrations
from flask_polysms.clock import as_utc, utcnow
from flask_polysms.records import (
    CLOSED,
    INBOUND,
    OUTBOUND,
    PROCESSING,
    QUEUED,
    RECEIVED,
    SENDING,
    SENT,
    Account,
    ApiKey,
    Connector,
    Message,
    OptOutEvent,
    Project,
    Sender,
    Session,
    StatusEvent,
    Template,
    new_id,
)
from flask_polysms.store import (
    Conflict,
    DashboardSignIn,
    NotFound,
    SchemaUpgrade,
    SchemaVersion,
    SendClaim,
    StaleVersion,
    Store,
    check_cursor,
)

T = TypeVar("T")

DEFAULT_TABLE_PREFIX = "polysms_"
# Index names are the prefix plus up to 22 characters; PostgreSQL cuts identifiers at 63.
_PREFIX_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
# A deadlock (MySQL/MariaDB 1213, PostgreSQL 40P01) or a serialization failure (40001) rolls the
# whole transaction back: running it again is correct, and these retries are rare.
_RETRIES = 5
_RETRYABLE_MYSQL_CODES = frozenset({1213})
_RETRYABLE_PG_CODES = frozenset({"40P01", "40001"})

# Record attribute -> column, where the attribute's name is not a good column name.
_COLUMN_FOR = {"from_": "from_number"}


def _column(attribute: str) -> str:
    return _COLUMN_FOR.get(attribute, attribute)


# -- fields ---------------------------------------------------------------------------------------
def _on_sqlite(field: pw.Field) -> bool:
    return isinstance(field.model._meta.database, pw.SqliteDatabase)


class UTCDateTimeField(pw.DateTimeField):
    """Aware datetimes in (naive ones are taken as UTC), aware UTC datetimes out.

    Stored as naive UTC with microseconds everywhere: ``DATETIME(6)`` on MySQL (plain ``DATETIME``
    keeps whole seconds), ``TIMESTAMP`` on PostgreSQL, fixed-width text on SQLite, where datetimes
    compare as text and so must all be written one way.
    """

    def get_modifiers(self) -> list[int] | None:
        if isinstance(self.model._meta.database, pw.MySQLDatabase):
            return [6]
        return None

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = self.adapt(value)
        naive = as_utc(value).replace(tzinfo=None)
        if _on_sqlite(self):
            return naive.strftime("%Y-%m-%d %H:%M:%S.%f")
        return naive

    def python_value(self, value: Any) -> datetime | None:
        value = super().python_value(value)
        return None if value is None else as_utc(value)


class DayField(pw.DateField):
    """A calendar day (``DATE``; ISO text on SQLite, which has no date type)."""

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, datetime):
            value = value.date()
        if _on_sqlite(self) and isinstance(value, date):
            return value.isoformat()
        return value


class JSONTextField(pw.TextField):
    """A JSON value stored as text, which reads the same on SQLite, PostgreSQL and MySQL."""

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"))

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        return json.loads(value)


class MediumJSONTextField(JSONTextField):
    """JSON text on MySQL, where ``TEXT`` stops at 64 KB (a long session's metadata grows)."""

    field_type = "MEDIUMTEXT"


# -- models ---------------------------------------------------------------------------------------
def _build_models(database: pw.Database, prefix: str) -> SimpleNamespace:
    """Model classes bound to ``database`` only, tables named ``<prefix><name>``.

    Built per store, so two stores (two URLs, or two prefixes) never share a binding.
    """
    is_mysql = isinstance(database, pw.MySQLDatabase)
    # PostgreSQL orders text by the database's locale unless told otherwise: "C" orders by code
    # point, as Python and the memory store do. MySQL gets a binary collation per table instead.
    collation = '"C"' if isinstance(database, pw.PostgresqlDatabase) else None
    json_field = MediumJSONTextField if is_mysql else JSONTextField

    def key(length: int = 100, **kwargs: Any) -> pw.CharField:
        # Bounded strings for ids, numbers and codes: MySQL cannot index TEXT columns.
        return pw.CharField(max_length=length, collation=collation, **kwargs)

    def opt_key(length: int = 100) -> pw.CharField:
        return key(length, null=True)

    class Base(pw.Model):
        class Meta:
            database = None
            legacy_table_names = False

    Base._meta.set_database(database)

    class Account(Base):
        id = key(primary_key=True)
        name = pw.TextField()
        created_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "account"

    class ApiKey(Base):
        id = key(primary_key=True)
        account_id = key()
        key_hash = key(255)
        prefix = key(64)
        created_at = UTCDateTimeField()
        revoked_at = UTCDateTimeField(null=True)

        class Meta:
            table_name = prefix + "api_key"

    class Project(Base):
        id = key(primary_key=True)
        account_id = key()
        name = pw.TextField()
        created_at = UTCDateTimeField()
        twilio_account_sid = opt_key()
        twilio_auth_token_encrypted = pw.TextField(null=True)
        settings = json_field()

        class Meta:
            table_name = prefix + "project"

    class Sender(Base):
        id = key(primary_key=True)
        project_id = key()
        environment = key(32)
        address = key()
        created_at = UTCDateTimeField()
        kind = key(32)
        country = opt_key(8)
        number_type = opt_key(32)
        registration = key(32)
        campaign_id = pw.TextField(null=True)

        class Meta:
            table_name = prefix + "sender"

    class Connector(Base):
        id = key(primary_key=True)
        project_id = key()
        environment = key(32)
        created_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "connector"

    class Session(Base):
        # The autoincrement position orders sessions newest first and carries the page cursor.
        seq = pw.BigAutoField()
        id = key(unique=True)
        project_id = key()
        environment = key(32)
        user_number = key()
        agent_number = key()
        created_at = UTCDateTimeField()
        last_activity_at = UTCDateTimeField()
        state = key(32)
        engaged = pw.BooleanField()
        closed_at = UTCDateTimeField(null=True)
        end_reason = opt_key(32)
        deadline_at = UTCDateTimeField(null=True)
        timer_kind = opt_key(32)
        wake_at = UTCDateTimeField(null=True)
        version = pw.IntegerField()
        data = json_field()
        entities = json_field()
        metadata = json_field()
        language = opt_key(32)

        class Meta:
            table_name = prefix + "session"

    class Message(Base):
        seq = pw.BigAutoField()  # recording order
        id = key(unique=True)
        project_id = key()
        environment = key(32)
        session_id = opt_key()
        direction = key(16)
        kind = key(32)
        body = pw.TextField()
        to = key()
        from_number = opt_key()
        created_at = UTCDateTimeField()
        updated_at = UTCDateTimeField()
        status = key(32)
        messaging_service_sid = opt_key()
        error_code = pw.IntegerField(null=True)
        error_message = pw.TextField(null=True)
        twilio_sid = opt_key()
        segments = pw.IntegerField()
        encoding = key(16)
        attempts = pw.IntegerField()
        max_attempts = pw.IntegerField()
        template = pw.TextField(null=True)
        drop_reason = pw.TextField(null=True)
        # The last failed send attempt (migration 0003), kept after a successful retry.
        last_error_code = pw.IntegerField(null=True)
        last_error_message = pw.TextField(null=True)
        last_error_at = UTCDateTimeField(null=True)

        class Meta:
            table_name = prefix + "message"

    class StatusEvent(Base):
        seq = pw.BigAutoField()
        twilio_sid = key()
        status = key(32)
        received_at = UTCDateTimeField()
        error_code = pw.IntegerField(null=True)

        class Meta:
            table_name = prefix + "status_event"

    class InboundClaim(Base):
        message_sid = key(primary_key=True)  # the primary key is what makes a claim exclusive
        claimed_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "inbound_claim"

    class Template(Base):
        id = key(primary_key=True)
        project_id = key()
        title = key(255)
        body = pw.TextField()
        env_phone_numbers = json_field()
        created_at = UTCDateTimeField()
        updated_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "template"

    class OptOut(Base):
        # One row per (recipient, sender): its conditional update decides every change.
        seq = pw.BigAutoField()
        recipient = key()
        sender = key()
        project_id = key()
        opted_out = pw.BooleanField()
        updated_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "opt_out"

    class OptOutEvent(Base):
        seq = pw.BigAutoField()
        project_id = key()
        recipient = key()
        sender = key()
        action = key(16)
        keyword = pw.TextField(null=True)
        at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "opt_out_event"

    class Metric(Base):
        seq = pw.BigAutoField()
        project_id = key()
        environment = key(32)
        day = DayField()
        name = key(64)
        value = pw.BigIntegerField()

        class Meta:
            table_name = prefix + "metric"

    class NumberBlock(Base):
        seq = pw.BigAutoField()
        project_id = key()
        number = key()
        blocked_until = UTCDateTimeField()
        reason = pw.TextField()

        class Meta:
            table_name = prefix + "number_block"

    class DashboardSignInRow(Base):
        # The SHA-256 (hex) of the browser's random secret: found by digest, never by the secret.
        id = key(64, primary_key=True)
        api_key_id = key()
        connector_id = key()
        created_at = UTCDateTimeField()
        last_seen_at = UTCDateTimeField()
        ended_at = UTCDateTimeField(null=True)
        end_reason = opt_key(32)

        class Meta:
            table_name = prefix + "dashboard_sign_in"

    def index(model: type[pw.Model], name: str, *fields: pw.Field, unique: bool = False) -> None:
        model.add_index(*fields, unique=unique, name=prefix + name)

    # One index per lookup the Store makes; the unique ones are also the race arbiters.
    index(ApiKey, "api_key_hash", ApiKey.key_hash)
    index(Project, "project_account", Project.account_id)
    index(Sender, "sender_address", Sender.address, unique=True)
    index(Sender, "sender_project", Sender.project_id, Sender.environment, Sender.created_at)
    index(Connector, "connector_project", Connector.project_id)
    # The two "newest session of ..." lookups end their index with seq: the newest row is the
    # index's last, whatever plan PostgreSQL caches for the prepared statement (a generic plan
    # otherwise walked the project's sessions along session_list: linear in the table).
    index(
        Session,
        "session_open_seq",
        Session.project_id,
        Session.user_number,
        Session.agent_number,
        Session.seq,
    )
    index(Session, "session_due", Session.state, Session.deadline_at)
    index(Session, "session_waking", Session.state, Session.wake_at)
    index(Session, "session_list", Session.project_id, Session.seq)
    index(
        Session,
        "session_user_seq",
        Session.project_id,
        Session.environment,
        Session.user_number,
        Session.seq,
    )
    index(Message, "message_sid", Message.twilio_sid)
    index(Message, "message_session", Message.session_id, Message.seq)
    index(Message, "message_stuck", Message.status, Message.updated_at)
    index(StatusEvent, "status_event_pair", StatusEvent.twilio_sid, StatusEvent.status, unique=True)
    index(Template, "template_title", Template.project_id, Template.title, unique=True)
    index(OptOut, "opt_out_pair", OptOut.recipient, OptOut.sender, unique=True)
    index(
        OptOutEvent,
        "opt_out_event_pair",
        OptOutEvent.project_id,
        OptOutEvent.recipient,
        OptOutEvent.sender,
    )
    index(
        Metric,
        "metric_day",
        Metric.project_id,
        Metric.environment,
        Metric.day,
        Metric.name,
        unique=True,
    )
    index(NumberBlock, "number_block_pair", NumberBlock.project_id, NumberBlock.number, unique=True)

    return SimpleNamespace(
        Account=Account,
        ApiKey=ApiKey,
        Project=Project,
        Sender=Sender,
        Connector=Connector,
        Session=Session,
        Message=Message,
        StatusEvent=StatusEvent,
        InboundClaim=InboundClaim,
        Template=Template,
        OptOut=OptOut,
        OptOutEvent=OptOutEvent,
        Metric=Metric,
        NumberBlock=NumberBlock,
        DashboardSignIn=DashboardSignInRow,
        all=[
            Account,
            ApiKey,
            Project,
            Sender,
            Connector,
            Session,
            Message,
            StatusEvent,
            InboundClaim,
            Template,
            OptOut,
            OptOutEvent,
            Metric,
            NumberBlock,
            DashboardSignInRow,
        ],
    )


# Peewee logs each statement with its values at DEBUG on this logger; this store's statements are
# logged there without them (see _ValuesNotLogged).
_PEEWEE_LOG = logging.getLogger("peewee")
_DEALLOCATE = "DEALLOCATE ALL"
# Errors of a PREPARE that the same statement, sent with its values written in, would not meet:
# no type can be inferred for a parameter. Such statements run unprepared from then on.
_UNPREPARABLE_PG_CODES = frozenset({"42P18", "42P08", "42725"})


class _ValuesNotLogged(pw.Database):
    """A Peewee database whose statements reach the ``peewee`` logger without their values.

    Peewee logs each statement with its bound values at DEBUG: for this store, the API-key digest
    of every request, encrypted Auth Tokens, message bodies and phone numbers. Here the SQL text
    is logged, with one ``"?"`` per value. Only this store's own database classes do this: a host
    app's Peewee databases log as they always did. Query hooks (code, not logs) still get every
    statement as sent.
    """

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        self._log_statement(sql, params)
        return self._execute_unlogged(sql, params)

    @staticmethod
    def _log_statement(sql: str, params: Any) -> None:
        if _PEEWEE_LOG.isEnabledFor(logging.DEBUG):
            _PEEWEE_LOG.debug((sql, ["?"] * len(params or ())))

    def _execute_unlogged(self, sql: str, params: Any) -> Any:
        """Run ``sql`` as Peewee's ``execute_sql`` does (errors wrapped, hooks told), unlogged."""
        hooks = self.query_hooks
        start = time.perf_counter()
        try:
            with pw.__exception_wrapper__:
                cursor = self.cursor()
                cursor.execute(sql, params or ())
        except Exception as exc:
            for hook in hooks:
                hook(pw.QueryEvent(sql, params, time.perf_counter() - start, exc))
            raise
        for hook in hooks:
            hook(pw.QueryEvent(sql, params, time.perf_counter() - start, None))
        return cursor


class _SqliteDatabase(_ValuesNotLogged, pw.SqliteDatabase):
    """SQLite, its statements logged without their values."""


class _MySQLDatabase(_ValuesNotLogged, pw.MySQLDatabase):
    """MySQL/MariaDB, its statements logged without their values."""


class _PooledMySQLDatabase(_ValuesNotLogged, PooledMySQLDatabase):
    """Pooled MySQL/MariaDB, its statements logged without their values."""


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


def _open_database(url: str, sqlite_busy_timeout_ms: int, pool: bool = True) -> pw.Database:
    """A Peewee Database for ``url`` (not connected yet); pooled for PostgreSQL and MySQL."""
    scheme = urlsplit(url).scheme
    params: dict[str, Any] = {}
    if pool and scheme in ("postgresql", "postgres", "mysql"):
        # Opening a server connection costs more than the queries of a whole request: close()
        # gives it back to the pool for the next request or job. No cap (one per thread, as
        # without the pool); a connection is renewed after 5 minutes.
        scheme += "+pool"
        url = urlunsplit(urlsplit(url)._replace(scheme=scheme))
        params.update(max_connections=None, stale_timeout=300)
    if scheme.startswith("sqlite"):
        path = urlsplit(url).path[1:]
        if path in ("", ":memory:"):
            # Each thread has its own connection, and an in-memory database per connection.
            raise ValueError(
                f"{url!r} is an in-memory SQLite database, private to one connection: use a file "
                "(sqlite:///polysms.db) or the memory:// store"
            )
        params["pragmas"] = {
            # busy_timeout makes writers queue; WAL lets readers run beside the one writer.
            "busy_timeout": sqlite_busy_timeout_ms,
            "journal_mode": "wal",
            "synchronous": "normal",
        }
        params["timeout"] = sqlite_busy_timeout_ms / 1000
    elif scheme in ("mysql", "mysql+pool"):
        from pymysql.constants import CLIENT

        # Row counts must say "matched", not "changed": a compare-and-set that writes the values
        # already stored still won, and PostgreSQL and SQLite count it so.
        params["client_flag"] = CLIENT.FOUND_ROWS
    elif scheme in ("postgresql", "postgres", "postgresql+pool", "postgres+pool"):
        pooled = scheme.endswith("+pool")
        database_class = _PooledPipelinedPostgres if pooled else _PipelinedPostgres
        connect = parse_url(url)
        # Prepared statements (see _PipelinedPostgres) keep PostgreSQL's default plan caching: a
        # generic plan once five runs show it costs no more than planning each run. Every
        # prepared statement is a lookup or a write by key, which its index serves whatever the
        # values (tests/test_postgres_pipeline.py checks their generic plans); planning each
        # run instead cost more server time than the execution of the outbound request's
        # statements. Range scans (due sessions, lists) are not prepared.
        return database_class(**{**connect, **params})
    # Our own classes, not playhouse.db_url's: they log statements without their values.
    connect = parse_url(url)
    if not connect.get("database"):
        # The URL itself stays out of the message: it may hold a password.
        raise ValueError(f"the {scheme} storage URL names no database")
    database_class = {
        "sqlite": _SqliteDatabase,
        "mysql": _MySQLDatabase,
        "mysql+pool": _PooledMySQLDatabase,
    }[scheme]
    return database_class(**{**connect, **params})


def _literal_limits(sql: str, slots: list) -> tuple[str, list]:
    """Write a statement's constant ``LIMIT``/``OFFSET`` into its SQL instead of as parameters.

    A prepared statement's generic plan (PostgreSQL's choice after five runs) cannot see a
    parameter's value: with ``LIMIT $4`` it took a scan of every session of the project for the
    last-agent lookup (0.9 -> 2.9 ms after 8,000 outbound requests); with ``LIMIT 1`` it uses the
    user's index.
    """
    pieces = sql.split("%s")
    if len(pieces) != len(slots) + 1:  # a literal "%s" in the text: leave the statement alone
        return sql, slots
    text, kept = pieces[0], []
    for (marker, value), piece in zip(slots, pieces[1:], strict=True):
        if (
            marker is None
            and type(value) is int
            and text.rstrip().upper().endswith(("LIMIT", "OFFSET"))
        ):
            text += str(value) + piece
        else:
            text += "%s" + piece
            kept.append((marker, value))
    return text, kept


def _is_retryable(exc: pw.OperationalError) -> bool:
    original = getattr(exc, "orig", None)  # the driver's exception, which Peewee wraps
    if getattr(original, "pgcode", None) in _RETRYABLE_PG_CODES:
        return True
    codes = getattr(original, "args", ())
    return bool(codes) and codes[0] in _RETRYABLE_MYSQL_CODES


@functools.cache
def _names(cls: type) -> tuple[tuple[str, str], ...]:
    """(attribute, column) of each field of a record class (``dataclasses.fields`` is slow)."""
    return tuple((f.name, _column(f.name)) for f in dataclasses.fields(cls))


def _record(cls: type[T], row: dict[str, Any]) -> T:
    return cls(**{name: row[column] for name, column in _names(cls)})


def _text_as_is(field: pw.Field) -> bool:
    """A plain text field: a string passes through ``db_value`` and ``python_value`` unchanged,
    so converting it (two calls, an ``isinstance`` each) can be skipped."""
    return type(field) in (pw.CharField, pw.TextField)


@functools.lru_cache(maxsize=256)
def _readers(
    model: type[pw.Model], prefix: str = ""
) -> tuple[tuple[str, str, Callable[[Any], Any] | None], ...]:
    """(attribute, column name with ``prefix``, converter or None for text as is) per field."""
    return tuple(
        (f.name, prefix + f.column_name, None if _text_as_is(f) else f.python_value)
        for f in model._meta.sorted_fields
    )


def _prefixed_record(
    values: dict[str, Any], prefix: str, model: type[pw.Model], cls: type[T]
) -> T | None:
    """The record of ``model`` whose columns are ``prefix`` + column name in ``values`` (a row
    of an outer join), or None when its id is NULL."""
    if values[prefix + "id"] is None:
        return None
    row = {}
    for name, column, convert in _readers(model, prefix):
        value = values[column]
        row[name] = value if convert is None or value is None else convert(value)
    return _record(cls, row)


@functools.lru_cache(maxsize=256)
def _read_back_unchanged(model: type[pw.Model]) -> dict[str, type | None]:
    """Per field, the one type whose values (besides None) read back exactly as written: text
    as text, integers and booleans as themselves, aware UTC datetimes as themselves (every
    backend keeps microseconds). Converting those both ways, for every field of every record
    written, cost more than writing the SQL."""
    kinds = [(pw.BooleanField, bool), (pw.IntegerField, int), (UTCDateTimeField, datetime)]
    unchanged: dict[str, type | None] = {}
    for field in model._meta.sorted_fields:
        if _text_as_is(field):
            unchanged[field.name] = str
        else:
            unchanged[field.name] = next((t for c, t in kinds if isinstance(field, c)), None)
    return unchanged


def _same(value: Any) -> Any:
    return value


def _values(record: Any) -> dict[str, Any]:
    return {column: getattr(record, name) for name, column in _names(type(record))}


class PeeweeStore(Store):
    """The Store on SQLite, PostgreSQL or MySQL/MariaDB, chosen by the URL's scheme.

    Options: ``table_prefix`` (default ``"polysms_"``; letters, digits and ``_``) names the tables,
    ``sqlite_busy_timeout_ms`` (default 10 000) is how long a SQLite writer waits for the lock,
    ``pool`` (default True) keeps PostgreSQL and MySQL connections open between requests and
    jobs (``close()`` returns them to the pool; ``disconnect()`` closes them all).
    Other options are ignored, as by every backend.
    """

    schemes = ("sqlite", "postgresql", "postgres", "mysql")
    # A dropped or refused connection (and SQLite's "database is locked") is OperationalError or
    # InterfaceError; constraint and data errors are not, and stay 500s (they are bugs).
    unavailable_errors = (pw.OperationalError, pw.InterfaceError)

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        sqlite_busy_timeout_ms: int = 10_000,
        pool: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(url)
        if not _PREFIX_PATTERN.fullmatch(table_prefix):  # match() takes a trailing newline
            raise ValueError(f"table_prefix {table_prefix!r}: letters, digits, _ (up to 40)")
        self.table_prefix = table_prefix
        self._db = _open_database(url, sqlite_busy_timeout_ms, pool)
        self._is_sqlite = isinstance(self._db, pw.SqliteDatabase)
        self._is_mysql = isinstance(self._db, pw.MySQLDatabase)
        self._m = _build_models(self._db, table_prefix)
        self._statements: dict[Any, tuple] = {}
        # PostgreSQL prepares the compiled statements on each connection (_PipelinedPostgres).
        self._execute_statement = getattr(self._db, "execute_statement", self._db.execute_sql)
        # SQLite is embedded, so the app creates its tables; servers use `flask polysms init-db`.
        self.creates_schema_on_start = self._is_sqlite

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        netloc = parts.netloc
        if parts.password:
            netloc = netloc.replace(":" + parts.password + "@", ":***@", 1)
        return f"<PeeweeStore {urlunsplit(parts._replace(netloc=netloc))}>"

    @property
    def database(self) -> pw.Database:
        """The Peewee Database this store owns (for diagnostics and tests)."""
        return self._db

    # -- life cycle -------------------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create the tables and indexes, or bring them up to date: the schema migrations the
        database lacks (idempotent; see :meth:`upgrade_schema`)."""
        self.upgrade_schema()

    def upgrade_schema(self) -> SchemaUpgrade:
        """Apply the missing schema migrations (``backends/peewee_migrations``), recording first
        those whose tables a database made by 0.1.0 already has; refuse a newer database."""
        return self._migrations().upgrade()

    def schema_version(self) -> SchemaVersion:
        """Where the database stands among the schema migrations this version ships."""
        return self._migrations().version()

    def check_schema(self) -> None:
        """Raise SchemaTooNew when the migration history holds a migration not shipped here."""
        self._migrations().check()

    def _migrations(self) -> SchemaMigrations:
        return SchemaMigrations(self._db, self.table_prefix)

    def create_model_tables(self) -> None:
        """Create the tables of today's models directly, without migrations or history: the
        schema the migrations must build (tests compare the two). Applications use
        :meth:`create_schema`."""
        if self._is_mysql:
            charset = f"DEFAULT CHARSET=utf8mb4 COLLATE={self._mysql_binary_collation()}"
            for model in self._m.all:
                model._meta.table_settings = [charset]
        self._db.create_tables(self._m.all, safe=True)

    def drop_schema(self) -> None:
        """Drop every table of this store and its migration history (tests only)."""
        self._db.drop_tables(self._m.all, safe=True)
        self._migrations().drop_history()

    def connect(self) -> None:
        """Open this thread's connection (no-op when open)."""
        self._db.connect(reuse_if_open=True)

    def close(self) -> None:
        """Close this thread's connection if open (pooled: give it back to the pool)."""
        if not self._db.is_closed():
            self._db.close()

    def disconnect(self) -> None:
        """Close every connection, pooled idle ones too (before a fork)."""
        self.close()
        if isinstance(self._db, PooledDatabase):
            self._db.close_all()

    def atomic(self, work: Callable[[], T]) -> T:
        """Run ``work`` in one transaction (again, whole, when it was a deadlock victim)."""
        return self._atomically(work)

    def _mysql_binary_collation(self) -> str:
        # The default collations ignore case ("Hello" = "hello") and PAD SPACE ones ignore trailing
        # spaces ("a" = "a "): a binary NO PAD collation compares and orders as Python does.
        for name in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin"):
            found = self._db.execute_sql("SHOW COLLATION WHERE Collation = %s", (name,))
            if found.fetchone():
                return name
        return "utf8mb4_bin"

    # -- plumbing ---------------------------------------------------------------------------------
    def _transaction(self) -> Any:
        # On SQLite take the write lock at BEGIN: a transaction that read first and then has to
        # upgrade its lock fails at once with "database is locked" instead of waiting.
        if self._is_sqlite:
            return self._db.atomic("IMMEDIATE")
        return self._db.atomic()

    def _atomically(
        self, work: Callable[[], T], *, one_statement: bool = False, may_fail: bool = False
    ) -> T:
        """Run ``work`` in one transaction; again when the database made it a deadlock victim.

        Inside a caller's transaction (``atomic``) ``work`` simply joins it, in a savepoint only
        when ``may_fail`` (it raises an error its caller handles, which on PostgreSQL would abort
        the whole transaction otherwise). Outside, ``one_statement`` work runs without BEGIN and
        COMMIT: one statement is atomic by itself, and they would cost two round trips.
        """
        if self._db.in_transaction():
            # Inside a caller's transaction the whole of it is rolled back: not ours to redo.
            if may_fail:
                with self._db.atomic():
                    return work()
            return work()
        for attempt in range(1, _RETRIES + 1):
            try:
                if one_statement:
                    return work()
                with self._transaction():
                    return work()
            except pw.OperationalError as exc:
                if attempt == _RETRIES or not _is_retryable(exc):
                    raise
        raise AssertionError("unreachable")

    # Peewee builds each statement's SQL from its query tree, and that costs several times the
    # CPU of the database round trip. The hot statements are built once per store with
    # placeholders (``param(i)``) and then run with each call's values, converted by the fields.
    def _compiled(self, name: Any, build: Callable[[Callable[[int], pw.Value]], Any]) -> tuple:
        found = self._statements.get(name)
        if found is None:
            markers: dict[str, int] = {}

            def param(i: int) -> pw.Value:
                marker = f"\x00polysms-param-{i}\x00"
                markers[marker] = i
                return pw.Value(marker, converter=False)

            sql, params = build(param).sql()
            slots = [
                (markers[v], None) if isinstance(v, str) and v in markers else (None, v)
                for v in params
            ]
            found = self._statements[name] = _literal_limits(sql, slots)
        return found

    def _run(self, name: Any, build: Callable, args: list[Any]) -> Any:
        """Execute a compiled statement with ``args`` (database values); returns the cursor."""
        sql, slots = self._compiled(name, build)
        return self._execute_statement(sql, [args[i] if i is not None else v for i, v in slots])

    def _defer(self, name: Any, build: Callable, args: list[Any]) -> None:
        """Execute a compiled write whose result is not read: with the next statement where the
        database can (PostgreSQL, inside a transaction), else now."""
        defer_sql = getattr(self._db, "defer_sql", None)
        if defer_sql is None:
            self._run(name, build, args)
            return
        sql, slots = self._compiled(name, build)
        defer_sql(sql, [args[i] if i is not None else v for i, v in slots])

    def _rows(
        self, name: Any, build: Callable, args: list[Any], model: type[pw.Model]
    ) -> list[dict[str, Any]]:
        """The rows of a compiled statement as dicts of Python values (as ``.dicts()`` gives)."""
        cursor = self._run(name, build, args)
        columns = model._meta.columns
        names = [d[0] for d in cursor.description]
        convert = [
            _same if n not in columns or _text_as_is(columns[n]) else columns[n].python_value
            for n in names
        ]
        rows = cursor.fetchall()
        return [{n: c(v) for n, c, v in zip(names, convert, row, strict=True)} for row in rows]

    def _row(
        self, name: Any, build: Callable, args: list[Any], model: type[pw.Model]
    ) -> dict[str, Any] | None:
        rows = self._rows(name, build, args, model)
        return rows[0] if rows else None

    def _by(
        self, model: type[pw.Model], column: str, value: Any, order: tuple = ()
    ) -> dict[str, Any] | None:
        """The first row of ``model`` whose ``column`` is ``value``, in ``order`` (one order per
        model and column: the compiled statement is kept under those)."""
        field = getattr(model, column)

        def build(param: Callable[[int], pw.Value]) -> Any:
            return model.select().where(field == param(0)).order_by(*order).limit(1)

        key = ("by", model, column, bool(order))
        return self._row(key, build, [field.db_value(value)], model)

    def _insert(self, model: type[pw.Model], values: dict[str, Any], may_fail: bool = True) -> None:
        """Insert a row; IntegrityError (a unique value taken) leaves nothing behind.

        A row that cannot clash (``may_fail=False``: a fresh random id) is written, inside a
        transaction, with the transaction's next statement (see :class:`_PipelinedPostgres`).
        """
        if not may_fail and self._db.in_transaction():
            self._run_insert(model, values, ignore=False, deferred=True)
            return
        self._atomically(
            lambda: self._run_insert(model, values, ignore=False),
            one_statement=True,
            may_fail=may_fail,
        )

    def _insert_unless_taken(self, model: type[pw.Model], values: dict[str, Any]) -> bool:
        """Insert a row unless a unique value is taken (then False). ON CONFLICT DO NOTHING
        raises nothing, so it needs no savepoint inside a caller's transaction."""
        cursor = self._atomically(
            lambda: self._run_insert(model, values, ignore=True), one_statement=True
        )
        return cursor.rowcount > 0

    def _run_insert(
        self, model: type[pw.Model], values: dict[str, Any], ignore: bool, deferred: bool = False
    ) -> Any:
        fields = [model._meta.fields[name] for name in values]

        def build(param: Callable[[int], pw.Value]) -> Any:
            query = model.insert({f: param(i) for i, f in enumerate(fields)})
            return query.on_conflict_ignore() if ignore else query

        key = ("insert", model, tuple(values), ignore)
        args = [
            value if type(value) is str and _text_as_is(f) else f.db_value(value)
            for f, value in zip(fields, values.values(), strict=True)
        ]
        if deferred:
            return self._defer(key, build, args)
        return self._run(key, build, args)

    def _updated_row(
        self,
        name: Any,
        model: type[pw.Model],
        changes: dict[pw.Field, Any],
        where: Callable,
        where_args: list[Any],
    ) -> dict[str, Any] | None:
        """``UPDATE model SET changes WHERE where(param) RETURNING *`` (PostgreSQL): the updated
        row, or None. Values of ``changes`` that are expressions are part of the statement."""
        settable = [(f, v) for f, v in changes.items() if not isinstance(v, pw.Node)]
        fixed = {f: v for f, v in changes.items() if isinstance(v, pw.Node)}
        n = len(where_args)

        def build(param: Callable[[int], pw.Value]) -> Any:
            values = {f: param(n + i) for i, (f, _) in enumerate(settable)}
            query = model.update({**values, **fixed}).where(where(param))
            return query.returning(*model._meta.sorted_fields)

        key = (name, tuple(f.name for f, _ in settable), tuple(f.name for f in fixed))
        args = where_args + [f.db_value(v) for f, v in settable]
        return self._row(key, build, args, model)

    def _first(self, query: pw.ModelSelect) -> dict[str, Any] | None:
        rows = list(query.limit(1).dicts())
        return rows[0] if rows else None

    def _roundtrip(self, model: type[pw.Model], cls: type[T], record: T) -> T:
        """``record`` as reading it back would give it (aware UTC times, JSON values)."""
        fields = model._meta.fields
        unchanged = _read_back_unchanged(model)
        row = {}
        for name, value in _values(record).items():
            if value is None or type(value) is unchanged[name]:
                if type(value) is not datetime or value.tzinfo is timezone.utc:
                    row[name] = value
                    continue
            field = fields[name]
            row[name] = field.python_value(field.db_value(value))
        return _record(cls, row)

    def _changes(
        self,
        model: type[pw.Model],
        cls: type,
        fields: dict[str, Any],
        frozen: tuple[str, ...] = ("id",),
    ) -> dict[pw.Field, Any]:
        allowed = {f.name for f in dataclasses.fields(cls)} - set(frozen)
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise TypeError(f"{cls.__name__} has no settable field(s) {', '.join(unknown)}")
        return {getattr(model, _column(name)): value for name, value in fields.items()}

    def _conflict_target(self, *fields: pw.Field) -> dict[str, Any]:
        # MySQL's ON DUPLICATE KEY UPDATE names no target: any unique key that clashes counts.
        return {} if self._is_mysql else {"conflict_target": list(fields)}

    # -- accounts, keys, projects -----------------------------------------------------------------
    def create_account(self, name: str) -> Account:
        account = Account(id=new_id("acc_"), name=name, created_at=utcnow())
        self._insert(self._m.Account, _values(account))
        return self._roundtrip(self._m.Account, Account, account)

    def get_account(self, account_id: str) -> Account | None:
        A = self._m.Account
        row = self._by(A, "id", account_id)
        return _record(Account, row) if row else None

    def _require(self, model: type[pw.Model], record_id: str, what: str) -> None:
        if not model.select(model.id).where(model.id == record_id).exists():
            raise NotFound(f"no {what} {record_id}")

    def add_api_key(self, account_id: str, key_hash: str, prefix: str) -> ApiKey:
        self._require(self._m.Account, account_id, "account")
        key = ApiKey(
            id=new_id("key_"),
            account_id=account_id,
            key_hash=key_hash,
            prefix=prefix,
            created_at=utcnow(),
        )
        self._insert(self._m.ApiKey, _values(key))
        return self._roundtrip(self._m.ApiKey, ApiKey, key)

    def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        K = self._m.ApiKey
        row = self._by(K, "key_hash", key_hash, order=(K.created_at, K.id))
        return _record(ApiKey, row) if row else None

    def _credential_parts(self) -> tuple[tuple[str, type[pw.Model], type], ...]:
        """(column prefix, model, record) of the key, its connector and the connector's project."""
        return (
            ("k_", self._m.ApiKey, ApiKey),
            ("c_", self._m.Connector, Connector),
            ("p_", self._m.Project, Project),
        )

    def _credentials_select(
        self, param: Callable[[int], pw.Value], parts: tuple, *extra: Any
    ) -> pw.ModelSelect:
        """SELECT each part's columns, prefixed, and ``extra``: the key with this hash
        (``param(0)``), the connector ``param(1)`` and its project, by outer joins."""
        K, C, P = self._m.ApiKey, self._m.Connector, self._m.Project
        columns = [
            f.alias(prefix + f.column_name)
            for prefix, model, _ in parts
            for f in model._meta.sorted_fields
        ]
        return (
            K.select(*columns, *extra)
            .join(C, pw.JOIN.LEFT_OUTER, on=(C.id == param(1)))
            .join(P, pw.JOIN.LEFT_OUTER, on=(P.id == C.project_id))
            .where(K.key_hash == param(0))
        )

    def get_credentials(
        self, key_hash: str, connector_id: str | None
    ) -> tuple[ApiKey | None, Connector | None, Project | None]:
        """The key, its connector and the connector's project in one query."""
        K = self._m.ApiKey
        parts = self._credential_parts()

        def build(param: Callable[[int], pw.Value]) -> Any:
            return self._credentials_select(param, parts).order_by(K.created_at, K.id).limit(1)

        rows = self._prefixed_rows("get_credentials", build, [key_hash, connector_id or ""])
        if not rows:
            return None, None, None
        key, connector, project = (_prefixed_record(rows[0], *part) for part in parts)
        return key, connector, project

    def _prefixed_rows(self, name: Any, build: Callable, args: list[Any]) -> list[dict[str, Any]]:
        """The rows of a compiled statement as dicts of database values by column name."""
        cursor = self._run(name, build, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def get_api_key(self, key_id: str) -> ApiKey | None:
        K = self._m.ApiKey
        row = self._by(K, "id", key_id)
        return _record(ApiKey, row) if row else None

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        K = self._m.ApiKey
        # Conditional update: of two revocations, exactly one sees the key still live.
        query = K.update(revoked_at=at).where((K.id == key_id) & K.revoked_at.is_null())
        return self._atomically(query.execute, one_statement=True) == 1

    def create_project(self, account_id: str, name: str) -> Project:
        self._require(self._m.Account, account_id, "account")
        project = Project(id=new_id("prj_"), account_id=account_id, name=name, created_at=utcnow())
        self._insert(self._m.Project, _values(project))
        return self._roundtrip(self._m.Project, Project, project)

    def get_project(self, project_id: str) -> Project | None:
        P = self._m.Project
        row = self._by(P, "id", project_id)
        return _record(Project, row) if row else None

    def update_project(self, project_id: str, **fields: Any) -> Project:
        P = self._m.Project
        changes = self._changes(P, Project, fields)

        def work() -> dict[str, Any] | None:
            if changes:
                P.update(changes).where(P.id == project_id).execute()
            return self._first(P.select().where(P.id == project_id))

        row = self._atomically(work)
        if row is None:
            raise NotFound(f"no project {project_id}")
        return _record(Project, row)

    def list_encrypted_auth_tokens(self) -> list[tuple[str, str]]:
        P = self._m.Project
        query = (
            P.select(P.id, P.twilio_auth_token_encrypted)
            .where(P.twilio_auth_token_encrypted.is_null(False))
            .order_by(P.id)
            .tuples()
        )
        return [(project_id, token) for project_id, token in query if token]

    def replace_auth_token(self, project_id: str, old: str, new: str) -> bool:
        P = self._m.Project
        # Conditional update: a token replaced meanwhile (connect-twilio) is left as it is.
        query = P.update(twilio_auth_token_encrypted=new).where(
            (P.id == project_id) & (P.twilio_auth_token_encrypted == old)
        )
        return self._atomically(query.execute, one_statement=True) == 1

    # -- senders and connectors -------------------------------------------------------------------
    def add_sender(self, sender: Sender) -> Sender:
        self._require(self._m.Project, sender.project_id, "project")
        try:
            self._insert(self._m.Sender, _values(sender))
        except pw.IntegrityError as exc:
            raise Conflict(f"sender {sender.address} is provisioned already") from exc
        return self._roundtrip(self._m.Sender, Sender, sender)

    def get_sender(self, address: str) -> Sender | None:
        S = self._m.Sender
        row = self._by(S, "address", address)
        return _record(Sender, row) if row else None

    def get_sender_with_project(self, address: str) -> tuple[Sender | None, Project | None]:
        S, P = self._m.Sender, self._m.Project

        def build(param: Callable[[int], pw.Value]) -> Any:
            columns = [f.alias("p_" + f.column_name) for f in P._meta.sorted_fields]
            return (
                S.select(S, *columns)
                .join(P, pw.JOIN.LEFT_OUTER, on=(P.id == S.project_id))
                .where(S.address == param(0))
                .limit(1)
            )

        row = self._row("get_sender_with_project", build, [address], S)
        if row is None:
            return None, None
        project = None
        if row["p_id"] is not None:
            fields = P._meta.sorted_fields
            project = _record(
                Project, {f.name: f.python_value(row["p_" + f.column_name]) for f in fields}
            )
        return _record(Sender, row), project

    def list_senders(self, project_id: str, environment: str | None = None) -> list[Sender]:
        S = self._m.Sender

        def build(param: Callable[[int], pw.Value]) -> Any:
            query = S.select().where(S.project_id == param(0))
            if environment is not None:
                query = query.where(S.environment == param(1))
            return query.order_by(S.created_at, S.address)

        key = ("list_senders", environment is not None)
        args = [project_id] if environment is None else [project_id, environment]
        return [_record(Sender, row) for row in self._rows(key, build, args, S)]

    def update_sender(self, address: str, **fields: Any) -> Sender:
        S = self._m.Sender
        changes = self._changes(S, Sender, fields)
        new_address = fields.get("address", address)

        def work() -> dict[str, Any] | None:
            if changes and not S.update(changes).where(S.address == address).execute():
                return None
            return self._first(S.select().where(S.address == new_address))

        try:
            row = self._atomically(work)
        except pw.IntegrityError as exc:
            raise Conflict(f"sender {new_address} is provisioned already") from exc
        if row is None:
            raise NotFound(f"no sender {address}")
        return _record(Sender, row)

    def create_connector(self, project_id: str, environment: str) -> Connector:
        self._require(self._m.Project, project_id, "project")
        connector = Connector(
            id=new_id("con_"), project_id=project_id, environment=environment, created_at=utcnow()
        )
        self._insert(self._m.Connector, _values(connector))
        return self._roundtrip(self._m.Connector, Connector, connector)

    def get_connector(self, connector_id: str) -> Connector | None:
        C = self._m.Connector
        row = self._by(C, "id", connector_id)
        return _record(Connector, row) if row else None

    # -- sessions ---------------------------------------------------------------------------------
    def create_session(self, session: Session) -> Session:
        """Record a new session. Raises Conflict when its id is taken."""
        try:
            # A fresh random id: no savepoint for a clash that does not happen.
            self._insert(self._m.Session, _values(session), may_fail=False)
        except pw.IntegrityError as exc:
            raise Conflict(f"session {session.id} exists") from exc
        return self._roundtrip(self._m.Session, Session, session)

    def get_session(self, session_id: str) -> Session | None:
        S = self._m.Session
        row = self._by(S, "id", session_id)
        return _record(Session, row) if row else None

    def find_open_session(
        self, project_id: str, user_number: str, agent_number: str
    ) -> Session | None:
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
            f"(SELECT o.{name('opted_out')} FROM {name(O_._meta.table_name)} AS o "
            f"WHERE o.{name('recipient')} = {p} AND o.{name('sender')} = {p} LIMIT 1) "
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
        block_and_opt_out = [project_id, user_number, user_number, agent_number]
        return [*block_and_opt_out, project_id, user_number, agent_number, CLOSED]

    def inbound_context(
        self, project_id: str, user_number: str, agent_number: str
    ) -> tuple[Session | None, datetime | None, bool]:
        args = self._context_args(project_id, user_number, agent_number)
        values = self._run_inbound_context(self._inbound_context_sql(claim=False), args)
        return self._inbound_context_row(values)

    def claim_inbound_with_context(
        self, message_sid: str, at: datetime, project_id: str, user_number: str, agent_number: str
    ) -> tuple[bool, Session | None, datetime | None, bool]:
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
        S = self._m.Session
        changes = self._changes(S, Session, fields)
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
        return self._open_sessions_by(self._m.Session.wake_at, now, limit)

    def due_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
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

    def senders_for_user(
        self, project_id: str, environment: str, user_number: str
    ) -> tuple[list[Sender], str | None]:
        S, Sn = self._m.Sender, self._m.Session

        # One round trip: the senders, each row carrying the user's last agent number.
        def build(param: Callable[[int], pw.Value]) -> Any:
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
                S.select(S, previous.alias("previous_agent_number"))
                .where((S.project_id == param(0)) & (S.environment == param(1)))
                .order_by(S.created_at, S.address)
            )

        rows = self._rows("senders_for_user", build, [project_id, environment, user_number], S)
        previous = rows[0]["previous_agent_number"] if rows else None
        return [_record(Sender, row) for row in rows], previous

    # -- messages ---------------------------------------------------------------------------------
    def add_message(self, message: Message) -> Message:
        """Record a message. Raises Conflict when its id is taken."""
        try:
            self._insert(self._m.Message, _values(message), may_fail=False)
        except pw.IntegrityError as exc:
            raise Conflict(f"message {message.id} exists") from exc
        return self._roundtrip(self._m.Message, Message, message)

    def get_message(self, message_id: str) -> Message | None:
        M = self._m.Message
        row = self._by(M, "id", message_id)
        return _record(Message, row) if row else None

    def get_message_by_sid(self, twilio_sid: str) -> Message | None:
        M = self._m.Message
        row = self._by(M, "twilio_sid", twilio_sid, order=(M.seq.desc(),))
        return _record(Message, row) if row else None

    def list_messages(self, session_id: str) -> list[Message]:
        M = self._m.Message
        query = M.select().where(M.session_id == session_id).order_by(M.seq)
        return [_record(Message, row) for row in query.dicts()]

    def list_messages_of_sessions(self, session_ids: Sequence[str]) -> dict[str, list[Message]]:
        """One query for every session's messages (a page of conversations)."""
        found: dict[str, list[Message]] = {session_id: [] for session_id in session_ids}
        if not found:
            return found
        M = self._m.Message
        query = M.select().where(M.session_id.in_(list(found))).order_by(M.seq)
        for row in query.dicts():
            found[row["session_id"]].append(_record(Message, row))
        return found

    def update_message(
        self, message_id: str, expected_status: str | tuple[str, ...] | None = None, **fields: Any
    ) -> Message | None:
        M = self._m.Message
        changes = self._changes(M, Message, fields)
        condition = M.id == message_id
        if expected_status is not None:
            allowed = (expected_status,) if isinstance(expected_status, str) else expected_status
            if not allowed:
                return None
            # The status check and the write are one statement: two jobs cannot both pass it.
            condition &= M.status.in_(list(allowed))

        def work() -> dict[str, Any] | None:
            if not changes:
                return self._first(M.select().where(condition))
            if not M.update(changes).where(condition).execute():
                return None
            return self._first(M.select().where(M.id == message_id))

        if changes and self._db.returning_clause:
            # PostgreSQL: the update returns the new row, one statement and no transaction.
            statuses = [] if expected_status is None else list(allowed)

            def where(param: Callable[[int], pw.Value]) -> Any:
                mine = M.id == param(0)
                if statuses:
                    mine &= M.status.in_([param(1 + i) for i in range(len(statuses))])
                return mine

            row = self._atomically(
                lambda: self._updated_row(
                    ("update_message", len(statuses)), M, changes, where, [message_id, *statuses]
                ),
                one_statement=True,
            )
        else:
            row = self._atomically(work)
        return _record(Message, row) if row else None

    # -- the send job's two statements (PostgreSQL) -----------------------------------------------
    # A send job used to make eight round trips around its Twilio call: read the message, claim
    # it, read the opt-out, the project and the sender; record `sent`, count it, read the status
    # events. On PostgreSQL each half is one statement, a data-modifying CTE (one round trip, no
    # BEGIN/COMMIT); other databases use the Store's defaults, one call per step.
    def _send_sql(self) -> dict[str, Any]:
        found = getattr(self, "_send_statements", None)
        if found is not None:
            return found

        def q(name: str) -> str:
            return '"' + name.replace('"', '""') + '"'

        def cols(model: type[pw.Model], alias: str) -> str:
            return ", ".join(f"{alias}.{q(f.column_name)}" for f in model._meta.sorted_fields)

        M, P, S, O_, E, N = (
            self._m.Message,
            self._m.Project,
            self._m.Sender,
            self._m.OptOut,
            self._m.StatusEvent,
            self._m.Metric,
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
            f"(SELECT o.{q(O_.opted_out.column_name)} FROM {t[O_]} AS o "
            f"WHERE o.{q(O_.recipient.column_name)} = m.{q(M.to.column_name)} "
            f"AND o.{q(O_.sender.column_name)} = {sender} LIMIT 1), "
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
        self._send_statements = {"claim": claim, "sent": sent}
        return self._send_statements

    def _uses_send_statements(self) -> bool:
        return isinstance(self._db, pw.PostgresqlDatabase)

    def _send_statement(self, name: str, args: list[Any]) -> tuple | None:
        """Run one of the send statements (prepared on the connection, where the database
        prepares the store's statements: planning the CTE cost PostgreSQL about twice its
        execution); its row, or None."""
        sql = self._send_sql()[name]
        execute = getattr(self._db, "execute_statement", self._db.execute_sql)
        return self._atomically(lambda: execute(sql, args).fetchone(), one_statement=True)

    @staticmethod
    def _from_row(model: type[pw.Model], cls: type[T], values: Any) -> T:
        fields = model._meta.sorted_fields
        row = {f.column_name: f.python_value(v) for f, v in zip(fields, values, strict=True)}
        return _record(cls, row)

    def claim_send(self, message_id: str, at: datetime) -> SendClaim | None:
        if not self._uses_send_statements():
            return super().claim_send(message_id, at)
        M, P, S = self._m.Message, self._m.Project, self._m.Sender
        args = [SENDING, M.updated_at.db_value(at), message_id, QUEUED]
        row = self._send_statement("claim", args)
        if row is None:
            return None
        nm, np_ = len(M._meta.sorted_fields), len(P._meta.sorted_fields)
        project_values = row[nm + 1 : nm + 1 + np_]
        sender_values = row[nm + 1 + np_ :]
        # A LEFT JOIN that found nothing gives NULLs, and every row has a non-null id.
        has_project = project_values[P._meta.sorted_fields.index(P.id)] is not None
        has_sender = sender_values[S._meta.sorted_fields.index(S.id)] is not None
        return SendClaim(
            message=self._from_row(M, Message, row[:nm]),
            opted_out=bool(row[nm]),
            project=self._from_row(P, Project, project_values) if has_project else None,
            sender=self._from_row(S, Sender, sender_values) if has_sender else None,
        )

    def record_sent(
        self, message_id: str, twilio_sid: str, at: datetime
    ) -> tuple[Message | None, list[StatusEvent]]:
        if not self._uses_send_statements():
            return super().record_sent(message_id, twilio_sid, at)
        M, N = self._m.Message, self._m.Metric
        args = [
            SENT,
            twilio_sid,
            M.updated_at.db_value(at),
            message_id,
            SENDING,
            N.day.db_value(at.date()),
            "sent",
            twilio_sid,
        ]
        row = self._send_statement("sent", args)
        if row is None:
            return None, []
        sent = self._from_row(M, Message, row[:-1])
        # Rarely any: only a callback that arrived before this update.
        return sent, self.list_status_events(twilio_sid) if row[-1] else []

    def stuck_messages(self, older_than: datetime, limit: int = 500) -> list[Message]:
        M = self._m.Message
        query = (
            M.select()
            .where(
                (
                    (M.status.in_([QUEUED, SENDING]) & (M.direction == OUTBOUND))
                    | (M.status.in_([RECEIVED, PROCESSING]) & (M.direction == INBOUND))
                )
                & (M.updated_at < older_than)
            )
            .order_by(M.updated_at, M.seq)
            .limit(limit)
        )
        return [_record(Message, row) for row in query.dicts()]

    def add_status_event(self, event: StatusEvent) -> bool:
        # The unique (twilio_sid, status) index decides which of two deliveries is the first.
        return self._insert_unless_taken(self._m.StatusEvent, _values(event))

    def list_status_events(self, twilio_sid: str) -> list[StatusEvent]:
        E = self._m.StatusEvent

        def build(param: Callable[[int], pw.Value]) -> Any:
            return E.select().where(E.twilio_sid == param(0)).order_by(E.received_at, E.seq)

        rows = self._rows("list_status_events", build, [twilio_sid], E)
        return [_record(StatusEvent, row) for row in rows]

    def claim_inbound(self, message_sid: str, at: datetime) -> bool:
        # The primary key on message_sid lets exactly one insert through, in any process.
        return self._insert_unless_taken(
            self._m.InboundClaim, {"message_sid": message_sid, "claimed_at": at}
        )

    # -- templates --------------------------------------------------------------------------------
    def create_template(self, template: Template) -> Template:
        """Raises Conflict when the project has a template with this title (or the id is taken)."""
        try:
            self._insert(self._m.Template, _values(template))
        except pw.IntegrityError as exc:
            raise Conflict(f"a template titled {template.title!r} exists") from exc
        return self._roundtrip(self._m.Template, Template, template)

    def get_template(self, project_id: str, template_id: str) -> Template | None:
        T_ = self._m.Template
        row = self._first(T_.select().where((T_.id == template_id) & (T_.project_id == project_id)))
        return _record(Template, row) if row else None

    def get_template_by_title(self, project_id: str, title: str) -> Template | None:
        T_ = self._m.Template
        row = self._first(T_.select().where((T_.project_id == project_id) & (T_.title == title)))
        return _record(Template, row) if row else None

    def list_templates(self, project_id: str) -> list[Template]:
        T_ = self._m.Template
        query = T_.select().where(T_.project_id == project_id).order_by(T_.title)
        return [_record(Template, row) for row in query.dicts()]

    def update_template(self, project_id: str, template_id: str, **fields: Any) -> Template:
        """Raises NotFound, or Conflict when a new title is taken. ``id`` and ``project_id`` are
        not settable (TypeError): a template never moves to another project."""
        T_ = self._m.Template
        changes = self._changes(T_, Template, fields, frozen=("id", "project_id"))
        mine = (T_.id == template_id) & (T_.project_id == project_id)

        def work() -> dict[str, Any] | None:
            if changes and not T_.update(changes).where(mine).execute():
                return None
            return self._first(T_.select().where(mine))

        try:
            row = self._atomically(work)
        except pw.IntegrityError as exc:
            raise Conflict(f"a template titled {fields.get('title')!r} exists") from exc
        if row is None:
            raise NotFound(f"no template {template_id}")
        return _record(Template, row)

    def delete_template(self, project_id: str, template_id: str) -> bool:
        T_ = self._m.Template
        query = T_.delete().where((T_.id == template_id) & (T_.project_id == project_id))
        return self._atomically(query.execute, one_statement=True) > 0

    # -- opt-outs ---------------------------------------------------------------------------------
    def set_opt_out(
        self,
        project_id: str,
        recipient: str,
        sender: str,
        opted_out: bool,
        keyword: str | None,
        at: datetime,
    ) -> bool:
        O_, E = self._m.OptOut, self._m.OptOutEvent
        pair = (O_.recipient == recipient) & (O_.sender == sender)
        if opted_out:
            # The pair's row must exist for the conditional update to find; created (opted in)
            # outside the transaction below, so MySQL takes no gap locks there to deadlock on.
            self._ensure_opt_out_row(project_id, recipient, sender, at)

        def work() -> bool:
            # Only the caller whose update flips the state records the change.
            flipped = (
                O_.update(opted_out=opted_out, project_id=project_id, updated_at=at)
                .where(pair & (O_.opted_out == (not opted_out)))
                .execute()
            )
            if not flipped:
                return False
            E.insert(
                project_id=project_id,
                recipient=recipient,
                sender=sender,
                action="opt_out" if opted_out else "opt_in",
                keyword=keyword,
                at=at,
            ).execute()
            return True

        return self._atomically(work)

    def _ensure_opt_out_row(
        self, project_id: str, recipient: str, sender: str, at: datetime
    ) -> None:
        O_ = self._m.OptOut
        pair = (O_.recipient == recipient) & (O_.sender == sender)
        if O_.select(O_.seq).where(pair).exists():
            return
        values = {
            "recipient": recipient,
            "sender": sender,
            "project_id": project_id,
            "opted_out": False,
            "updated_at": at,
        }
        try:
            self._insert(O_, values)
        except pw.IntegrityError:
            pass  # another caller created it a moment ago: the row is all that is needed

    def is_opted_out(self, recipient: str, sender: str) -> bool:
        O_ = self._m.OptOut

        def build(param: Callable[[int], pw.Value]) -> Any:
            pair = (O_.recipient == param(0)) & (O_.sender == param(1))
            return O_.select(O_.opted_out).where(pair).limit(1)

        row = self._row("is_opted_out", build, [recipient, sender], O_)
        return bool(row and row["opted_out"])

    def opt_out_history(
        self, project_id: str, recipient: str, sender: str | None = None
    ) -> list[OptOutEvent]:
        E = self._m.OptOutEvent
        query = E.select().where((E.project_id == project_id) & (E.recipient == recipient))
        if sender is not None:
            query = query.where(E.sender == sender)
        return [_record(OptOutEvent, row) for row in query.order_by(E.seq).dicts()]

    # -- metrics ----------------------------------------------------------------------------------
    def incr_metric(
        self, project_id: str, environment: str, day: date, name: str, amount: int = 1
    ) -> None:
        M = self._m.Metric

        # One upsert statement: the database adds to the stored value, no read-modify-write.
        def build(param: Callable[[int], pw.Value]) -> Any:
            return M.insert(
                project_id=param(0),
                environment=param(1),
                day=param(2),
                name=param(3),
                value=param(4),
            ).on_conflict(
                update={M.value: M.value + param(5)},
                **self._conflict_target(M.project_id, M.environment, M.day, M.name),
            )

        args = [project_id, environment, M.day.db_value(day), name, amount, amount]
        if self._db.in_transaction():
            # With the transaction's next statement, or its COMMIT: the counter row, shared by
            # every request of the project, is then locked for the shortest time.
            self._defer("incr_metric", build, args)
            return
        self._run("incr_metric", build, args)

    def get_metrics(
        self, project_id: str, environment: str, start: date, end: date
    ) -> dict[date, dict[str, int]]:
        M = self._m.Metric
        query = M.select(M.day, M.name, M.value).where(
            (M.project_id == project_id)
            & (M.environment == environment)
            & (M.day >= start)
            & (M.day <= end)
        )
        result: dict[date, dict[str, int]] = {}
        for row in query.dicts():
            result.setdefault(row["day"], {})[row["name"]] = int(row["value"])
        return result

    # -- operations: what the Prometheus endpoint reads ------------------------------------------
    def metric_totals(self, names: Sequence[str]) -> dict[str, int]:
        # One grouped scan of the counter table (a row per project, environment, day and name).
        M = self._m.Metric
        totals = dict.fromkeys(names, 0)
        if not totals:
            return totals
        query = (
            M.select(M.name, pw.fn.SUM(M.value).alias("total"))
            .where(M.name.in_(list(totals)))
            .group_by(M.name)
        )
        for row in query.dicts():
            totals[row["name"]] = int(row["total"] or 0)
        return totals

    def oldest_unsent_at(self, now: datetime) -> datetime | None:
        # The waiting rows are found through the (status, updated_at) index.
        M = self._m.Message
        query = M.select(pw.fn.MIN(M.created_at).alias("oldest")).where(
            M.status.in_([QUEUED, SENDING]) & (M.direction == OUTBOUND)
        )
        oldest = query.scalar()
        return None if oldest is None else M.created_at.python_value(oldest)

    def count_due_sessions(self, now: datetime, cap: int = 10_000) -> int:
        S = self._m.Session
        due = (
            S.select(S.seq)
            .where(
                # "state != closed" as two ranges, so that the (state, deadline) index serves it.
                ((S.state < CLOSED) | (S.state > CLOSED))
                & S.deadline_at.is_null(False)
                & (S.deadline_at <= now)
            )
            .limit(cap)
        )
        return due.count()

    # -- inbound abuse blocks ---------------------------------------------------------------------
    def block_number(self, project_id: str, number: str, until: datetime, reason: str) -> None:
        B = self._m.NumberBlock
        later = B.blocked_until < until
        query = B.insert(
            project_id=project_id, number=number, blocked_until=until, reason=reason
        ).on_conflict(
            # An upsert that keeps the later deadline (and its reason). The reason comes first:
            # MySQL applies assignments left to right, so it must still see the old deadline.
            update={
                B.reason: pw.Case(None, [(later, reason)], B.reason),
                B.blocked_until: pw.Case(
                    None, [(later, B.blocked_until.to_value(until))], B.blocked_until
                ),
            },
            **self._conflict_target(B.project_id, B.number),
        )
        self._atomically(query.execute, one_statement=True)

    def blocked_until(self, project_id: str, number: str) -> datetime | None:
        B = self._m.NumberBlock

        def build(param: Callable[[int], pw.Value]) -> Any:
            pair = (B.project_id == param(0)) & (B.number == param(1))
            return B.select(B.blocked_until).where(pair).limit(1)

        row = self._row("blocked_until", build, [project_id, number], B)
        return row["blocked_until"] if row else None

    # -- dashboard sign-ins -----------------------------------------------------------------------
    def add_dashboard_sign_in(self, sign_in: DashboardSignIn) -> DashboardSignIn:
        try:
            self._insert(self._m.DashboardSignIn, _values(sign_in))
        except pw.IntegrityError as exc:
            raise Conflict("a dashboard sign-in with this id exists") from exc
        return self._roundtrip(self._m.DashboardSignIn, DashboardSignIn, sign_in)

    def get_dashboard_sign_in(self, sign_in_id: str) -> DashboardSignIn | None:
        row = self._by(self._m.DashboardSignIn, "id", sign_in_id)
        return _record(DashboardSignIn, row) if row else None

    def touch_dashboard_sign_in(self, sign_in_id: str, at: datetime) -> bool:
        D = self._m.DashboardSignIn
        query = D.update(last_seen_at=at).where((D.id == sign_in_id) & D.ended_at.is_null())
        return self._atomically(query.execute, one_statement=True) == 1

    def end_dashboard_sign_in(self, sign_in_id: str, at: datetime, reason: str) -> bool:
        D = self._m.DashboardSignIn
        # Conditional update: of two ends (sign-out here, a timeout there), one is recorded.
        query = D.update(ended_at=at, end_reason=reason).where(
            (D.id == sign_in_id) & D.ended_at.is_null()
        )
        return self._atomically(query.execute, one_statement=True) == 1
