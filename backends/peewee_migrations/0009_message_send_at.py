"""Scheduled sends: ``send_at`` on ``<prefix>message`` and the index ``<prefix>message_send_at``
over (status, send_at), which finds the scheduled messages that are due.

Nullable, null on every existing row: no message was scheduled before.
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix

INDEX = "message_send_at"


def model(db: pw.Database) -> type[pw.Model]:
    """The new column and the column it is indexed with, on a frozen model of the message
    table bound to ``db``."""
    c = frozen.Columns(db)
    Base = frozen.base_model(db)

    class Message(Base):
        status = c.key(32)
        send_at = c.datetime(null=True)

        class Meta:
            table_name = table_prefix() + "message"
            primary_key = False

    return Message


def up(migrator, db: pw.Database) -> None:
    """Add the column, then its index."""
    message = model(db)
    migrator.migrate(migrator.add_column(message._meta.table_name, "send_at", message.send_at))
    db.execute(
        pw.ModelIndex(
            message,
            (message.status, message.send_at),
            safe=False,
            name=table_prefix() + INDEX,
        )
    )


def down(migrator, db: pw.Database) -> None:
    """Drop the index and the column, and the times it held."""
    table = model(db)._meta.table_name
    migrator.migrate(
        migrator.drop_index(table, table_prefix() + INDEX),
        migrator.drop_column(table, "send_at"),
    )
