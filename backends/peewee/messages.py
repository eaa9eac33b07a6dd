"""Messages, their status events and inbound claims, and the send job's two steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import peewee as pw

from flask_polysms.ports.store import Conflict, SendClaim
from flask_polysms.records import (
    INBOUND,
    OUTBOUND,
    PROCESSING,
    QUEUED,
    RECEIVED,
    SENDING,
    SENT,
    Message,
    Project,
    Sender,
    StatusEvent,
)

from .postgres import send_statements
from .statements import StatementRunner, _record, _values


class MessageRecords(StatementRunner):
    """The store's messages, status events and inbound claims."""

    # -- messages ---------------------------------------------------------------------------------
    def add_message(self, message: Message) -> Message:
        """Record a message. Raises Conflict when its id is taken."""
        try:
            self._insert(self._m.Message, _values(message), may_fail=False)
        except pw.IntegrityError as exc:
            raise Conflict(f"message {message.id} exists") from exc
        return self._roundtrip(self._m.Message, Message, message)

    def get_message(self, message_id: str) -> Message | None:
        """The message with this id, None when unknown."""
        M = self._m.Message
        row = self._by(M, "id", message_id)
        return _record(Message, row) if row else None

    def get_message_by_sid(self, twilio_sid: str) -> Message | None:
        """The newest message with this Twilio SID, None when unknown."""
        M = self._m.Message
        row = self._by(M, "twilio_sid", twilio_sid, order=(M.seq.desc(),))
        return _record(Message, row) if row else None

    def list_messages(self, session_id: str) -> list[Message]:
        """A session's messages in the order they were recorded."""
        M = self._m.Message
        query = M.select().where(M.session_id == session_id).order_by(M.seq)
        return [_record(Message, row) for row in query.dicts()]

    def list_messages_of_sessions(self, session_ids: Sequence[str]) -> dict[str, list[Message]]:
        """One query for every session's messages (a page of conversations)."""
        found: dict[str, list[Message]] = {session_id: [] for session_id in session_ids}
        if not found:
            return found
        M = self._m.Message
        query = M.select().where(M.session_id.in_(list(found))).order_by(M.seq)
        for row in query.dicts():
            found[row["session_id"]].append(_record(Message, row))
        return found

    def update_message(
        self, message_id: str, expected_status: str | tuple[str, ...] | None = None, **fields: Any
    ) -> Message | None:
        """Apply ``fields``, only while the status is (one of) ``expected_status`` when given, in
        one conditional update. The updated message, or None when the status did not match."""
        M = self._m.Message
        changes = self._changes(M, Message, fields)
        condition = M.id == message_id
        if expected_status is not None:
            allowed = (expected_status,) if isinstance(expected_status, str) else expected_status
            if not allowed:
                return None
            # The status check and the write are one statement: two jobs cannot both pass it.
            condition &= M.status.in_(list(allowed))

        def work() -> dict[str, Any] | None:
            if not changes:
                return self._first(M.select().where(condition))
            if not M.update(changes).where(condition).execute():
                return None
            return self._first(M.select().where(M.id == message_id))

        if changes and self._db.returning_clause:
            # PostgreSQL: the update returns the new row, one statement and no transaction.
            statuses = [] if expected_status is None else list(allowed)

            def where(param: Callable[[int], pw.Value]) -> Any:
                mine = M.id == param(0)
                if statuses:
                    mine &= M.status.in_([param(1 + i) for i in range(len(statuses))])
                return mine

            row = self._atomically(
                lambda: self._updated_row(
                    ("update_message", len(statuses)), M, changes, where, [message_id, *statuses]
                ),
                one_statement=True,
            )
        else:
            row = self._atomically(work)
        return _record(Message, row) if row else None

    # -- the send job's two statements (PostgreSQL) -----------------------------------------------
    # A send job used to make eight round trips around its Twilio call: read the message, claim
    # it, read the opt-out, the project and the sender; record `sent`, count it, read the status
    # events. On PostgreSQL each half is one statement, a data-modifying CTE (one round trip, no
    # BEGIN/COMMIT); other databases use the Store's defaults, one call per step.
    def _send_sql(self) -> dict[str, Any]:
        found = getattr(self, "_send_statements", None)
        if found is None:
            found = self._send_statements = send_statements(self._m)
        return found

    def _uses_send_statements(self) -> bool:
        return isinstance(self._db, pw.PostgresqlDatabase)

    def _send_statement(self, name: str, args: list[Any]) -> tuple | None:
        """Run one of the send statements (prepared on the connection, where the database
        prepares the store's statements: planning the CTE cost PostgreSQL about twice its
        execution); its row, or None."""
        sql = self._send_sql()[name]
        execute = getattr(self._db, "execute_statement", self._db.execute_sql)
        return self._atomically(lambda: execute(sql, args).fetchone(), one_statement=True)

    def claim_send(self, message_id: str, at: datetime) -> SendClaim | None:
        """Move a ``queued`` message to ``sending`` and count the attempt (of two jobs one wins),
        with what its send reads; None when it was not queued."""
        if not self._uses_send_statements():
            return super().claim_send(message_id, at)
        M, P, S = self._m.Message, self._m.Project, self._m.Sender
        args = [SENDING, M.updated_at.db_value(at), message_id, QUEUED]
        row = self._send_statement("claim", args)
        if row is None:
            return None
        nm, np_ = len(M._meta.sorted_fields), len(P._meta.sorted_fields)
        project_values = row[nm + 1 : nm + 1 + np_]
        sender_values = row[nm + 1 + np_ :]
        # A LEFT JOIN that found nothing gives NULLs, and every row has a non-null id.
        has_project = project_values[P._meta.sorted_fields.index(P.id)] is not None
        has_sender = sender_values[S._meta.sorted_fields.index(S.id)] is not None
        return SendClaim(
            message=self._from_row(M, Message, row[:nm]),
            opted_out=bool(row[nm]),
            project=self._from_row(P, Project, project_values) if has_project else None,
            sender=self._from_row(S, Sender, sender_values) if has_sender else None,
        )

    def record_sent(
        self, message_id: str, twilio_sid: str, at: datetime
    ) -> tuple[Message | None, list[StatusEvent]]:
        """Move a ``sending`` message to ``sent`` with Twilio's SID, count it, and return it with
        the status callbacks that arrived before; ``(None, [])`` when it was not sending."""
        if not self._uses_send_statements():
            return super().record_sent(message_id, twilio_sid, at)
        M, N = self._m.Message, self._m.Metric
        args = [
            SENT,
            twilio_sid,
            M.updated_at.db_value(at),
            message_id,
            SENDING,
            N.day.db_value(at.date()),
            "sent",
            twilio_sid,
        ]
        row = self._send_statement("sent", args)
        if row is None:
            return None, []
        sent = self._from_row(M, Message, row[:-1])
        # Rarely any: only a callback that arrived before this update.
        return sent, self.list_status_events(twilio_sid) if row[-1] else []

    def stuck_messages(self, older_than: datetime, limit: int = 500) -> list[Message]:
        """Messages waiting for a job, last updated before ``older_than``, oldest first."""
        M = self._m.Message
        query = (
            M.select()
            .where(
                (
                    (M.status.in_([QUEUED, SENDING]) & (M.direction == OUTBOUND))
                    | (M.status.in_([RECEIVED, PROCESSING]) & (M.direction == INBOUND))
                )
                & (M.updated_at < older_than)
            )
            .order_by(M.updated_at, M.seq)
            .limit(limit)
        )
        return [_record(Message, row) for row in query.dicts()]

    def add_status_event(self, event: StatusEvent) -> bool:
        """Record a status callback; False when the (SID, status) pair was recorded already."""
        # The unique (twilio_sid, status) index decides which of two deliveries is the first.
        return self._insert_unless_taken(self._m.StatusEvent, _values(event))

    def list_status_events(self, twilio_sid: str) -> list[StatusEvent]:
        """The status callbacks recorded for a Twilio SID, in the order received."""
        E = self._m.StatusEvent

        def build(param: Callable[[int], pw.Value]) -> Any:
            return E.select().where(E.twilio_sid == param(0)).order_by(E.received_at, E.seq)

        rows = self._rows("list_status_events", build, [twilio_sid], E)
        return [_record(StatusEvent, row) for row in rows]

    def claim_inbound(self, message_sid: str, at: datetime) -> bool:
        """True for exactly one caller per inbound MessageSid, ever, in any process."""
        # The primary key on message_sid lets exactly one insert through, in any process.
        return self._insert_unless_taken(
            self._m.InboundClaim, {"message_sid": message_sid, "claimed_at": at}
        )
