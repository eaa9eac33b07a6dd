"""Schema migrations of the Peewee store, on SQLite, PostgreSQL and MariaDB: what they build.

- A database made by flask-polysms 0.1.0 (its own code, extracted from the v0.1.0 commit and run
  in a subprocess: its ``create_schema``, rows written by its Store) upgrades in place: every row
  is found through today's Store API and the API, and the result equals a new database. A second
  upgrade does nothing; ``flask polysms db current`` reports the latest version.
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
from faults_migrations_support import (
    EVERY_MIGRATION,
    LATEST_VERSION,
    SECRET,
    _app,
    _cli,
    _store,
    empty_url_fixture,  # noqa: F401
    pending,
)

from flask_polysms import get_state
from flask_polysms.backends.peewee_migrations import HISTORY_TABLE
from flask_polysms.crypto import hash_api_key
from flask_polysms.ports.store import DashboardSignIn, SchemaUpgrade

#: The last commit of 0.1.0 (tag v0.1.0).
V0_1_0 = "e6319d04492c6fe4a5df33718fa62f2d5e5cda02"
FILL_V0_1_0 = Path(__file__).parent / "data" / "fill_v0_1_0.py"


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
