"""The four store backends a test can run on, and an empty store of each."""

from __future__ import annotations

import peewee as pw
import pytest

from flask_polysms.backends import create_store
from flask_polysms.ports.store import SchemaError

#: Every backend: the memory store, and the Peewee store on SQLite, PostgreSQL and MariaDB (the
#: last two need the real servers: marked ``services``).
BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mysql", marks=pytest.mark.services),
]

#: The store's tables in the servers' test databases (the default prefix).
PREFIX = "polysms_"


def storage_url(request: pytest.FixtureRequest, backend: str, tmp_path) -> str:
    """A storage URL of ``backend`` whose tables are up to date and empty.

    On the servers this is the suite's test database, its tables emptied row by row: creating a
    database and running every migration for each test cost seconds a test, and the migrations
    have tests of their own on fresh databases (``tests/test_migrations.py``).
    """
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'polysms.db'}"
    url = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mysql_url")
    store = create_store(url, table_prefix=PREFIX)
    try:
        try:
            store.create_schema()
        except (SchemaError, pw.DatabaseError):
            # Left by another version of the code, or by a run stopped in the middle of an
            # upgrade (MySQL cannot roll a CREATE TABLE back): start again.
            store.drop_schema()
            store.create_schema()
        _empty(store)
    finally:
        store.disconnect()
    return url


def _empty(store) -> None:
    """Delete every row of the store's tables, in one transaction (the migration history stays)."""
    database = store.database
    history = PREFIX + "schema_migration"
    tables = [t for t in database.get_tables() if t.startswith(PREFIX) and t != history]
    with database.atomic():
        if isinstance(database, pw.PostgresqlDatabase):
            # A connection a failed test left in a transaction holds row locks: fail, never hang.
            database.execute_sql("SET LOCAL lock_timeout = '10s'")
        opening, closing = database.quote[0], database.quote[1]
        for table in tables:
            database.execute_sql(f"DELETE FROM {opening}{table}{closing}")
