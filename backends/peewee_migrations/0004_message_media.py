"""A message's pictures (MMS): ``media`` on ``<prefix>message``, a JSON list as text.

Nullable, null on every existing row (read as no pictures): filling the column on a large
table would rewrite every row for nothing.
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix


def model(db: pw.Database) -> type[pw.Model]:
    """The new column, on a frozen model of the message table bound to ``db``."""
    Base = frozen.base_model(db)

    class Message(Base):
        # TEXT everywhere, MySQL included: at most 10 URLs and their content types.
        media = pw.TextField(null=True)

        class Meta:
            table_name = table_prefix() + "message"

    return Message


def up(migrator, db: pw.Database) -> None:
    """Add the column."""
    message = model(db)
    migrator.migrate(migrator.add_column(message._meta.table_name, "media", message.media))


def down(migrator, db: pw.Database) -> None:
    """Drop it, and the pictures it held."""
    migrator.migrate(migrator.drop_column(model(db)._meta.table_name, "media"))
