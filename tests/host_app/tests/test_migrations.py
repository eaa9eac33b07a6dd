"""Flask-Migrate on the database the clinic shares with flask-polysms: ``flask db migrate``
(autogenerate) through the app's CLI runner against the real PostgreSQL proposes nothing for
flask-polysms' tables, and still sees the clinic's own changes."""

from __future__ import annotations

import shutil

import psycopg2
import pytest
from clinic import db
from sqlalchemy import inspect

PREFIX = "clinic_sms_"


@pytest.fixture
def migrations(app, tmp_path):
    """A copy of the clinic's migrations folder, for the revisions autogenerate writes."""
    folder = tmp_path / "migrations"
    shutil.copytree(app.extensions["migrate"].directory, folder)
    return folder


def autogenerate(app, folder) -> list[str]:
    """``flask db migrate`` into ``folder``; the text of each revision it wrote."""
    before = set((folder / "versions").glob("*.py"))
    result = app.test_cli_runner().invoke(args=["db", "migrate", "-d", str(folder), "-m", "probe"])
    assert result.exit_code == 0, result.output
    return [path.read_text() for path in set((folder / "versions").glob("*.py")) - before]


def test_both_schemas_are_in_the_one_database(app):
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())
    ours = {name for name in tables if name.startswith(PREFIX)}
    assert len(ours) >= 5
    assert tables - ours == {"users", "alembic_version"}


def test_autogenerate_proposes_nothing_for_flask_polysms_tables(app, migrations):
    assert autogenerate(app, migrations) == []  # no change, so no revision at all
    check = app.test_cli_runner().invoke(args=["db", "check", "-d", str(migrations)])
    assert check.exit_code == 0, check.output


def test_without_the_filter_autogenerate_would_drop_them(app, migrations, monkeypatch):
    """What the filter is for: without it every flask-polysms table looks like a model the
    clinic deleted."""
    monkeypatch.delitem(app.extensions["migrate"].configure_args, "include_name")
    (revision,) = autogenerate(app, migrations)
    assert f"op.drop_table('{PREFIX}" in revision


def test_autogenerate_still_sees_the_clinics_own_changes(app, migrations, migrated):
    with psycopg2.connect(migrated) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE legacy_audit (id serial PRIMARY KEY)")
    connection.close()
    try:
        (revision,) = autogenerate(app, migrations)
    finally:
        with psycopg2.connect(migrated) as connection, connection.cursor() as cursor:
            cursor.execute("DROP TABLE legacy_audit")
        connection.close()
    assert "op.drop_table('legacy_audit')" in revision
    assert PREFIX not in revision
