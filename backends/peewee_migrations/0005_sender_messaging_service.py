"""Messaging Service pools and the source of opt-outs: ``messaging_service_sid`` on
``<prefix>sender`` and ``source`` on ``<prefix>opt_out_event``.

Both nullable. Existing senders belong to no service. Existing opt-out changes get their source
from what 0.1 recorded: ``carrier`` for those it wrote after Twilio's error 21610 (keyword
``twilio:21610``), ``keyword`` for the others (a user's STOP or START was the only other way).
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix

CARRIER_KEYWORD = "twilio:21610"


def models(db: pw.Database) -> tuple[type[pw.Model], type[pw.Model]]:
    """The new columns, on frozen models of the two tables bound to ``db``."""
    c = frozen.Columns(db)
    Base = frozen.base_model(db)

    class Sender(Base):
        messaging_service_sid = c.opt_key()

        class Meta:
            table_name = table_prefix() + "sender"

    class OptOutEvent(Base):
        keyword = pw.TextField(null=True)
        source = c.opt_key(16)

        class Meta:
            table_name = table_prefix() + "opt_out_event"

    return Sender, OptOutEvent


def up(migrator, db: pw.Database) -> None:
    """Add the two columns and fill the source of the recorded opt-out changes."""
    sender, event = models(db)
    migrator.migrate(
        migrator.add_column(
            sender._meta.table_name, "messaging_service_sid", sender.messaging_service_sid
        ),
        migrator.add_column(event._meta.table_name, "source", event.source),
    )
    event.update(source="carrier").where(event.keyword == CARRIER_KEYWORD).execute()
    event.update(source="keyword").where(event.source.is_null()).execute()


def down(migrator, db: pw.Database) -> None:
    """Drop them, and what they held."""
    sender, event = models(db)
    migrator.migrate(
        migrator.drop_column(sender._meta.table_name, "messaging_service_sid"),
        migrator.drop_column(event._meta.table_name, "source"),
    )
