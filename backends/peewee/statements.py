"""How the store runs its statements: compiled once per store, run with each call's values,
inside retried transactions, and read back into records.

Peewee builds each statement's SQL from its query tree, and that costs several times the CPU of
the database round trip. The hot statements are built once per store with placeholders
(``param(i)``) and then run with each call's values, converted by the fields.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, TypeVar

import peewee as pw

from flask_polysms.ports.store import NotFound

from .fields import UTCDateTimeField

T = TypeVar("T")


# A deadlock (MySQL/MariaDB 1213, PostgreSQL 40P01) or a serialization failure (40001) rolls the
# whole transaction back: running it again is correct, and these retries are rare.
_RETRIES = 5
_RETRYABLE_MYSQL_CODES = frozenset({1213})
# Transactions that open a session of one user and number at the same moment: one wins per round.
_OPEN_CLASH_RETRIES = 50
_RETRYABLE_PG_CODES = frozenset({"40P01", "40001"})

# Record attribute -> column, where the attribute's name is not a good column name.
_COLUMN_FOR = {"from_": "from_number"}


def _column(attribute: str) -> str:
    return _COLUMN_FOR.get(attribute, attribute)


def _literal_limits(sql: str, slots: list) -> tuple[str, list]:
    """Write a statement's constant ``LIMIT``/``OFFSET`` into its SQL instead of as parameters.

    A prepared statement's generic plan (PostgreSQL's choice after five runs) cannot see a
    parameter's value: with ``LIMIT $4`` it took a scan of every session of the project for the
    last-agent lookup (0.9 -> 2.9 ms after 8,000 outbound requests); with ``LIMIT 1`` it uses the
    user's index.
    """
    pieces = sql.split("%s")
    if len(pieces) != len(slots) + 1:  # a literal "%s" in the text: leave the statement alone
        return sql, slots
    text, kept = pieces[0], []
    for (marker, value), piece in zip(slots, pieces[1:], strict=True):
        if (
            marker is None
            and type(value) is int
            and text.rstrip().upper().endswith(("LIMIT", "OFFSET"))
        ):
            text += str(value) + piece
        else:
            text += "%s" + piece
            kept.append((marker, value))
    return text, kept


def _is_retryable(exc: pw.OperationalError) -> bool:
    original = getattr(exc, "orig", None)  # the driver's exception, which Peewee wraps
    if getattr(original, "pgcode", None) in _RETRYABLE_PG_CODES:
        return True
    codes = getattr(original, "args", ())
    return bool(codes) and codes[0] in _RETRYABLE_MYSQL_CODES


def _is_open_clash(exc: pw.IntegrityError) -> bool:
    """Whether ``exc`` is a clash on the sessions' open key (two sessions opened at once for one
    user and number): PostgreSQL and MySQL name the index, SQLite its columns."""
    text = str(exc)
    return "session_one_open" in text or "open_mark" in text


@functools.cache
def _names(cls: type) -> tuple[tuple[str, str], ...]:
    """(attribute, column) of each field of a record class (``dataclasses.fields`` is slow)."""
    return tuple((f.name, _column(f.name)) for f in dataclasses.fields(cls))


def _record(cls: type[T], row: dict[str, Any]) -> T:
    return cls(**{name: row[column] for name, column in _names(cls)})


def _text_as_is(field: pw.Field) -> bool:
    """A plain text field: a string passes through ``db_value`` and ``python_value`` unchanged,
    so converting it (two calls, an ``isinstance`` each) can be skipped."""
    return type(field) in (pw.CharField, pw.TextField)


@functools.lru_cache(maxsize=256)
def _readers(
    model: type[pw.Model], prefix: str = ""
) -> tuple[tuple[str, str, Callable[[Any], Any] | None], ...]:
    """(attribute, column name with ``prefix``, converter or None for text as is) per field."""
    return tuple(
        (f.name, prefix + f.column_name, None if _text_as_is(f) else f.python_value)
        for f in model._meta.sorted_fields
    )


def _prefixed_record(
    values: dict[str, Any], prefix: str, model: type[pw.Model], cls: type[T]
) -> T | None:
    """The record of ``model`` whose columns are ``prefix`` + column name in ``values`` (a row
    of an outer join), or None when its id is NULL."""
    if values[prefix + "id"] is None:
        return None
    row = {}
    for name, column, convert in _readers(model, prefix):
        value = values[column]
        row[name] = value if convert is None or value is None else convert(value)
    return _record(cls, row)


@functools.lru_cache(maxsize=256)
def _read_back_unchanged(model: type[pw.Model]) -> dict[str, type | None]:
    """Per field, the one type whose values (besides None) read back exactly as written: text
    as text, integers and booleans as themselves, aware UTC datetimes as themselves (every
    backend keeps microseconds). Converting those both ways, for every field of every record
    written, cost more than writing the SQL."""
    kinds = [(pw.BooleanField, bool), (pw.IntegerField, int), (UTCDateTimeField, datetime)]
    unchanged: dict[str, type | None] = {}
    for field in model._meta.sorted_fields:
        if _text_as_is(field):
            unchanged[field.name] = str
        else:
            unchanged[field.name] = next((t for c, t in kinds if isinstance(field, c)), None)
    return unchanged


def _same(value: Any) -> Any:
    return value


def _values(record: Any) -> dict[str, Any]:
    return {column: getattr(record, name) for name, column in _names(type(record))}


class StatementRunner:
    """What the store's record mixins share: the database, the models and the statements.

    A base of :class:`~flask_polysms.backends.peewee.store.PeeweeStore` only, which sets the
    attributes below in its ``__init__``.
    """

    _db: pw.Database
    _m: SimpleNamespace
    _statements: dict[Any, tuple]
    _execute_statement: Callable[[str, Any], Any]
    _is_sqlite: bool
    _is_mysql: bool

    # -- transactions ------------------------------------------------------------------------------
    def _transaction(self) -> Any:
        # On SQLite take the write lock at BEGIN: a transaction that read first and then has to
        # upgrade its lock fails at once with "database is locked" instead of waiting.
        if self._is_sqlite:
            return self._db.atomic("IMMEDIATE")
        return self._db.atomic()

    def _atomically(
        self, work: Callable[[], T], *, one_statement: bool = False, may_fail: bool = False
    ) -> T:
        """Run ``work`` in one transaction; again when the database made it a deadlock victim.

        Inside a caller's transaction (``atomic``) ``work`` simply joins it, in a savepoint only
        when ``may_fail`` (it raises an error its caller handles, which on PostgreSQL would abort
        the whole transaction otherwise). Outside, ``one_statement`` work runs without BEGIN and
        COMMIT: one statement is atomic by itself, and they would cost two round trips.
        """
        if self._db.in_transaction():
            # Inside a caller's transaction the whole of it is rolled back: not ours to redo.
            if may_fail:
                with self._db.atomic():
                    return work()
            return work()
        failures = clashes = 0
        while True:
            try:
                if one_statement:
                    return work()
                with self._transaction():
                    return work()
            except pw.OperationalError as exc:
                failures += 1
                if failures == _RETRIES or not _is_retryable(exc):
                    raise
            except pw.IntegrityError as exc:
                # Another transaction opened a session of the same triple since this one read:
                # run again, and this one now sees (and supersedes) it. Each round has a winner.
                clashes += 1
                if clashes == _OPEN_CLASH_RETRIES or not _is_open_clash(exc):
                    raise

    # -- compiled statements -----------------------------------------------------------------------
    def _compiled(self, name: Any, build: Callable[[Callable[[int], pw.Value]], Any]) -> tuple:
        found = self._statements.get(name)
        if found is None:
            markers: dict[str, int] = {}

            def param(i: int) -> pw.Value:
                marker = f"\x00polysms-param-{i}\x00"
                markers[marker] = i
                return pw.Value(marker, converter=False)

            sql, params = build(param).sql()
            slots = [
                (markers[v], None) if isinstance(v, str) and v in markers else (None, v)
                for v in params
            ]
            found = self._statements[name] = _literal_limits(sql, slots)
        return found

    def _run(self, name: Any, build: Callable, args: list[Any]) -> Any:
        """Execute a compiled statement with ``args`` (database values); returns the cursor."""
        sql, slots = self._compiled(name, build)
        return self._execute_statement(sql, [args[i] if i is not None else v for i, v in slots])

    def _defer(self, name: Any, build: Callable, args: list[Any]) -> None:
        """Execute a compiled write whose result is not read: with the next statement where the
        database can (PostgreSQL, inside a transaction), else now."""
        defer_sql = getattr(self._db, "defer_sql", None)
        if defer_sql is None:
            self._run(name, build, args)
            return
        sql, slots = self._compiled(name, build)
        defer_sql(sql, [args[i] if i is not None else v for i, v in slots])

    def _rows(
        self, name: Any, build: Callable, args: list[Any], model: type[pw.Model]
    ) -> list[dict[str, Any]]:
        """The rows of a compiled statement as dicts of Python values (as ``.dicts()`` gives)."""
        cursor = self._run(name, build, args)
        columns = model._meta.columns
        names = [d[0] for d in cursor.description]
        convert = [
            _same if n not in columns or _text_as_is(columns[n]) else columns[n].python_value
            for n in names
        ]
        rows = cursor.fetchall()
        return [{n: c(v) for n, c, v in zip(names, convert, row, strict=True)} for row in rows]

    def _row(
        self, name: Any, build: Callable, args: list[Any], model: type[pw.Model]
    ) -> dict[str, Any] | None:
        rows = self._rows(name, build, args, model)
        return rows[0] if rows else None

    def _by(
        self, model: type[pw.Model], column: str, value: Any, order: tuple = ()
    ) -> dict[str, Any] | None:
        """The first row of ``model`` whose ``column`` is ``value``, in ``order`` (one order per
        model and column: the compiled statement is kept under those)."""
        field = getattr(model, column)

        def build(param: Callable[[int], pw.Value]) -> Any:
            return model.select().where(field == param(0)).order_by(*order).limit(1)

        key = ("by", model, column, bool(order))
        return self._row(key, build, [field.db_value(value)], model)

    def _insert(self, model: type[pw.Model], values: dict[str, Any], may_fail: bool = True) -> None:
        """Insert a row; IntegrityError (a unique value taken) leaves nothing behind.

        A row that cannot clash (``may_fail=False``: a fresh random id) is written, inside a
        transaction, with the transaction's next statement (see :class:`_PipelinedPostgres`).
        """
        if not may_fail and self._db.in_transaction():
            self._run_insert(model, values, ignore=False, deferred=True)
            return
        self._atomically(
            lambda: self._run_insert(model, values, ignore=False),
            one_statement=True,
            may_fail=may_fail,
        )

    def _insert_unless_taken(self, model: type[pw.Model], values: dict[str, Any]) -> bool:
        """Insert a row unless a unique value is taken (then False). ON CONFLICT DO NOTHING
        raises nothing, so it needs no savepoint inside a caller's transaction."""
        cursor = self._atomically(
            lambda: self._run_insert(model, values, ignore=True), one_statement=True
        )
        return cursor.rowcount > 0

    def _run_insert(
        self, model: type[pw.Model], values: dict[str, Any], ignore: bool, deferred: bool = False
    ) -> Any:
        fields = [model._meta.fields[name] for name in values]

        def build(param: Callable[[int], pw.Value]) -> Any:
            query = model.insert({f: param(i) for i, f in enumerate(fields)})
            return query.on_conflict_ignore() if ignore else query

        key = ("insert", model, tuple(values), ignore)
        args = [
            value if type(value) is str and _text_as_is(f) else f.db_value(value)
            for f, value in zip(fields, values.values(), strict=True)
        ]
        if deferred:
            return self._defer(key, build, args)
        return self._run(key, build, args)

    def _updated_row(
        self,
        name: Any,
        model: type[pw.Model],
        changes: dict[pw.Field, Any],
        where: Callable,
        where_args: list[Any],
    ) -> dict[str, Any] | None:
        """``UPDATE model SET changes WHERE where(param) RETURNING *`` (PostgreSQL): the updated
        row, or None. Values of ``changes`` that are expressions are part of the statement."""
        settable = [(f, v) for f, v in changes.items() if not isinstance(v, pw.Node)]
        fixed = {f: v for f, v in changes.items() if isinstance(v, pw.Node)}
        n = len(where_args)

        def build(param: Callable[[int], pw.Value]) -> Any:
            values = {f: param(n + i) for i, (f, _) in enumerate(settable)}
            query = model.update({**values, **fixed}).where(where(param))
            return query.returning(*model._meta.sorted_fields)

        key = (name, tuple(f.name for f, _ in settable), tuple(f.name for f in fixed))
        args = where_args + [f.db_value(v) for f, v in settable]
        return self._row(key, build, args, model)

    def _first(self, query: pw.ModelSelect) -> dict[str, Any] | None:
        rows = list(query.limit(1).dicts())
        return rows[0] if rows else None

    def _roundtrip(self, model: type[pw.Model], cls: type[T], record: T) -> T:
        """``record`` as reading it back would give it (aware UTC times, JSON values)."""
        fields = model._meta.fields
        unchanged = _read_back_unchanged(model)
        row = {}
        for name, value in _values(record).items():
            if value is None or type(value) is unchanged[name]:
                if type(value) is not datetime or value.tzinfo is timezone.utc:
                    row[name] = value
                    continue
            field = fields[name]
            row[name] = field.python_value(field.db_value(value))
        return _record(cls, row)

    def _changes(
        self,
        model: type[pw.Model],
        cls: type,
        fields: dict[str, Any],
        frozen: tuple[str, ...] = ("id",),
    ) -> dict[pw.Field, Any]:
        allowed = {f.name for f in dataclasses.fields(cls)} - set(frozen)
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise TypeError(f"{cls.__name__} has no settable field(s) {', '.join(unknown)}")
        return {getattr(model, _column(name)): value for name, value in fields.items()}

    def _conflict_target(self, *fields: pw.Field) -> dict[str, Any]:
        # MySQL's ON DUPLICATE KEY UPDATE names no target: any unique key that clashes counts.
        return {} if self._is_mysql else {"conflict_target": list(fields)}

    def _require(self, model: type[pw.Model], record_id: str, what: str) -> None:
        if not model.select(model.id).where(model.id == record_id).exists():
            raise NotFound(f"no {what} {record_id}")

    def _prefixed_rows(self, name: Any, build: Callable, args: list[Any]) -> list[dict[str, Any]]:
        """The rows of a compiled statement as dicts of database values by column name."""
        cursor = self._run(name, build, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @staticmethod
    def _from_row(model: type[pw.Model], cls: type[T], values: Any) -> T:
        fields = model._meta.sorted_fields
        row = {f.column_name: f.python_value(v) for f, v in zip(fields, values, strict=True)}
        return _record(cls, row)
