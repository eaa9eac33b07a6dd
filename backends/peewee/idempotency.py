"""Idempotency keys: a row per (project, route, key), held by one try, then its response."""

from __future__ import annotations

from datetime import datetime

from flask_polysms.records import IdempotentRequest

from .statements import StatementRunner, _record, _values

# A claim that finds the row gone between its statements (released, purged) tries again.
_CLAIM_TRIES = 5


class IdempotencyRecords(StatementRunner):
    """The store's idempotency keys. Each statement is atomic by itself: the insert (the
    primary key lets one through) and the conditional take-over decide every race, in any
    process."""

    def claim_idempotent_request(
        self, request: IdempotentRequest, abandoned_before: datetime
    ) -> IdempotentRequest:
        R = self._m.IdempotentRequest
        values = _values(request)
        free = (R.id == request.id) & (
            (R.expires_at <= request.created_at)
            | (R.response.is_null() & (R.created_at < abandoned_before))
        )
        changes = {getattr(R, name): value for name, value in values.items() if name != "id"}
        for _ in range(_CLAIM_TRIES):
            if self._insert_unless_taken(R, values):
                return request
            taken = self._atomically(R.update(changes).where(free).execute, one_statement=True)
            if taken:
                return request
            row = self._first(R.select().where(R.id == request.id))
            if row is not None:
                return _record(IdempotentRequest, row)
        raise RuntimeError(f"idempotency key {request.id}: claimed and released {_CLAIM_TRIES}x")

    def finish_idempotent_request(self, request_id: str, token: str, response: dict) -> bool:
        R = self._m.IdempotentRequest
        query = R.update({R.response: response}).where(
            (R.id == request_id) & (R.token == token) & R.response.is_null()
        )
        return self._atomically(query.execute, one_statement=True) > 0

    def release_idempotent_request(self, request_id: str, token: str) -> bool:
        R = self._m.IdempotentRequest
        query = R.delete().where((R.id == request_id) & (R.token == token) & R.response.is_null())
        return self._atomically(query.execute, one_statement=True) > 0

    def purge_idempotent_requests(self, now: datetime, limit: int = 100) -> int:
        R = self._m.IdempotentRequest
        # Ids first: MySQL takes no LIMIT in a subquery of IN.
        ids = [row["id"] for row in R.select(R.id).where(R.expires_at <= now).limit(limit).dicts()]
        if not ids:
            return 0
        query = R.delete().where(R.id.in_(ids) & (R.expires_at <= now))
        return self._atomically(query.execute, one_statement=True)
