"""Peewee fields that store values one way on SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import peewee as pw

from flask_polysms.clock import as_utc


def _on_sqlite(field: pw.Field) -> bool:
    return isinstance(field.model._meta.database, pw.SqliteDatabase)


class UTCDateTimeField(pw.DateTimeField):
    """Aware datetimes in (naive ones are taken as UTC), aware UTC datetimes out.

    Stored as naive UTC with microseconds everywhere: ``DATETIME(6)`` on MySQL (plain ``DATETIME``
    keeps whole seconds), ``TIMESTAMP`` on PostgreSQL, fixed-width text on SQLite, where datetimes
    compare as text and so must all be written one way.
    """

    def get_modifiers(self) -> list[int] | None:
        if isinstance(self.model._meta.database, pw.MySQLDatabase):
            return [6]
        return None

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = self.adapt(value)
        naive = as_utc(value).replace(tzinfo=None)
        if _on_sqlite(self):
            return naive.strftime("%Y-%m-%d %H:%M:%S.%f")
        return naive

    def python_value(self, value: Any) -> datetime | None:
        value = super().python_value(value)
        return None if value is None else as_utc(value)


class DayField(pw.DateField):
    """A calendar day (``DATE``; ISO text on SQLite, which has no date type)."""

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, datetime):
            value = value.date()
        if _on_sqlite(self) and isinstance(value, date):
            return value.isoformat()
        return value


# One encoder for every write: json.dumps with its own separators builds a new encoder per call,
# which cost more than the encoding of the small values written here.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


class JSONTextField(pw.TextField):
    """A JSON value stored as text, which reads the same on SQLite, PostgreSQL and MySQL."""

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return _encode_json(value)

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        return json.loads(value)


class MediumJSONTextField(JSONTextField):
    """JSON text on MySQL, where ``TEXT`` stops at 64 KB (a long session's metadata grows)."""

    field_type = "MEDIUMTEXT"
