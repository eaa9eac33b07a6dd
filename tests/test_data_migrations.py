"""Migration scripts that rewrite the rows already in a database, each run from the version
before it on SQLite, PostgreSQL and MariaDB: 0005 gives recorded opt-out changes their source,
0006 marks the newest open session of each user and number before its unique key goes on, and
0008 gives opt-outs their latest keyword and source (and its ``down`` drops what ``up`` added).
"""

from __future__ import annotations

from datetime import datetime, timezone

import peewee as pw
import pytest
from faults_migrations_support import (
    EVERY_MIGRATION,
    _store,
    empty_url_fixture,  # noqa: F401
)

from flask_polysms.backends.peewee_migrations import SchemaMigrations
from flask_polysms.backends.peewee_migrations import _prefix as migration_prefix
from flask_polysms.ports.store import migration_number


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
