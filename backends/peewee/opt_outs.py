"""Who may be messaged: opt-outs (state and history) and inbound abuse blocks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import peewee as pw

from flask_polysms.ports.store import check_cursor
from flask_polysms.records import SOURCE_KEYWORD, OptOut, OptOutEvent

from .statements import StatementRunner, _record


def _event(row: dict[str, Any]) -> OptOutEvent:
    return _record(OptOutEvent, {**row, "id": str(row["seq"])})


def _next_cursor(rows: list[dict[str, Any]], limit: int) -> str | None:
    # One row more than the page was read: it tells whether there is a next page.
    return str(rows[limit - 1]["seq"]) if len(rows) > limit else None


def _after(cursor: str | None) -> int | None:
    """The ``seq`` a store cursor names; -1 (nothing after it: an empty page) for an id no row
    of ours can have."""
    after = check_cursor(cursor)
    if after is None:
        return None
    return int(after) if after.isdigit() and len(after) < 19 else -1


class OptOutRecords(StatementRunner):
    """The store's opt-outs and number blocks."""

    # -- opt-outs ---------------------------------------------------------------------------------
    def set_opt_out(
        self,
        project_id: str,
        recipient: str,
        sender: str,
        opted_out: bool,
        keyword: str | None,
        at: datetime,
        source: str = SOURCE_KEYWORD,
        api_key_id: str | None = None,
    ) -> bool:
        """Opt the pair out (or back in) and append the change to its history (with its
        ``source`` and API key id), atomically. False, and nothing recorded, when the pair was in
        that state already."""
        O_, E = self._m.OptOut, self._m.OptOutEvent
        pair = (O_.recipient == recipient) & (O_.sender == sender)
        if opted_out:
            # The pair's row must exist for the conditional update to find; created (opted in)
            # outside the transaction below, so MySQL takes no gap locks there to deadlock on.
            self._ensure_opt_out_row(project_id, recipient, sender, at)

        def work() -> bool:
            # Only the caller whose update flips the state records the change.
            flipped = (
                O_.update(
                    opted_out=opted_out,
                    project_id=project_id,
                    updated_at=at,
                    keyword=keyword,
                    source=source,
                )
                .where(pair & (O_.opted_out == (not opted_out)))
                .execute()
            )
            if not flipped:
                return False
            E.insert(
                project_id=project_id,
                recipient=recipient,
                sender=sender,
                action="opt_out" if opted_out else "opt_in",
                keyword=keyword,
                at=at,
                source=source,
                api_key_id=api_key_id,
            ).execute()
            return True

        return self._atomically(work)

    def _ensure_opt_out_row(
        self, project_id: str, recipient: str, sender: str, at: datetime
    ) -> None:
        O_ = self._m.OptOut
        pair = (O_.recipient == recipient) & (O_.sender == sender)
        if O_.select(O_.seq).where(pair).exists():
            return
        values = {
            "recipient": recipient,
            "sender": sender,
            "project_id": project_id,
            "opted_out": False,
            "updated_at": at,
        }
        try:
            self._insert(O_, values)
        except pw.IntegrityError:
            pass  # another caller created it a moment ago: the row is all that is needed

    def is_opted_out(self, recipient: str, sender: str) -> bool:
        """Whether the recipient opted out from this sender, or from the Messaging Service the
        sender belongs to (one query: the service is read from the sender's row in it)."""
        O_, S = self._m.OptOut, self._m.Sender

        def build(param: Callable[[int], pw.Value]) -> Any:
            service = S.select(S.messaging_service_sid).where(S.address == param(1)).limit(1)
            pair = (O_.recipient == param(0)) & ((O_.sender == param(1)) | (O_.sender == service))
            return O_.select(O_.opted_out).where(pair & (O_.opted_out == True)).limit(1)  # noqa: E712

        row = self._row("is_opted_out", build, [recipient, sender], O_)
        return bool(row and row["opted_out"])

    def opt_out_history(
        self, project_id: str, recipient: str, sender: str | None = None
    ) -> list[OptOutEvent]:
        """The recipient's opt-out changes in the project (one sender's, or all), oldest first."""
        E = self._m.OptOutEvent
        query = E.select().where((E.project_id == project_id) & (E.recipient == recipient))
        if sender is not None:
            query = query.where(E.sender == sender)
        return [_event(row) for row in query.order_by(E.seq).dicts()]

    def list_opt_outs(
        self,
        project_id: str | None,
        *,
        recipient: str | None = None,
        sender: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[OptOut], str | None]:
        """A page of the pairs opted out now (in one project, or every one), in the order each
        pair was first opted out, and the cursor of the next page."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = _after(cursor)
        O_ = self._m.OptOut
        query = O_.select().where(O_.opted_out == True)  # noqa: E712 - SQL, not Python
        if project_id is not None:
            query = query.where(O_.project_id == project_id)
        if recipient is not None:
            query = query.where(O_.recipient == recipient)
        if sender is not None:
            query = query.where(O_.sender == sender)
        if after is not None:
            query = query.where(O_.seq > after)
        rows = list(query.order_by(O_.seq).limit(limit + 1).dicts())
        page = [
            OptOut(
                project_id=row["project_id"],
                recipient=row["recipient"],
                sender=row["sender"],
                keyword=row["keyword"],
                source=row["source"],
                created_at=row["updated_at"],  # a pair opted out was last changed then
                id=str(row["seq"]),
            )
            for row in rows[:limit]
        ]
        return page, _next_cursor(rows, limit)

    def opt_out_events(
        self, project_id: str, recipient: str, *, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[OptOutEvent], str | None]:
        """A page of the recipient's opt-out changes in the project, oldest first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = _after(cursor)
        E = self._m.OptOutEvent
        query = E.select().where((E.project_id == project_id) & (E.recipient == recipient))
        if after is not None:
            query = query.where(E.seq > after)
        rows = list(query.order_by(E.seq).limit(limit + 1).dicts())
        return [_event(row) for row in rows[:limit]], _next_cursor(rows, limit)

    # -- inbound abuse blocks ---------------------------------------------------------------------
    def block_number(self, project_id: str, number: str, until: datetime, reason: str) -> None:
        """Block inbound from a number until ``until``; a later block extends it, an earlier one
        changes nothing."""
        B = self._m.NumberBlock
        later = B.blocked_until < until
        query = B.insert(
            project_id=project_id, number=number, blocked_until=until, reason=reason
        ).on_conflict(
            # An upsert that keeps the later deadline (and its reason). The reason comes first:
            # MySQL applies assignments left to right, so it must still see the old deadline.
            update={
                B.reason: pw.Case(None, [(later, reason)], B.reason),
                B.blocked_until: pw.Case(
                    None, [(later, B.blocked_until.to_value(until))], B.blocked_until
                ),
            },
            **self._conflict_target(B.project_id, B.number),
        )
        self._atomically(query.execute, one_statement=True)

    def blocked_until(self, project_id: str, number: str) -> datetime | None:
        """Until when inbound from the number is blocked, None when it never was."""
        B = self._m.NumberBlock

        def build(param: Callable[[int], pw.Value]) -> Any:
            pair = (B.project_id == param(0)) & (B.number == param(1))
            return B.select(B.blocked_until).where(pair).limit(1)

        row = self._row("blocked_until", build, [project_id, number], B)
        return row["blocked_until"] if row else None
