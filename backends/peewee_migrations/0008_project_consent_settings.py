"""Consent management: where each opt-out came from, and the API key behind an API change.

- ``<prefix>opt_out`` gets ``keyword`` and ``source``: those of the pair's latest change, so the
  list of current opt-outs reads one table; and an index ``opt_out_project`` (project, opted
  out, seq) that serves that list per project in order.
- ``<prefix>opt_out_event`` gets ``api_key_id``: the id of the API key that made an ``api``
  change, never the key.

Every column is nullable. Each pair gets the keyword and source of its latest change (0005 gave
recorded changes their source).
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix

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
        source = c.opt_key(16)  # 0005's
        api_key_id = c.opt_key()

        class Meta:
            table_name = table_prefix() + "opt_out_event"

    return OptOut, OptOutEvent


def up(migrator, db: pw.Database) -> None:
    """Add the columns and the index, and give each pair its latest change's keyword and
    source."""
    opt_out, event = models(db)
    pairs, events = opt_out._meta.table_name, event._meta.table_name
    migrator.migrate(
        migrator.add_column(pairs, "keyword", opt_out.keyword),
        migrator.add_column(pairs, "source", opt_out.source),
        migrator.add_column(events, "api_key_id", event.api_key_id),
        migrator.add_index(pairs, ("project_id", "opted_out", "seq"), name=table_prefix() + INDEX),
    )
    latest = event.alias("latest")
    same_pair = (
        (latest.project_id == opt_out.project_id)
        & (latest.recipient == opt_out.recipient)
        & (latest.sender == opt_out.sender)
    )
    for column in ("keyword", "source"):
        value = (
            latest.select(getattr(latest, column))
            .where(same_pair)
            .order_by(latest.seq.desc())
            .limit(1)
        )
        opt_out.update({getattr(opt_out, column): value}).execute()


def down(migrator, db: pw.Database) -> None:
    """Drop the index and the columns, and what they held."""
    opt_out, event = models(db)
    pairs, events = opt_out._meta.table_name, event._meta.table_name
    migrator.migrate(
        migrator.drop_index(pairs, table_prefix() + INDEX),
        migrator.drop_column(pairs, "keyword"),
        migrator.drop_column(pairs, "source"),
        migrator.drop_column(events, "api_key_id"),
    )
