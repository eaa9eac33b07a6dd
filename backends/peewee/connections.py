"""Opening a store's database from its URL: the class, the pool and the settings per scheme."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import peewee as pw
from playhouse.db_url import parse as parse_url

from .databases import _SqliteDatabase
from .mysql import _MySQLDatabase, _PooledMySQLDatabase
from .postgres import _PipelinedPostgres, _PooledPipelinedPostgres


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
        # Each statement reads what is committed when it starts, as on PostgreSQL: under InnoDB's
        # REPEATABLE READ a compare-and-set retried inside a transaction re-read the snapshot of
        # its first read, never the newer version, and gave up (an inbound message racing the
        # agent's save of the same session).
        params["init_command"] = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
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
