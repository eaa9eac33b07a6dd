"""The store's Peewee database classes: statements reach Peewee's logger without their values.

PostgreSQL's class, which does more, lives in ``postgres.py``; MySQL's in ``mysql.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import peewee as pw

# Peewee logs each statement with its values at DEBUG on this logger; this store's statements are
# logged there without them (see _ValuesNotLogged).
_PEEWEE_LOG = logging.getLogger("peewee")


class _ValuesNotLogged(pw.Database):
    """A Peewee database whose statements reach the ``peewee`` logger without their values.

    Peewee logs each statement with its bound values at DEBUG: for this store, the API-key digest
    of every request, encrypted Auth Tokens, message bodies and phone numbers. Here the SQL text
    is logged, with one ``"?"`` per value. Only this store's own database classes do this: a host
    app's Peewee databases log as they always did. Query hooks (code, not logs) still get every
    statement as sent.
    """

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        self._log_statement(sql, params)
        return self._execute_unlogged(sql, params)

    @staticmethod
    def _log_statement(sql: str, params: Any) -> None:
        if _PEEWEE_LOG.isEnabledFor(logging.DEBUG):
            _PEEWEE_LOG.debug((sql, ["?"] * len(params or ())))

    def _execute_unlogged(self, sql: str, params: Any) -> Any:
        """Run ``sql`` as Peewee's ``execute_sql`` does (errors wrapped, hooks told), unlogged."""
        hooks = self.query_hooks
        start = time.perf_counter()
        try:
            with pw.__exception_wrapper__:
                cursor = self.cursor()
                cursor.execute(sql, params or ())
        except Exception as exc:
            for hook in hooks:
                hook(pw.QueryEvent(sql, params, time.perf_counter() - start, exc))
            raise
        for hook in hooks:
            hook(pw.QueryEvent(sql, params, time.perf_counter() - start, None))
        return cursor


class _SqliteDatabase(_ValuesNotLogged, pw.SqliteDatabase):
    """SQLite, its statements logged without their values."""
