"""The memory store's look-ups of scheduled messages (under the store's one lock)."""

from __future__ import annotations

import copy
from datetime import datetime

from flask_polysms.records import SCHEDULED, Message


class MemoryScheduled:
    """Scheduled messages of :class:`~flask_polysms.backends.memory.MemoryStore` (its ``_lock``
    guards ``_messages``)."""

    _messages: dict[str, Message]

    def _scheduled(self, keep) -> list[Message]:
        with self._lock:
            found = [
                m
                for m in self._messages.values()
                if m.status == SCHEDULED and m.send_at is not None and keep(m)
            ]
            found.sort(key=lambda m: (m.send_at, m.created_at))
            return [copy.deepcopy(m) for m in found]

    def due_scheduled_messages(self, now: datetime, limit: int = 500) -> list[Message]:
        return self._scheduled(lambda m: m.send_at <= now)[:limit]

    def list_scheduled_messages(
        self, project_id: str, environment: str, limit: int = 100
    ) -> list[Message]:
        return self._scheduled(
            lambda m: m.project_id == project_id and m.environment == environment
        )[:limit]
