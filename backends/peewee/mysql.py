"""What only MySQL/MariaDB needs: its database classes and its binary collation."""

from __future__ import annotations

import peewee as pw
from playhouse.pool import PooledMySQLDatabase

from .databases import _ValuesNotLogged


class _MySQLDatabase(_ValuesNotLogged, pw.MySQLDatabase):
    """MySQL/MariaDB, its statements logged without their values."""


class _PooledMySQLDatabase(_ValuesNotLogged, PooledMySQLDatabase):
    """Pooled MySQL/MariaDB, its statements logged without their values."""


def binary_collation(database: pw.Database) -> str:
    """The binary NO PAD collation this server has (``utf8mb4_bin`` on old servers)."""
    # The default collations ignore case ("Hello" = "hello") and PAD SPACE ones ignore trailing
    # spaces ("a" = "a "): a binary NO PAD collation compares and orders as Python does.
    for name in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin"):
        found = database.execute_sql("SHOW COLLATION WHERE Collation = %s", (name,))
        if found.fetchone():
            return name
    return "utf8mb4_bin"
