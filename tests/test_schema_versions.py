"""The schema version of the Peewee store and the commands reading it (``flask polysms
init-db``, ``db current``, ``db upgrade``), on SQLite, PostgreSQL and MariaDB.

``init-db`` is an upgrade from empty, and ``db current`` follows it; a history holding a migration
this version does not ship is refused at start-up, by the store and by the CLI; two upgrades at
once apply each migration once; a partial schema without a history is refused; the memory store
keeps no versions.
"""

from __future__ import annotations

from typing import Any

import pytest
from faults_migrations_support import (
    EVERY_MIGRATION,
    LATEST,
    LATEST_VERSION,
    _app,
    _cli,
    _store,
    empty_url_fixture,  # noqa: F401
    pending,
)
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.backends.peewee_migrations import HISTORY_TABLE, SchemaMigrations
from flask_polysms.ports.store import SchemaTooNew, SchemaUpgrade, migration_number

FUTURE = "0099_from_a_later_release"


def test_init_db_is_an_upgrade_from_empty_and_current_follows(empty_url):
    app = _app(empty_url, "cli_")
    sqlite = empty_url.startswith("sqlite")
    current = _cli(app, "db", "current")
    if sqlite:  # created at start-up
        assert (current.exit_code, current.output) == (0, f"{LATEST_VERSION}, up to date\n")
    else:
        assert current.exit_code == 1
        assert current.output == (
            f"no schema; {pending(EVERY_MIGRATION)}; run `flask polysms db upgrade`\n"
        )
    init = _cli(app, "init-db")
    assert init.exit_code == 0, init.output
    applied = [] if sqlite else [f"applied {name}" for name in EVERY_MIGRATION]
    assert init.output.splitlines() == [*applied, f"polysms schema ready at {LATEST_VERSION}"]
    assert _cli(app, "init-db").output == f"polysms schema ready at {LATEST_VERSION}\n"
    current = _cli(app, "db", "current")
    assert (current.exit_code, current.output) == (0, f"{LATEST_VERSION}, up to date\n")
    store = get_state(app).store
    assert store.schema_version().applied == EVERY_MIGRATION
    assert "cli_" + HISTORY_TABLE in store.database.get_tables()
    store.disconnect()


def test_a_history_with_a_migration_from_a_later_release_is_refused(empty_url):
    """An older flask-polysms on a database a newer one upgraded: the store, the CLI and the
    app's start-up (SQLite and servers alike) refuse it, naming both versions and the command;
    nothing is changed."""
    store = _store(empty_url)
    store.upgrade_schema()
    app_before = _app(empty_url)  # started before a later release upgraded the database
    history = SchemaMigrations(store.database, "polysms_").runner.History
    history.create(name=FUTURE)
    tables = sorted(store.database.get_tables())

    version = store.schema_version()
    assert version.unknown == (FUTURE,) and version.current == FUTURE
    assert version.latest == LATEST and not version.up_to_date
    with pytest.raises(SchemaTooNew) as refused:
        store.upgrade_schema()
    message = str(refused.value)
    latest = f"up to version {migration_number(LATEST)}, {LATEST}"
    for words in (f"version 99 ({FUTURE})", latest, "flask polysms db upgrade"):
        assert words in message
    with pytest.raises(SchemaTooNew):
        store.check_schema()
    with pytest.raises(SchemaTooNew, match=FUTURE):
        store.create_schema()
    store.disconnect()

    # Start-up: SQLite upgrades there, servers read the history there.
    with pytest.raises(SchemaTooNew, match="flask polysms db upgrade"):
        _app(empty_url)

    for command in (("db", "upgrade"), ("db", "current"), ("init-db",)):
        result = _cli(app_before, *command)
        assert result.exit_code == 1, (command, result.output)
        assert result.output.startswith(f"Error: the database schema is at version 99 ({FUTURE})")
        assert "flask polysms db upgrade" in result.output
    get_state(app_before).store.disconnect()

    check = _store(empty_url)
    assert sorted(check.database.get_tables()) == tables
    assert check.schema_version().unknown == (FUTURE,)  # still there, nothing changed
    check.disconnect()


def test_two_upgrades_at_once_apply_each_migration_once(empty_url):
    """Two processes starting on one SQLite file, or two `db upgrade`s: one upgrades, the other
    waits for it and then finds nothing to do."""
    import threading

    results: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def upgrade() -> None:
        store = _store(empty_url)
        try:
            barrier.wait(timeout=30)
            results.append(store.upgrade_schema())
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            store.disconnect()

    threads = [threading.Thread(target=upgrade) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(results, key=lambda r: len(r.applied)) == [
        SchemaUpgrade(),
        SchemaUpgrade(applied=EVERY_MIGRATION),
    ]


def test_a_partial_schema_without_history_is_refused(tmp_path):
    """Some of 0.1.0's tables and no history: no release made that, so nothing is guessed."""
    from flask_polysms.ports.store import SchemaError

    url = f"sqlite:///{tmp_path / 'partial.db'}"
    store = _store(url)
    store.upgrade_schema()
    store.database.execute_sql(f'DROP TABLE "polysms_{HISTORY_TABLE}"')
    store.database.execute_sql('DROP TABLE "polysms_template"')
    with pytest.raises(SchemaError, match="polysms_template"):
        store.upgrade_schema()
    store.disconnect()


def test_the_memory_store_has_no_schema_versions():
    app = Flask("memory")
    app.config.update(TESTING=True, SECRET_KEY="k")
    PolySMS(app)
    assert get_state(app).store.schema_version() is None
    current = _cli(app, "db", "current")
    assert (current.exit_code, current.output) == (0, "this store keeps no schema versions\n")
    upgrade = _cli(app, "db", "upgrade")
    assert upgrade.output == "this store keeps no schema versions: nothing to upgrade\n"
    assert _cli(app, "init-db").output == "polysms schema ready\n"
