"""The memory store's pages of opt-outs and of opt-out history, read from its history list."""

from __future__ import annotations

import copy

from flask_polysms.ports.store import check_cursor
from flask_polysms.records import OptOut, OptOutEvent


def _page(rows: list, cursor: str | None, limit: int) -> tuple[list, str | None]:
    """The rows after the one whose ``id`` is ``cursor``, at most ``limit``, and the next cursor.
    Rows are in ascending ``id`` order (decimal strings of positions)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    after = check_cursor(cursor)
    if after is not None:
        position = int(after) if after.isdigit() else None
        if position is None:
            return [], None
        rows = [row for row in rows if int(row.id) > position]
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)


class MemoryOptOutPages:
    """Pages of :class:`~flask_polysms.backends.memory.MemoryStore`'s opt-outs, under its lock.

    Uses the store's ``_lock``, ``_opt_outs`` (the pairs opted out now) and ``_opt_out_history``
    (every change, ``id`` = its position from 1).
    """

    def list_opt_outs(
        self,
        project_id: str | None,
        *,
        recipient: str | None = None,
        sender: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[OptOut], str | None]:
        with self._lock:
            first: dict[tuple[str, str], str] = {}  # a pair's first opt-out: its place in lists
            latest: dict[tuple[str, str], OptOutEvent] = {}
            for event in self._opt_out_history:
                if event.action == "opt_out":
                    pair = (event.recipient, event.sender)
                    first.setdefault(pair, event.id)
                    latest[pair] = event
            rows = [
                OptOut(
                    project_id=event.project_id,
                    recipient=event.recipient,
                    sender=event.sender,
                    keyword=event.keyword,
                    source=event.source,
                    created_at=event.at,
                    id=first[pair],
                )
                for pair, event in latest.items()
                if pair in self._opt_outs
                and project_id in (None, event.project_id)
                and recipient in (None, event.recipient)
                and sender in (None, event.sender)
            ]
        rows.sort(key=lambda row: int(row.id))
        return _page(rows, cursor, limit)

    def opt_out_events(
        self, project_id: str, recipient: str, *, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[OptOutEvent], str | None]:
        with self._lock:
            rows = [
                copy.deepcopy(e)
                for e in self._opt_out_history
                if e.project_id == project_id and e.recipient == recipient
            ]
        return _page(rows, cursor, limit)
