"""A message's last failed send attempt: ``last_error_code``, ``last_error_message`` and
``last_error_at`` on ``<prefix>message``.

Nullable columns, null on every existing row (no attempt of theirs is known to have failed); a
send job fills them when an attempt fails and leaves them when a later attempt succeeds.
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix


def model(db: pw.Database) -> type[pw.Model]:
    """The new columns, on a frozen model of the message table bound to ``db`` (the columns'
    types depend on the database they are bound to)."""
    c = frozen.Columns(db)
    Base = frozen.base_model(db)

    class Message(Base):
        last_error_code = pw.IntegerField(null=True)
        last_error_message = pw.TextField(null=True)
        last_error_at = c.datetime(null=True)

        class Meta:
            table_name = table_prefix() + "message"

    return Message


COLUMNS = ("last_error_code", "last_error_message", "last_error_at")


def up(migrator, db: pw.Database) -> None:
    """Add the three columns."""
    message = model(db)
    table = message._meta.table_name
    migrator.migrate(
        *(migrator.add_column(table, name, getattr(message, name)) for name in COLUMNS)
    )


def down(migrator, db: pw.Database) -> None:
    """Drop them, and what they held."""
    table = model(db)._meta.table_name
    migrator.migrate(*(migrator.drop_column(table, name) for name in COLUMNS))
