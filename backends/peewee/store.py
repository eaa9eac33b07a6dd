"""The Peewee Store: SQLite, PostgreSQL and MySQL/MariaDB through ``playhouse.db_url``.

:class:`PeeweeStore` holds the store's life cycle (schema, connections, transactions); its record
methods come from one mixin per kind of record (``accounts.py``, ``sessions.py``, ...), on the
statement machinery of ``statements.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import peewee as pw
from playhouse.pool import PooledDatabase

from flask_polysms.backends.peewee_migrations import SchemaMigrations
from flask_polysms.ports.store import SchemaUpgrade, SchemaVersion, Store

from .accounts import AccountRecords
from .connections import _open_database
from .idempotency import IdempotencyRecords
from .messages import MessageRecords
from .metrics import MetricRecords
from .models import _build_models
from .mysql import binary_collation
from .opt_outs import OptOutRecords
from .scheduled import ScheduledRecords
from .sessions import SessionRecords
from .statements import StatementRunner, T
from .templates import TemplateRecords
from .turns import TurnRecords
from .webhooks import WebhookRecords

DEFAULT_TABLE_PREFIX = "polysms_"
# Index names are the prefix plus up to 22 characters; PostgreSQL cuts identifiers at 63.
_PREFIX_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")


class PeeweeStore(
    AccountRecords,
    TurnRecords,
    SessionRecords,
    MessageRecords,
    ScheduledRecords,
    TemplateRecords,
    OptOutRecords,
    MetricRecords,
    IdempotencyRecords,
    WebhookRecords,
    StatementRunner,
    Store,
):
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
            charset = f"DEFAULT CHARSET=utf8mb4 COLLATE={binary_collation(self._db)}"
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
