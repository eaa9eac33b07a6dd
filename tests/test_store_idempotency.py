"""The Store contract on idempotency keys, run against every backend: a key is held by its first
claim until answered, is free again once expired, released or abandoned, expired keys are purged,
and one of concurrent claims wins.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from store_contract_support import (
    T0,
    THREADS,
    backend_fixture,  # noqa: F401
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
    table_prefix_fixture,  # noqa: F401
)

from flask_polysms.ports.store import Store
from flask_polysms.records import IdempotentRequest


# -- idempotency keys -----------------------------------------------------------------------------
def an_idempotent_request(token: str, at: datetime = T0, **fields: Any) -> IdempotentRequest:
    values: dict[str, Any] = {
        "id": "a" * 64,
        "project_id": "prj_a",
        "route": "polysms_outbound.send_outbound",
        "fingerprint": "f" * 64,
        "token": token,
        "created_at": at,
        "expires_at": at + timedelta(hours=24),
    }
    values.update(fields)
    return IdempotentRequest(**values)


def test_an_idempotency_key_is_held_by_its_first_claim_until_answered(store: Store) -> None:
    first = an_idempotent_request("t1")
    assert store.claim_idempotent_request(first, T0 - timedelta(minutes=2)) == first
    held = store.claim_idempotent_request(an_idempotent_request("t2"), T0 - timedelta(minutes=2))
    assert held.token == "t1" and held.response is None
    assert not store.finish_idempotent_request(first.id, "t2", {"status": 200})
    response = {"status": 202, "body": '{"a": 1}', "headers": {"Location": "/x"}}
    assert store.finish_idempotent_request(first.id, "t1", response)
    assert not store.finish_idempotent_request(first.id, "t1", {"status": 500})
    later = store.claim_idempotent_request(an_idempotent_request("t3", T0 + timedelta(hours=1)), T0)
    assert (later.token, later.response, later.created_at) == ("t1", response, T0)
    assert not store.release_idempotent_request(first.id, "t1")  # answered: kept


def test_an_idempotency_key_is_free_again_once_expired_released_or_abandoned(
    store: Store,
) -> None:
    first = an_idempotent_request("t1")
    store.claim_idempotent_request(first, T0)
    # Released by its own try only.
    assert not store.release_idempotent_request(first.id, "t2")
    assert store.release_idempotent_request(first.id, "t1")
    assert store.claim_idempotent_request(an_idempotent_request("t2"), T0).token == "t2"
    # Abandoned: held without an answer since before the limit.
    soon = T0 + timedelta(minutes=1)
    assert store.claim_idempotent_request(an_idempotent_request("t3", soon), T0).token == "t2"
    late = T0 + timedelta(minutes=3)
    taken = store.claim_idempotent_request(
        an_idempotent_request("t4", late), T0 + timedelta(1 / 1440)
    )
    assert taken.token == "t4"
    assert not store.finish_idempotent_request(first.id, "t2", {"status": 202})
    # Answered, then expired.
    assert store.finish_idempotent_request(first.id, "t4", {"status": 202})
    expiry = late + timedelta(hours=24)
    kept = store.claim_idempotent_request(
        an_idempotent_request("t5", expiry - timedelta(seconds=1)), T0
    )
    assert kept.token == "t4"
    assert store.claim_idempotent_request(an_idempotent_request("t6", expiry), T0).token == "t6"


def test_expired_idempotency_keys_are_purged(store: Store) -> None:
    for i in range(3):
        store.claim_idempotent_request(an_idempotent_request("t", id=f"{i}" * 64), T0)
    fresh = an_idempotent_request("t", T0 + timedelta(hours=2), id="f" * 64)
    store.claim_idempotent_request(fresh, T0)
    end = T0 + timedelta(hours=24)
    assert store.purge_idempotent_requests(end - timedelta(seconds=1)) == 0
    assert store.purge_idempotent_requests(end, limit=2) == 2
    assert store.purge_idempotent_requests(end, limit=2) == 1
    assert store.purge_idempotent_requests(end + timedelta(hours=5)) == 1


def test_one_of_concurrent_idempotency_claims_wins(store: Store) -> None:
    barrier = threading.Barrier(THREADS)
    tokens: list[str] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        barrier.wait()
        try:
            held = store.claim_idempotent_request(an_idempotent_request(f"t{i}"), T0)
        finally:
            store.close()
        with lock:
            tokens.append(held.token)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(tokens) == THREADS
    assert len(set(tokens)) == 1  # every caller sees the one winner
