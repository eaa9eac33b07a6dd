"""Schema migrations of the Peewee store: numbered scripts run by ``playhouse.migrations``.

Each script in this folder (``0001_initial.py``, ``0002_dashboard_sign_in.py``, ...) defines
``up(migrator, db)`` and ``down(migrator, db)``; peewee's :class:`~playhouse.migrations.Runner`
applies the missing ones in numeric order and records each in the history table
``<table prefix>schema_migration``. Scripts name their tables with :func:`table_prefix` (the
runner hands a script only the migrator and the database) and build them from
:mod:`.frozen`'s column types, never from the store's models: a released script must create the
same tables forever, whatever the models become.

A script may also define ``present(db) -> bool``: whether its tables are already in a database
that has no history (made by flask-polysms 0.1.0, which created its tables without one). An
upgrade records such leading scripts as applied without running them, then applies the rest.

Every change to the store's models ships with a new script: ``tests/test_migrations.py``
compares the schema the scripts build with the one the models build, per dialect.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import peewee as pw
from playhouse.migrations import Migration, Runner

from flask_polysms.ports.store import SchemaError, SchemaTooNew, SchemaUpgrade, SchemaVersion

#: The history table's name after the store's table prefix.
HISTORY_TABLE = "schema_migration"
#: Where the scripts are: this package's own folder.
DIRECTORY = os.path.dirname(os.path.abspath(__file__))
#: How long an upgrade on MySQL/MariaDB waits for another process's upgrade to finish.
MYSQL_LOCK_WAIT_S = 600
#: Tries of an SQLite upgrade that met "database is locked" before its lock was taken: switching
#: a new file to WAL (a pragma of every connection) needs the file to itself and does not wait.
SQLITE_LOCKED_TRIES = 20

_table_prefix: ContextVar[str] = ContextVar("polysms_migration_table_prefix")


def table_prefix() -> str:
    """The table prefix of the store being migrated: every table and index a script names
    starts with it. Only meaningful while :class:`SchemaMigrations` runs or inspects scripts."""
    try:
        return _table_prefix.get()
    except LookupError:
        raise RuntimeError(
            "table_prefix() is for migration scripts run by SchemaMigrations"
        ) from None


@contextmanager
def _prefix(prefix: str) -> Iterator[None]:
    token = _table_prefix.set(prefix)
    try:
        yield
    finally:
        _table_prefix.reset(token)


class SchemaMigrations:
    """The scripts of this package applied to one store's tables (those named with
    ``table_prefix``), their history in ``<table_prefix>schema_migration``."""

    def __init__(self, database: pw.Database, table_prefix: str, directory: str = DIRECTORY):
        self.database = database
        self.table_prefix = table_prefix
        self.history_table = table_prefix + HISTORY_TABLE
        self.runner = Runner(database, directory, table_name=self.history_table)

    # -- reading ----------------------------------------------------------------------------------
    def version(self) -> SchemaVersion:
        """Where the database stands; reads only (a database without history is inspected for
        the tables of the leading scripts that define ``present``)."""
        with _prefix(self.table_prefix):
            return self._version()

    def check(self) -> None:
        """Raise :class:`SchemaTooNew` when the history holds a migration not shipped here.

        Two cheap reads (is there a history table, its names); nothing else is inspected."""
        known = {migration.name for migration in self.runner.migrations()}
        unknown = set(self.runner.applied()) - known
        if unknown:
            raise SchemaTooNew(self.version())

    # -- changing ---------------------------------------------------------------------------------
    def upgrade(self, target: str | None = None) -> SchemaUpgrade:
        """Record the scripts whose tables a history-less database already has, then apply the
        missing ones, in order (up to ``target`` included, when given), one process at a time.
        Refuses a database a newer version upgraded (:class:`SchemaTooNew`) before changing
        anything."""
        for attempt in range(1, SQLITE_LOCKED_TRIES + 1):
            try:
                return self._upgrade_once(target)
            except pw.OperationalError as exc:
                sqlite = isinstance(self.database, pw.SqliteDatabase)
                if not sqlite or "locked" not in str(exc) or attempt == SQLITE_LOCKED_TRIES:
                    raise
                # Another process holds the file (its upgrade, or its connection's WAL switch):
                # connect again, pragmas included, once it is done.
                self.database.close()
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _upgrade_once(self, target: str | None) -> SchemaUpgrade:
        with _prefix(self.table_prefix), self._exclusive():
            version = self._version()
            if version.unknown:
                raise SchemaTooNew(version)
            recorded: tuple[str, ...] = ()
            if version.unrecorded:
                recorded = tuple(self.runner.fake(version.unrecorded[-1]))
            applied = tuple(self.runner.up(target))
            return SchemaUpgrade(recorded=recorded, applied=applied)

    def drop_history(self) -> None:
        """Drop the history table (with the store's tables, in tests)."""
        self.runner.History.drop_table(safe=True)

    # -- plumbing ---------------------------------------------------------------------------------
    def _version(self) -> SchemaVersion:
        status = self.runner.status()
        known = [migration for migration in status if migration.path is not None]
        unknown = tuple(migration.name for migration in status if migration.path is None)
        applied = tuple(migration.name for migration in known if migration.applied)
        unrecorded: tuple[str, ...] = ()
        if not (applied or unknown):
            unrecorded = tuple(self._present_without_history(known))
        pending = tuple(
            migration.name
            for migration in known
            if not migration.applied and migration.name not in unrecorded
        )
        return SchemaVersion(
            applied=applied,
            unrecorded=unrecorded,
            pending=pending,
            unknown=unknown,
            latest=known[-1].name if known else None,
        )

    def _present_without_history(self, migrations: list[Migration]) -> Iterator[str]:
        # The leading scripts whose tables are all there; a script's present() raises
        # SchemaError when only some of them are (a schema no release made).
        for migration in migrations:
            present = getattr(migration.load(), "present", None)
            if present is None or not present(self.database):
                return
            yield migration.name

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One upgrade at a time per database: two processes starting on one SQLite file, or two
        `db upgrade`s, must not both run a script. SQLite and PostgreSQL also make the whole
        upgrade one transaction (their DDL is transactional): a failed script leaves nothing."""
        database = self.database
        if isinstance(database, pw.SqliteDatabase):
            with database.atomic("IMMEDIATE"):
                yield
        elif isinstance(database, pw.PostgresqlDatabase):
            with database.atomic():
                # Advisory locks are per database; the key is the history table's name.
                key = zlib.crc32(self.history_table.encode("utf-8"))
                database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (key,))
                yield
        elif isinstance(database, pw.MySQLDatabase):
            # MySQL commits each DDL statement by itself: a named lock (held by this connection)
            # is what serialises upgrades there.
            got = database.execute_sql(
                "SELECT GET_LOCK(%s, %s)", (self.history_table, MYSQL_LOCK_WAIT_S)
            ).fetchone()[0]
            if got != 1:
                raise SchemaError(
                    f"another process has been upgrading the schema for {MYSQL_LOCK_WAIT_S} s "
                    f"(the lock {self.history_table!r} is held): try again when it is done"
                )
            try:
                yield
            finally:
                database.execute_sql("SELECT RELEASE_LOCK(%s)", (self.history_table,))
        else:
            yield
