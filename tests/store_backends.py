"""The four store backends a test can run on, and a fresh storage URL of each."""

from __future__ import annotations

import pytest

from flask_polysms.backends import create_store

#: Every backend: the memory store, and the Peewee store on SQLite, PostgreSQL and MariaDB (the
#: last two need the real servers: marked ``services``).
BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mysql", marks=pytest.mark.services),
]


def storage_url(request: pytest.FixtureRequest, backend: str, tmp_path) -> str:
    """A storage URL of ``backend`` with fresh, empty tables (a database of its own on the
    servers), the schema created as ``flask polysms init-db`` would."""
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'polysms.db'}"
    url = request.getfixturevalue(
        "fresh_postgres_url" if backend == "postgresql" else "fresh_mysql_url"
    )
    store = create_store(url)
    store.create_schema()  # servers wait for `flask polysms init-db`
    store.disconnect()
    return url
