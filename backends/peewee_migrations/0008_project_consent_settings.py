"""Consent management: where each opt-out came from, and the API key behind an API change.

- ``<prefix>opt_out`` gets ``keyword`` and ``source``: those of the pair's latest change, so the
  list of current opt-outs reads one table; and an index ``opt_out_project`` (project, opted
  out, seq) that serves that list per project in order.
- ``<prefix>opt_out_event`` gets ``api_key_id`` (the id of the API key that made an ``api``
  change, never the key) and ``source``, unless an earlier script of this release added it.

Every column is nullable. Recorded changes get their source from what 0.1 wrote: ``carrier``
for those written after Twilio's error 21610 (keyword ``twilio:21610``), ``keyword`` for the
others (a user's STOP or START was the only other way); pairs get their latest change's.
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix

CARRIER_KEYWORD = "twilio:21610"
INDEX = "opt_out_project"


def models(db: pw.Database) -> tuple[type[pw.Model], type[pw.Model]]:
    """The columns this script reads and adds, on frozen models of the two tables."""
    c = frozen.Columns(db)
    Base = frozen.base_model(db)

    class OptOut(Base):
        seq = pw.BigAutoField()
        recipient = c.key()
        sender = c.key()
        project_id = c.key()
        opted_out = pw.BooleanField()
        keyword = pw.TextField(null=True)
        source = c.opt_key(16)

        class Meta:
            table_name = table_prefix() + "opt_out"

    class OptOutEvent(Base):
        seq = pw.BigAutoField()
        project_id = c.key()
        recipient = c.key()
        sender = c.key()
        keyword = pw.TextField(null=True)
        source = c.opt_key(16)
        api_key_id = c.opt_key()

        class Meta:
            table_name = table_prefix() + "opt_out_event"

    return OptOut, OptOutEvent


def _has_column(db: pw.Database, table: str, name: str) -> bool:
    return any(column.name == name for column in db.get_columns(table))


def _source_of(keyword: pw.Node) -> pw.Node:
    return pw.Case(None, [(keyword == CARRIER_KEYWORD, "carrier")], "keyword")


def up(migrator, db: pw.Database) -> None:
    """Add the columns and the index, and fill the sources of what is recorded."""
    opt_out, event = models(db)
    pairs, events = opt_out._meta.table_name, event._meta.table_name
    changes = [
        migrator.add_column(pairs, "keyword", opt_out.keyword),
        migrator.add_column(pairs, "source", opt_out.source),
        migrator.add_column(events, "api_key_id", event.api_key_id),
    ]
    if not _has_column(db, events, "source"):
        changes.append(migrator.add_column(events, "source", event.source))
    changes.append(
        migrator.add_index(pairs, ("project_id", "opted_out", "seq"), name=table_prefix() + INDEX)
    )
    migrator.migrate(*changes)
    event.update(source=_source_of(event.keyword)).where(event.source.is_null()).execute()
    latest = event.alias("latest")
    last_keyword = (
        latest.select(latest.keyword)
        .where(
            (latest.project_id == opt_out.project_id)
            & (latest.recipient == opt_out.recipient)
            & (latest.sender == opt_out.sender)
        )
        .order_by(latest.seq.desc())
        .limit(1)
    )
    opt_out.update(keyword=last_keyword).execute()
    opt_out.update(source=_source_of(opt_out.keyword)).execute()


def down(migrator, db: pw.Database) -> None:
    """Drop the index and the columns this script added, and what they held. An
    ``opt_out_event.source`` stays when an earlier applied script (0005, Messaging Service pools)
    added it."""
    opt_out, event = models(db)
    pairs, events = opt_out._meta.table_name, event._meta.table_name
    changes = [
        migrator.drop_index(pairs, table_prefix() + INDEX),
        migrator.drop_column(pairs, "keyword"),
        migrator.drop_column(pairs, "source"),
        migrator.drop_column(events, "api_key_id"),
    ]
    if not any(name.startswith("0005") for name in _applied(db)):
        changes.append(migrator.drop_column(events, "source"))
    migrator.migrate(*changes)


def _applied(db: pw.Database) -> list[str]:
    """The names of the scripts the history records as applied."""
    history = table_prefix() + "schema_migration"
    if history not in db.get_tables():
        return []
    table = pw.Table(history, ("name",)).bind(db)
    return [row["name"] for row in table.select(table.name).dicts()]
