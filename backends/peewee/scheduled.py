"""The Peewee store's look-ups of scheduled messages (the index ``message_send_at``)."""

from __future__ import annotations

from datetime import datetime

from flask_polysms.records import SCHEDULED, Message

from .statements import StatementRunner, _record


class ScheduledRecords(StatementRunner):
    """Scheduled messages: the due ones (the sweep's) and a project's (the dashboard's)."""

    def due_scheduled_messages(self, now: datetime, limit: int = 500) -> list[Message]:
        """``scheduled`` messages due at ``now``, soonest first."""
        M = self._m.Message
        query = (
            M.select()
            .where((M.status == SCHEDULED) & (M.send_at <= now))
            .order_by(M.send_at, M.seq)
            .limit(limit)
        )
        return [_record(Message, row) for row in query.dicts()]

    def list_scheduled_messages(
        self, project_id: str, environment: str, limit: int = 100
    ) -> list[Message]:
        """A project's ``scheduled`` messages in one environment, soonest first."""
        M = self._m.Message
        query = (
            M.select()
            .where(
                (M.status == SCHEDULED)
                & (M.project_id == project_id)
                & (M.environment == environment)
            )
            .order_by(M.send_at, M.seq)
            .limit(limit)
        )
        return [_record(Message, row) for row in query.dicts()]
