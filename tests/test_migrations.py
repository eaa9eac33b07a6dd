"""Schema migrations of the Peewee store (DESIGN §7.8), on SQLite, PostgreSQL and MariaDB.

- A database made by flask-polysms 0.1.0 (its own code, extracted from the v0.1.0 commit and run
  in a subprocess: its ``create_schema``, rows written by its Store) upgrades in place: every row
  is found through today's Store API and the API, and the result equals a new database.
- A second upgrade does nothing; ``flask polysms db current`` reports the latest version.
- A history holding a migration this version does not ship is refused: at start-up, by the
  store and by the CLI.
- Upgrading an empty database builds exactly the schema of today's models (tables, columns,
  types, collations, indexes), so no model change can ship without its migration.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import peewee as pw
import pytest
from flask import Flask
from playhouse.migrations import Migration

from flask_polysms import PolySMS, backends, get_state
from flask_polysms.backends.peewee_migrations import DIRECTORY, HISTORY_TABLE, SchemaMigrations
from flask_polysms.backends.peewee_migrations import _prefix as migration_prefix
from flask_polysms.crypto import hash_api_key
from flask_polysms.ports.store import DashboardSignIn, SchemaTooNew, SchemaUpgrade, migration_number

#: The last commit of 0.1.0 (tag v0.1.0).
V0_1_0 = "e6319d04492c6fe4a5df33718fa62f2d5e5cda02"
FILL_V0_1_0 = Path(__file__).parent / "data" / "fill_v0_1_0.py"
#: The scripts this version ships, in order (0001 is 0.1.0's schema).
EVERY_MIGRATION = tuple(migration.name for migration in Migration.load_directory(DIRECTORY))
LATEST = EVERY_MIGRATION[-1]
LATEST_VERSION = f"version {migration_number(LATEST)} ({LATEST})"
SECRET = "the-0.1-secret-key-of-this-deployment"
FUTURE = "0099_from_a_later_release"

DIALECTS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mysql", marks=pytest.mark.services),
]


# -- databases ------------------------------------------------------------------------------------
@pytest.fixture(params=DIALECTS)
def empty_url(request, tmp_path):
    """An empty database of each dialect, this test's own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'polysms.db'}"
    if request.param == "postgresql":
        return request.getfixturevalue("fresh_postgres_url")
    return request.getfixturevalue("fresh_mysql_url")


def _store(url: str, prefix: str = "polysms_"):
    return backends.create_store(url, table_prefix=prefix)


def _app(url: str, prefix: str = "polysms_") -> Flask:
    app = Flask("migrations")
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        POLYSMS_STORAGE_URL=url,
        POLYSMS_TABLE_PREFIX=prefix,
    )
    PolySMS(app)
    return app


def _cli(app: Flask, *args: str):
    return app.test_cli_runner().invoke(args=["polysms", *args])


def pending(names: tuple[str, ...]) -> str:
    """How `db current` names pending migrations."""
    plural = "s" if len(names) > 1 else ""
    return f"{len(names)} migration{plural} pending: {', '.join(names)}"


# -- flask-polysms 0.1.0, run from its own code ---------------------------------------------------
@pytest.fixture(scope="session")
def v0_1_0_code(tmp_path_factory) -> Path:
    """0.1.0's package, laid out as it is installed (``backends`` inside ``flask_polysms``)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", V0_1_0, "flask_polysms", "backends"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = f"0.1.0's code is not in this checkout's git history ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI=true requires it")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("v0_1_0")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    (root / "backends").rename(root / "flask_polysms" / "backends")
    return root


def make_v0_1_0_database(code: Path, url: str, prefix: str) -> dict[str, Any]:
    """Run 0.1.0's create_schema and Store on ``url``; what it wrote (see fill_v0_1_0.py)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(
        [sys.executable, str(FILL_V0_1_0), url, prefix, SECRET],
        capture_output=True,
        text=True,
        env=env,
        cwd=code,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert Path(written["package"]).is_relative_to(code)  # 0.1.0's code ran, not today's
    return written


def as_json(value: Any) -> Any:
    """Records as the fill script prints them (datetimes and days as ISO text)."""
    import dataclasses
    from datetime import date

    if dataclasses.is_dataclass(value):
        return {name: as_json(item) for name, item in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(key): as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def as_written(value: Any, written: Any) -> Any:
    """``value`` as JSON, its records cut to the fields 0.1.0's records had (fields added since
    are new, not kept), to compare with what 0.1.0 wrote."""
    import dataclasses

    if dataclasses.is_dataclass(value) and isinstance(written, dict):
        data = as_json(value)
        return {name: data.get(name, "<absent>") for name in written}
    if isinstance(value, list) and isinstance(written, list) and len(value) == len(written):
        return [as_written(item, like) for item, like in zip(value, written, strict=True)]
    return as_json(value)


# -- what a schema is, per dialect ----------------------------------------------------------------
def describe(store, prefix: str) -> dict[str, Any]:
    """The tables named with ``prefix`` (the history table aside), their columns (type, null,
    default, collation) and indexes (columns, unique), with the prefix written as ``<p>``, so
    that two prefixes in one database compare."""
    db = store.database
    history = prefix + HISTORY_TABLE
    tables = sorted(t for t in db.get_tables() if t.startswith(prefix) and t != history)

    def plain(text: Any) -> Any:
        return text.replace(prefix, "<p>") if isinstance(text, str) else text

    described: dict[str, Any] = {}
    for table in tables:
        if isinstance(db, pw.SqliteDatabase):
            columns = {
                row[1]: row[2:]
                for row in db.execute_sql(f'PRAGMA table_info("{table}")').fetchall()
            }
            indexes = {}
            for _, name, unique, origin, partial in db.execute_sql(
                f'PRAGMA index_list("{table}")'
            ).fetchall():
                parts = db.execute_sql(f'PRAGMA index_info("{name}")').fetchall()
                sql = db.execute_sql(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
                ).fetchone()[0]
                indexes[plain(name)] = (unique, origin, partial, [p[2] for p in parts], plain(sql))
            options = None
        elif isinstance(db, pw.PostgresqlDatabase):
            columns = {
                row[0]: tuple(plain(value) for value in row[1:])
                for row in db.execute_sql(
                    "SELECT column_name, data_type, character_maximum_length, is_nullable, "
                    "column_default, collation_name, datetime_precision, numeric_precision "
                    "FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = %s",
                    (table,),
                ).fetchall()
            }
            indexes = {
                plain(name): plain(definition)
                for name, definition in db.execute_sql(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = current_schema() AND tablename = %s",
                    (table,),
                ).fetchall()
            }
            indexes.update(
                (("constraint", plain(name)), kind)
                for name, kind in db.execute_sql(
                    "SELECT constraint_name, constraint_type "
                    "FROM information_schema.table_constraints "
                    "WHERE table_schema = current_schema() AND table_name = %s "
                    "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')",
                    (table,),
                ).fetchall()
            )
            options = None
        else:
            columns = {
                row[0]: row[1:]
                for row in db.execute_sql(
                    "SELECT column_name, column_type, is_nullable, column_default, "
                    "character_set_name, collation_name, extra, column_key "
                    "FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND table_name = %s",
                    (table,),
                ).fetchall()
            }
            indexes = {}
            for name, non_unique, column, sub_part, kind in db.execute_sql(
                "SELECT index_name, non_unique, column_name, sub_part, index_type "
                "FROM information_schema.statistics "
                "WHERE table_schema = DATABASE() AND table_name = %s "
                "ORDER BY index_name, seq_in_index",
                (table,),
            ).fetchall():
                entry = indexes.setdefault(plain(name), [non_unique, kind, []])
                entry[2].append((column, sub_part))
            options = db.execute_sql(
                "SELECT engine, table_collation FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                (table,),
            ).fetchone()
        described[plain(table)] = {"columns": columns, "indexes": indexes, "options": options}
    return described


# -- the tests ------------------------------------------------------------------------------------
def test_upgrading_an_empty_database_builds_todays_models(empty_url):
    """The migrations, run from nothing, build what today's models build: same tables, columns
    (type, null, default, collation), indexes and table options. A model changed without a
    migration (or a migration without its model change) fails here, on every dialect."""
    migrated, modelled = _store(empty_url, "upg_"), _store(empty_url, "mdl_")
    try:
        assert migrated.upgrade_schema() == SchemaUpgrade(applied=EVERY_MIGRATION)
        modelled.create_model_tables()
        expected = describe(modelled, "mdl_")
        assert len(expected) == 18  # 0010 added the webhook subscriptions and deliveries
        assert describe(migrated, "upg_") == expected
        # Each prefix has its own history; the models' tables have none.
        assert "upg_" + HISTORY_TABLE in migrated.database.get_tables()
        assert "mdl_" + HISTORY_TABLE not in modelled.database.get_tables()
    finally:
        migrated.disconnect()
        modelled.disconnect()


@pytest.mark.parametrize("prefix", ["polysms_", "acme_sms_"])
def test_a_v0_1_0_database_upgrades_in_place_with_every_row(empty_url, prefix, v0_1_0_code):
    written = make_v0_1_0_database(v0_1_0_code, empty_url, prefix)
    records = written["records"]
    sqlite = empty_url.startswith("sqlite")
    store = _store(empty_url, prefix)
    before = store.schema_version()
    assert before.applied == () and before.unrecorded == ("0001_initial",)
    assert before.pending == EVERY_MIGRATION[1:] and before.current == "0001_initial"
    assert not before.up_to_date
    store.disconnect()

    app = _app(empty_url, prefix)  # SQLite upgrades here, at start-up
    if not sqlite:
        current = _cli(app, "db", "current")
        assert current.exit_code == 1, current.output
        assert current.output.strip() == (
            "version 1 (0001_initial); found without a migration history (made by "
            f"flask-polysms 0.1.0): 0001_initial; {pending(EVERY_MIGRATION[1:])}; "
            "run `flask polysms db upgrade`"
        )
        upgrade = _cli(app, "db", "upgrade")
        assert upgrade.exit_code == 0, upgrade.output
        assert upgrade.output.splitlines() == [
            "recorded 0001_initial: its tables were there already (made without a history)",
            *[f"applied {name}" for name in EVERY_MIGRATION[1:]],
            f"{LATEST_VERSION}, up to date",
        ]
    current = _cli(app, "db", "current")
    assert (current.exit_code, current.output) == (0, f"{LATEST_VERSION}, up to date\n")

    # Every row, through today's API and Store.
    state = get_state(app)
    store = state.store
    session = records["session"]
    headers = {
        "X-PolyAi-Auth-Token": written["api_key_secret"],
        "X-TOKEN-ID": records["connector"]["id"],
    }
    response = app.test_client().get(f"/v1/conversations/{session['id']}", headers=headers)
    assert response.status_code == 200, response.json
    assert response.json["user_number"] == session["user_number"]
    assert [m["body"] for m in response.json["messages"]] == [
        m["body"] for m in records["messages"]
    ]
    # Messages written before pictures existed have none (the column added by 0004 is NULL).
    assert [m["media"] for m in response.json["messages"]] == [[] for _ in records["messages"]]
    listed = app.test_client().get("/v1/conversations", headers=headers)
    assert [c["id"] for c in listed.json["conversations"]] == [session["id"]]

    with app.app_context():
        account_id, project_id = records["account"]["id"], records["project"]["id"]
        assert as_written(store.get_account(account_id), records["account"]) == records["account"]
        key_hash = hash_api_key(written["api_key_secret"])
        assert (
            as_written(store.get_api_key_by_hash(key_hash), records["api_key"])
            == records["api_key"]
        )
        project = store.get_project(project_id)
        assert as_written(project, records["project"]) == records["project"]
        assert state.cipher.decrypt(project.twilio_auth_token_encrypted) == written["auth_token"]
        sender = records["sender"]
        assert as_written(store.get_sender(sender["address"]), sender) == sender
        assert (
            as_written(store.get_connector(records["connector"]["id"]), records["connector"])
            == records["connector"]
        )
        assert as_written(store.get_session(session["id"]), session) == session
        assert (
            as_written(store.list_messages(session["id"]), records["messages"])
            == records["messages"]
        )
        assert [m.media for m in store.list_messages(session["id"])] == [
            [] for _ in records["messages"]
        ]
        sid = records["messages"][0]["twilio_sid"]
        assert (
            as_written(store.get_message_by_sid(sid), records["messages"][0])
            == records["messages"][0]
        )
        assert (
            as_written(store.list_status_events(sid), records["status_events"])
            == records["status_events"]
        )
        later = datetime.now(timezone.utc)
        assert store.claim_inbound(written["inbound_claim"], later) is False  # still claimed
        template = records["template"]
        assert as_written(store.get_template(project_id, template["id"]), template) == template
        assert (
            as_written(store.get_template_by_title(project_id, template["title"]), template)
            == template
        )
        recipient, sender_address = written["opted_out"]
        assert store.is_opted_out(recipient, sender_address) is True
        history = store.opt_out_history(project_id, recipient, sender_address)
        assert as_written(history, records["opt_out_history"]) == records["opt_out_history"]
        assert [e.source for e in history] == ["keyword"]  # 0005: 0.1 recorded STOPs
        assert store.get_sender(sender["address"]).messaging_service_sid is None
        # 0008: the pair lists as opted out, with its keyword and source.
        assert [e.api_key_id for e in history] == [None]
        [listed], _ = store.list_opt_outs(project_id, recipient=recipient)
        assert (listed.sender, listed.keyword, listed.source) == (sender_address, "STOP", "keyword")
        assert listed.created_at == history[-1].at
        day = datetime.fromisoformat(session["created_at"]).date()
        assert (
            as_written(store.get_metrics(project_id, "live", day, day), records["metrics"])
            == records["metrics"]
        )
        assert (
            as_written(store.blocked_until(project_id, recipient), records["blocked_until"])
            == records["blocked_until"]
        )
        # The new table works, and 0.1.0's rows keep counting.
        sign_in = DashboardSignIn(
            id="ab" * 32,
            api_key_id=records["api_key"]["id"],
            connector_id=records["connector"]["id"],
            created_at=later,
            last_seen_at=later,
        )
        assert store.get_dashboard_sign_in(store.add_dashboard_sign_in(sign_in).id) == sign_in
        store.incr_metric(project_id, "live", day, "sent")
        assert store.get_metrics(project_id, "live", day, day)[day]["sent"] == 4

        # A second upgrade does nothing.
        assert store.upgrade_schema() == SchemaUpgrade()
    again = _cli(app, "db", "upgrade")
    assert (again.exit_code, again.output) == (0, f"{LATEST_VERSION}, up to date\n")
    assert store.schema_version().applied == EVERY_MIGRATION

    # The upgraded database is what a new one is.
    fresh = _store(empty_url, "fresh_")
    try:
        fresh.upgrade_schema()
        assert describe(store, prefix) == describe(fresh, "fresh_")
    finally:
        fresh.disconnect()
        store.disconnect()


def test_0005_gives_the_recorded_opt_out_changes_their_source(empty_url):
    """0.1 recorded Twilio's 21610 with the keyword ``twilio:21610``: those changes are the
    carrier's, every other one a user's keyword."""
    store = _store(empty_url)
    migrations = SchemaMigrations(store.database, "polysms_")
    before = EVERY_MIGRATION[EVERY_MIGRATION.index("0005_sender_messaging_service") - 1]
    migrations.upgrade(before)
    quote = store.database.quote
    table = quote[0] + "polysms_opt_out_event" + quote[1]
    for keyword in ("STOP", "twilio:21610", "START"):
        store.database.execute_sql(
            f"INSERT INTO {table} (project_id, recipient, sender, action, keyword, at) "
            "VALUES ('prj_a', '+14155550123', '+14155550100', 'opt_out', "
            f"{store.database.param}, '2026-03-01 12:00:00')",
            (keyword,),
        )

    store.upgrade_schema()

    history = store.opt_out_history("prj_a", "+14155550123")
    assert [(e.keyword, e.source) for e in history] == [
        ("STOP", "keyword"),
        ("twilio:21610", "carrier"),
        ("START", "keyword"),
    ]
    store.disconnect()


def test_0008_gives_opt_outs_their_latest_keyword_and_source_and_goes_back_down(empty_url):
    """Each pair gets the keyword and source of its latest change (as 0007's code recorded it);
    ``down`` drops what ``up`` added."""
    store = _store(empty_url)
    migrations = SchemaMigrations(store.database, "polysms_")
    script = "0008_project_consent_settings"
    migrations.upgrade(EVERY_MIGRATION[EVERY_MIGRATION.index(script) - 1])
    db = store.database
    quote = db.quote

    def table(name: str) -> str:
        return quote[0] + "polysms_" + name + quote[1]

    rows = [
        ("+14155550123", "+14155550100", "opt_out", "STOP", "keyword", True),
        ("+14155550124", "+14155550100", "opt_out", None, "carrier", True),
        ("+14155550125", "+14155550100", "opt_in", "START", "keyword", False),
    ]
    for recipient, sender, action, keyword, source, opted_out in rows:
        db.execute_sql(
            f"INSERT INTO {table('opt_out_event')} (project_id, recipient, sender, action, "
            f"keyword, at, source) VALUES ('prj_a', {db.param}, {db.param}, {db.param}, "
            f"{db.param}, '2026-03-01 12:00:00', {db.param})",
            (recipient, sender, action, keyword, source),
        )
        db.execute_sql(
            f"INSERT INTO {table('opt_out')} (recipient, sender, project_id, opted_out, "
            f"updated_at) VALUES ({db.param}, {db.param}, 'prj_a', {db.param}, "
            "'2026-03-01 12:00:00')",
            (recipient, sender, opted_out),
        )

    migrations.upgrade(script)  # to 0008 only: its own down() is undone below

    history = [store.opt_out_history("prj_a", row[0])[0] for row in rows]
    assert [(e.keyword, e.source, e.api_key_id) for e in history] == [
        ("STOP", "keyword", None),
        (None, "carrier", None),
        ("START", "keyword", None),
    ]
    listed, _ = store.list_opt_outs("prj_a")
    assert [(o.recipient, o.keyword, o.source) for o in listed] == [
        ("+14155550123", "STOP", "keyword"),
        ("+14155550124", None, "carrier"),
    ]

    with migration_prefix("polysms_"):  # what SchemaMigrations sets around its own runs
        assert migrations.runner.down() == [script]
    columns = {c.name for c in db.get_columns("polysms_opt_out")}
    assert not {"keyword", "source"} & columns
    events = {c.name for c in db.get_columns("polysms_opt_out_event")}
    assert not {"api_key_id"} & events
    assert "polysms_opt_out_project" not in {i.name for i in db.get_indexes("polysms_opt_out")}
    store.disconnect()


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


def test_the_runner_reads_the_scripts_of_the_package():
    from flask_polysms.backends import peewee_migrations

    folder = Path(peewee_migrations.DIRECTORY)
    assert folder == Path(peewee_migrations.__file__).parent
    assert sorted(p.name for p in folder.glob("[0-9]*.py")) == [
        f"{name}.py" for name in EVERY_MIGRATION
    ]


@pytest.mark.slow
def test_the_wheel_ships_every_script(tmp_path):
    """The scripts are files the runner finds in the installed package: a wheel without them
    would install a store that creates no tables."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=root,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("flask_polysms-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = "flask_polysms/backends/peewee_migrations/"
    for name in ("__init__", "frozen", *EVERY_MIGRATION):
        assert f"{folder}{name}.py" in names, name


def test_0006_marks_the_newest_open_session_of_each_triple_before_its_unique_key(empty_url):
    """A database holds several open sessions of one user and number (a newer outbound session
    supersedes an older one, which stays open until its deadline): 0006 marks only the newest
    open one, so its unique key goes on; the older ones stay open and unmarked."""
    from flask_polysms.records import Session

    store = _store(empty_url)
    try:
        db = store.database
        migrations = SchemaMigrations(db, "polysms_")
        before = [name for name in EVERY_MIGRATION if migration_number(name) < 6][-1]
        migrations.upgrade(target=before)
        table = pw.Table("polysms_session").bind(db)

        def add(session_id: str, user: str, state: str = "active") -> None:
            table.insert(
                id=session_id,
                project_id="prj_a",
                environment="live",
                user_number=user,
                agent_number="+14155550100",
                created_at="2026-01-01 10:00:00.000000",
                last_activity_at="2026-01-01 10:00:00.000000",
                state=state,
                engaged=False,
                version=1,
                data="{}",
                entities="{}",
                metadata="{}",
            ).execute()

        add("conv_old", "+14155550123")
        add("conv_warned", "+14155550123", state="warned")
        add("conv_newest", "+14155550123")
        add("conv_closed", "+14155550123", state="closed")
        add("conv_other", "+14155550124")
        assert (
            store.upgrade_schema().applied == EVERY_MIGRATION[EVERY_MIGRATION.index(before) + 1 :]
        )

        marks = dict(table.select(table.c.id, table.c.open_mark).tuples())
        assert marks == {
            "conv_old": None,
            "conv_warned": None,
            "conv_newest": 1,
            "conv_closed": None,
            "conv_other": 1,
        }
        assert store.get_session("conv_old").state == "active"  # still open, superseded
        assert store.get_session("conv_warned").state == "warned"
        # The key holds: a first message joins the newest, a second marked row is refused.
        joined, created = store.open_session(
            Session(
                id="conv_new",
                project_id="prj_a",
                environment="live",
                user_number="+14155550123",
                agent_number="+14155550100",
                created_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
                last_activity_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
            )
        )
        assert (joined.id, created) == ("conv_newest", False)
        with pytest.raises(pw.IntegrityError):
            with db.atomic():
                table.update(open_mark=1).where(table.c.id == "conv_old").execute()
    finally:
        store.disconnect()
