"""The memory store's opt-outs: the pairs opted out now and every change, kept forever."""

from __future__ import annotations

import copy
from datetime import datetime

from flask_polysms.records import SOURCE_KEYWORD, OptOutEvent


class MemoryOptOuts:
    """Opt-outs of :class:`~flask_polysms.backends.memory.MemoryStore`, under its lock.

    Uses the store's ``_lock``, ``_senders``, ``_opt_outs`` (the pairs opted out) and
    ``_opt_out_history``.
    """

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
        with self._lock:
            pair = (recipient, sender)
            if (pair in self._opt_outs) == opted_out:
                return False
            if opted_out:
                self._opt_outs.add(pair)
            else:
                self._opt_outs.discard(pair)
            self._opt_out_history.append(
                OptOutEvent(
                    project_id=project_id,
                    recipient=recipient,
                    sender=sender,
                    action="opt_out" if opted_out else "opt_in",
                    keyword=keyword,
                    at=at,
                    source=source,
                    api_key_id=api_key_id,
                    id=str(len(self._opt_out_history) + 1),
                )
            )
            return True

    def is_opted_out(self, recipient: str, sender: str) -> bool:
        with self._lock:
            if (recipient, sender) in self._opt_outs:
                return True
            record = self._senders.get(sender)
            service = record.messaging_service_sid if record is not None else None
            return service is not None and (recipient, service) in self._opt_outs

    def opt_out_history(
        self, project_id: str, recipient: str, sender: str | None = None
    ) -> list[OptOutEvent]:
        with self._lock:
            return [
                copy.deepcopy(e)
                for e in self._opt_out_history
                if e.project_id == project_id
                and e.recipient == recipient
                and sender in (None, e.sender)
            ]
