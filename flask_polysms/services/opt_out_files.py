"""Opt-outs as CSV files: ``user_number,sender,keyword,created_at``, one current opt-out a row.

The export writes the current opt-outs (of one project, or of every one), in the order the pairs
first opted out. The import checks every row first and applies them all in one transaction, or
none: a bad row is reported with its line number and nothing changes. A row whose pair is opted
out already changes nothing, so importing a file twice is importing it once. Imported opt-outs
are recorded with source ``import`` at the row's ``created_at``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TextIO

from ..clock import as_utc, utcnow
from ..errors import PolySMSError
from ..phone import validate_e164
from ..records import SOURCE_IMPORT, Sender
from .pools import change_opt_out
from .units import unit_of_work

if TYPE_CHECKING:
    from .state import PolySMSState

COLUMNS = ("user_number", "sender", "keyword", "created_at")
KEYWORD_MAX_LENGTH = 160
# Clocks disagree a little; a time further ahead than this is a mistake in the file.
FUTURE_SLACK = timedelta(minutes=5)
PAGE = 500


class ImportProblems(PolySMSError):
    """The rows that cannot be imported, as ``(line number, why)``; nothing was applied."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "; ".join(f"line {line}: {why}" for line, why in problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{len(problems)} bad row(s), nothing imported: {shown}{more}",
            errors={f"line {line}": [why] for line, why in problems},
        )


@dataclass(frozen=True)
class ImportResult:
    """What an import did: opt-outs recorded, and rows whose pair was opted out already."""

    applied: int
    unchanged: int


def export_rows(state: PolySMSState, project_id: str | None) -> Iterator[list[str]]:
    """The CSV rows (header first) of the current opt-outs of a project (every project's for
    None), read a page at a time."""
    yield list(COLUMNS)
    cursor = None
    while True:
        page, cursor = state.store.list_opt_outs(project_id, cursor=cursor, limit=PAGE)
        for opt_out in page:
            yield [
                opt_out.recipient,
                opt_out.sender,
                opt_out.keyword or "",
                as_utc(opt_out.created_at).isoformat(),
            ]
        if cursor is None:
            return


def export_csv(state: PolySMSState, project_id: str | None, out: TextIO) -> int:
    """Write the export to ``out``; returns the number of opt-outs written."""
    writer = csv.writer(out, lineterminator="\n")
    count = -1
    for row in export_rows(state, project_id):
        writer.writerow(row)
        count += 1
    return count


def export_text(state: PolySMSState, project_id: str | None) -> str:
    """The export as one string (what the dashboard's download sends)."""
    out = io.StringIO()
    export_csv(state, project_id, out)
    return out.getvalue()


@dataclass(frozen=True)
class _Row:
    line: int
    user_number: str
    sender: Sender
    keyword: str | None
    at: datetime


def _parse_time(text: str, now: datetime) -> datetime:
    if not text:
        return now
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"created_at {text!r} is not an ISO 8601 time (2026-05-04T10:00:00+00:00)"
        ) from None
    if value.tzinfo is None:
        raise ValueError(f"created_at {text!r} needs a UTC offset (+00:00 or Z)")
    value = as_utc(value)
    if value > now + FUTURE_SLACK:
        raise ValueError(f"created_at {text!r} is in the future")
    return value


def _check_row(
    state: PolySMSState, project_id: str | None, line: int, values: list[str], now: datetime
) -> _Row:
    if len(values) != len(COLUMNS):
        raise ValueError(f"{len(values)} columns, expected {len(COLUMNS)} ({','.join(COLUMNS)})")
    if any("\x00" in value for value in values):
        raise ValueError("a NUL character")
    user_number, address, keyword, created_at = (value.strip() for value in values)
    try:
        validate_e164(user_number)
    except ValueError as exc:
        raise ValueError(f"user_number: {exc}") from None
    sender = state.store.get_sender(address) if address else None
    if sender is None or (project_id is not None and sender.project_id != project_id):
        where = "this project" if project_id is not None else "any project"
        raise ValueError(f"sender {address!r} is not a sender of {where}")
    if len(keyword) > KEYWORD_MAX_LENGTH:
        raise ValueError(f"keyword over {KEYWORD_MAX_LENGTH} characters")
    return _Row(line, user_number, sender, keyword or None, _parse_time(created_at, now))


def _rows(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(lines)
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportProblems([(reader.line_num, f"not CSV: {exc}")]) from None
        yield reader.line_num, values


def import_csv(state: PolySMSState, lines: Iterable[str], project_id: str | None) -> ImportResult:
    """Import the opt-outs of a CSV file (its text, line by line), all or none.

    With ``project_id`` every sender must be that project's; without, each row belongs to the
    project of its sender. Raises :class:`ImportProblems` listing every bad row (nothing is
    applied then): a header other than ``user_number,sender,keyword,created_at``, a bad number,
    a sender that is not provisioned, a time without offset or in the future.
    """
    now = utcnow()
    problems: list[tuple[int, str]] = []
    rows: list[_Row] = []
    header_seen = False
    for line, values in _rows(lines):
        if not header_seen:
            header_seen = True
            names = [value.strip().lstrip("\ufeff") for value in values]
            if names != list(COLUMNS):
                problems.append((line, f"the header must be {','.join(COLUMNS)}"))
                break
            continue
        if not values or all(not value.strip() for value in values):
            continue  # a blank line
        try:
            rows.append(_check_row(state, project_id, line, values, now))
        except ValueError as exc:
            problems.append((line, str(exc)))
    if not header_seen:
        problems.append((1, f"the file is empty: the header must be {','.join(COLUMNS)}"))
    if problems:
        raise ImportProblems(problems)

    def apply() -> ImportResult:
        applied = 0
        for row in rows:
            # A member number of a Messaging Service: one opt-out, under the service's SID.
            applied += change_opt_out(
                state, row.sender, row.user_number, True, row.keyword, row.at, SOURCE_IMPORT
            )
        return ImportResult(applied=applied, unchanged=len(rows) - applied)

    return unit_of_work(state, apply)
