"""The Peewee Store: SQLite, PostgreSQL and MySQL/MariaDB through ``playhouse.db_url``.

Every decision a race depends on is taken by the database, so it holds across threads and across
processes: unique constraints (claims, status events, sender addresses, template titles),
compare-and-set updates whose row count says who won (session versions, message statuses, opt-out
state) and atomic upserts (metrics, number blocks). No Python lock is involved.

Each store owns its Database object and its own model classes bound to it, so stores on different
URLs coexist in one process. Connections are per thread (Peewee's default): ``connect()`` and
``close()`` open and close the calling thread's connection, and a method called without
``connect()`` opens one on first use.

Times are stored as naive UTC with microseconds and come back as aware UTC datetimes; the JSON-ish
fields (settings, data, entities, metadata, env_phone_numbers) are stored as JSON text, so their
values must be JSON-serialisable and come back as JSON values (tuples become lists).

The modules, each importing only those listed before it: ``fields`` (column types), ``models``
(the tables of one prefix), ``databases``, ``mysql`` and ``postgres`` (the database classes and
what only one database does), ``connections`` (opening a URL), ``statements`` (compiling and
running statements), one module per kind of record (``accounts``, ``sessions``, ``messages``,
``templates``, ``opt_outs``, ``metrics``) and ``store`` (:class:`PeeweeStore`, which joins them).
"""

from __future__ import annotations

from .fields import DayField, JSONTextField, MediumJSONTextField, UTCDateTimeField
from .statements import _values
from .store import DEFAULT_TABLE_PREFIX, PeeweeStore

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "DayField",
    "JSONTextField",
    "MediumJSONTextField",
    "PeeweeStore",
    "UTCDateTimeField",
    "_values",
]
