"""Column types and table options as the migration scripts create them.

Frozen: released scripts build their tables from these, so what one of them creates must never
change (a change would make new databases differ from upgraded ones). A new kind of column gets
a new name here; an existing one is never edited. The store's own field classes (how values are
converted) live with the models and may change freely as long as the columns stay the same.
"""

from __future__ import annotations

from typing import Any

import peewee as pw

from flask_polysms.ports.store import SchemaError


class MicrosecondDateTimeField(pw.DateTimeField):
    """``DATETIME(6)`` on MySQL (plain ``DATETIME`` keeps whole seconds), ``TIMESTAMP`` on
    PostgreSQL, ``DATETIME`` (text) on SQLite."""

    def get_modifiers(self) -> list[int] | None:
        if isinstance(self.model._meta.database, pw.MySQLDatabase):
            return [6]
        return None


class MediumTextField(pw.TextField):
    """``MEDIUMTEXT`` (MySQL's ``TEXT`` stops at 64 KB)."""

    field_type = "MEDIUMTEXT"


class Columns:
    """The column factories of the scripts for one database."""

    def __init__(self, database: pw.Database) -> None:
        self.is_mysql = isinstance(database, pw.MySQLDatabase)
        # PostgreSQL orders text by the database's locale unless told otherwise: "C" orders by
        # code point. MySQL gets a binary collation per table instead (see base_model).
        self.collation = '"C"' if isinstance(database, pw.PostgresqlDatabase) else None

    def key(self, length: int = 100, **kwargs: Any) -> pw.CharField:
        """A bounded string (ids, numbers, codes): ``VARCHAR(length)``, indexable on MySQL."""
        return pw.CharField(max_length=length, collation=self.collation, **kwargs)

    def opt_key(self, length: int = 100) -> pw.CharField:
        """A nullable :meth:`key`."""
        return self.key(length, null=True)

    def json(self, **kwargs: Any) -> pw.TextField:
        """JSON as text: ``TEXT``, ``MEDIUMTEXT`` on MySQL."""
        return MediumTextField(**kwargs) if self.is_mysql else pw.TextField(**kwargs)

    @staticmethod
    def datetime(**kwargs: Any) -> pw.DateTimeField:
        """A UTC time with microseconds."""
        return MicrosecondDateTimeField(**kwargs)


def mysql_binary_collation(database: pw.Database) -> str:
    """The server's binary NO PAD utf8mb4 collation (the default ones ignore case, and PAD SPACE
    ones trailing spaces), else ``utf8mb4_bin``."""
    for name in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin"):
        found = database.execute_sql("SHOW COLLATION WHERE Collation = %s", (name,))
        if found.fetchone():
            return name
    return "utf8mb4_bin"


def base_model(database: pw.Database) -> type[pw.Model]:
    """The base of a script's models: bound to ``database``, table names as given, and on
    MySQL utf8mb4 with the binary collation."""
    settings = []
    if isinstance(database, pw.MySQLDatabase):
        collation = mysql_binary_collation(database)
        settings = [f"DEFAULT CHARSET=utf8mb4 COLLATE={collation}"]

    class Base(pw.Model):
        class Meta:
            legacy_table_names = False
            table_settings = settings

    Base.bind(database, bind_refs=False, bind_backrefs=False)
    return Base


def tables_present(database: pw.Database, models: list[type[pw.Model]], made_by: str) -> bool:
    """Whether every table of ``models`` is in ``database`` with its columns (True), none is
    (False); anything between is a schema no release made, and raises :class:`SchemaError`."""
    existing = set(database.get_tables())
    names = [model._meta.table_name for model in models]
    found = [name for name in names if name in existing]
    if not found:
        return False
    missing = [name for name in names if name not in existing]
    if missing:
        raise SchemaError(
            f"the database has some tables of {made_by} ({', '.join(found)}) but not "
            f"{', '.join(missing)}, and no migration history: it was not made by a release of "
            "flask-polysms, so `flask polysms db upgrade` cannot tell what to change"
        )
    for model in models:
        table = model._meta.table_name
        wanted = {field.column_name for field in model._meta.sorted_fields}
        columns = {column.name for column in database.get_columns(table)}
        if columns != wanted:
            extra, lacking = sorted(columns - wanted), sorted(wanted - columns)
            raise SchemaError(
                f"the table {table} differs from {made_by}'s (columns not expected: "
                f"{', '.join(extra) or 'none'}; missing: {', '.join(lacking) or 'none'}) and the "
                "database has no migration history: `flask polysms db upgrade` cannot tell "
                "what to change"
            )
    return True
