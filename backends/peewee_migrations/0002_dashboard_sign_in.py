"""Dashboard sign-ins as server-side records: the table ``<prefix>dashboard_sign_in``.

A row per sign-in, found by the SHA-256 (hex) of the browser's random secret, so that signing out
ends every copy of the cookie. Databases made by development builds between 0.1.0 and this script
created the table without a history: ``present`` recognises it.
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix

MADE_BY = "flask-polysms's dashboard sign-ins"


def models(db: pw.Database) -> list[type[pw.Model]]:
    """The table of this script, named with the store's table prefix."""
    prefix = table_prefix()
    c = frozen.Columns(db)
    Base = frozen.base_model(db)

    class DashboardSignIn(Base):
        id = c.key(64, primary_key=True)
        api_key_id = c.key()
        connector_id = c.key()
        created_at = c.datetime()
        last_seen_at = c.datetime()
        ended_at = c.datetime(null=True)
        end_reason = c.opt_key(32)

        class Meta:
            table_name = prefix + "dashboard_sign_in"

    return [DashboardSignIn]


def present(db: pw.Database) -> bool:
    """Whether the table is there already (made without a history by a development build)."""
    return frozen.tables_present(db, models(db), MADE_BY)


def up(migrator, db: pw.Database) -> None:
    """Create the table."""
    db.create_tables(models(db), safe=False)


def down(migrator, db: pw.Database) -> None:
    """Drop it, ending every sign-in."""
    db.drop_tables(models(db), safe=False)
