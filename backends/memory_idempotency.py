"""The memory store's idempotency keys: a dictionary under the store's one lock."""

from __future__ import annotations

import copy
from datetime import datetime

from flask_polysms.records import IdempotentRequest


class IdempotencyRecordsInMemory:
    """Idempotency keys of :class:`~flask_polysms.backends.memory.MemoryStore` (its ``_lock``
    guards them; ``drop_schema`` empties ``_idempotent_requests``)."""

    _idempotent_requests: dict[str, IdempotentRequest]

    def claim_idempotent_request(
        self, request: IdempotentRequest, abandoned_before: datetime
    ) -> IdempotentRequest:
        with self._lock:
            held = self._idempotent_requests.get(request.id)
            if held is None or _free(held, request.created_at, abandoned_before):
                self._idempotent_requests[request.id] = copy.deepcopy(request)
                return copy.deepcopy(request)
            return copy.deepcopy(held)

    def finish_idempotent_request(self, request_id: str, token: str, response: dict) -> bool:
        with self._lock:
            held = self._idempotent_requests.get(request_id)
            if held is None or held.token != token or held.response is not None:
                return False
            held.response = copy.deepcopy(response)
            return True

    def release_idempotent_request(self, request_id: str, token: str) -> bool:
        with self._lock:
            held = self._idempotent_requests.get(request_id)
            if held is None or held.token != token or held.response is not None:
                return False
            del self._idempotent_requests[request_id]
            return True

    def purge_idempotent_requests(self, now: datetime, limit: int = 100) -> int:
        with self._lock:
            expired = [k for k, v in self._idempotent_requests.items() if v.expires_at <= now]
            for key in expired[:limit]:
                del self._idempotent_requests[key]
            return len(expired[:limit])


def _free(held: IdempotentRequest, now: datetime, abandoned_before: datetime) -> bool:
    """Whether ``held`` no longer keeps its id: expired, or a try that never finished."""
    return held.expires_at <= now or (held.response is None and held.created_at < abandoned_before)
