"""Requests made with an ``Idempotency-Key``: the table ``<prefix>idempotent_request``.

A row per (project, route, key), found by a digest of the three (the key itself is not kept):
held by the request's first try, then holding its response until it expires (24 h), with an
index on the expiry for the purge.
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix


def models(db: pw.Database) -> list[type[pw.Model]]:
    """The table of this script, named with the store's table prefix."""
    prefix = table_prefix()
    c = frozen.Columns(db)
    Base = frozen.base_model(db)

    class IdempotentRequest(Base):
        id = c.key(64, primary_key=True)
        project_id = c.key()
        route = c.key()
        fingerprint = c.key(64)
        token = c.key(32)
        created_at = c.datetime()
        expires_at = c.datetime()
        response = c.json(null=True)

        class Meta:
            table_name = prefix + "idempotent_request"

    IdempotentRequest.add_index(IdempotentRequest.expires_at, name=prefix + "idempotent_expiry")
    return [IdempotentRequest]


def up(migrator, db: pw.Database) -> None:
    """Create the table and its index."""
    db.create_tables(models(db), safe=False)


def down(migrator, db: pw.Database) -> None:
    """Drop them, and every key kept."""
    db.drop_tables(models(db), safe=False)
