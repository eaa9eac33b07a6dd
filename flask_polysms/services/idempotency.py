"""Idempotency keys: a request repeated with the same ``Idempotency-Key`` runs once.

Per project and route, kept 24 hours. The first try holds the key (a committed claim, so a
concurrent repeat sees it and gets 409) and records its response in the same transaction as its
work, so a key never holds the response of work that was rolled back, and work never commits
without its response. A try that fails writes nothing (its transaction is rolled back): its key
is released and the client may try again with it. A try that died holding the key (a killed
process) is taken over after :data:`ABANDONED_AFTER`; its own commit, if it ever comes, then
finds the key no longer its own and is rolled back.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from ..clock import utcnow
from ..errors import ConflictError, InvalidInput, PolySMSError
from ..records import IdempotentRequest

if TYPE_CHECKING:
    from .state import PolySMSState

KEY_HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
#: How long a key keeps its response.
KEPT_FOR = timedelta(hours=24)
#: A try holding its key this long without an answer is taken for dead (no request of the API
#: runs nearly this long).
ABANDONED_AFTER = timedelta(minutes=2)
#: Expired keys deleted by each new claim (the table stays as large as a day of keys).
PURGE_PER_CLAIM = 100


class KeyInUse(ConflictError):
    """409: the key's first request is still being handled."""


class KeyReused(PolySMSError):
    """422: the key was used for another request (another body or path)."""

    status = 422


def check_key(key: str) -> None:
    """400 unless the key is 1 to 255 characters."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        problem = "must be 1 to 255 characters"
        raise InvalidInput(f"{KEY_HEADER} {problem}", errors={KEY_HEADER: [problem]})


def fingerprint(method: str, path: str, body: bytes, parsed: object = None) -> str:
    """What a request asks, as a digest: its method, path and body (JSON compared as values,
    whatever its spacing or key order)."""
    content = body if parsed is None else json.dumps(parsed, sort_keys=True).encode()
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), content):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def claim(
    state: PolySMSState, project_id: str, route: str, key: str, asked: str
) -> IdempotentRequest:
    """The key held for this try (``response`` None), or the first try's record with its
    ``response`` to answer again. Raises KeyReused (422) for another request under the key,
    KeyInUse (409) while its first try runs."""
    now = utcnow()
    request_id = hashlib.sha256(json.dumps([project_id, route, key]).encode()).hexdigest()
    mine = IdempotentRequest(
        id=request_id,
        project_id=project_id,
        route=route,
        fingerprint=asked,
        token=secrets.token_hex(16),
        created_at=now,
        expires_at=now + KEPT_FOR,
    )
    held = state.store.claim_idempotent_request(mine, abandoned_before=now - ABANDONED_AFTER)
    if held.token == mine.token:
        state.store.purge_idempotent_requests(now, PURGE_PER_CLAIM)
        return held
    if held.fingerprint != asked:
        raise KeyReused(f"this {KEY_HEADER} was used for another request (another body)")
    if held.response is None:
        raise KeyInUse(f"the first request with this {KEY_HEADER} is still being handled")
    return held


def finish(state: PolySMSState, held: IdempotentRequest, response: dict) -> None:
    """Record the try's response in the caller's transaction; KeyInUse (409, the transaction
    must then roll back) when another try took the key over meanwhile."""
    if not state.store.finish_idempotent_request(held.id, held.token, response):
        raise KeyInUse(f"this {KEY_HEADER} was taken over by a later request")


def release(state: PolySMSState, held: IdempotentRequest) -> None:
    """Forget the key of a try that did nothing, so that the client may try again with it."""
    state.store.release_idempotent_request(held.id, held.token)
