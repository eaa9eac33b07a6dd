"""Per-project limits: the outbound limit (``POLYSMS_RATE_LIMIT``) and the request budget of every
authenticated route (``POLYSMS_READ_RATE_LIMIT``).

They run on the ``limits`` library, the engine under flask-limiter: the same limit strings, the same
storages (``memory://`` per process, ``redis://`` shared by every process) and flask-limiter's
default fixed-window strategy. Each is checked once, right after authentication, keyed on the
authenticated project (never on a raw header). flask-limiter's request middleware resolved routes,
blueprints and exemptions on every request of the whole app, which cost more CPU than the check
itself (issue 10).
"""

from __future__ import annotations

import logging
import math
import time

from limits import parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from .errors import PolySMSError

KEY_PREFIX = "polysms"

log = logging.getLogger("flask_polysms.rate_limits")


class RateLimited(PolySMSError):
    """429: the project's limit is used up for now; ``Retry-After`` says when to try again."""

    def __init__(self, limit: str, retry_after: int, what: str = "rate limit") -> None:
        super().__init__(
            f"{what} exceeded for this project ({limit}); retry later",
            status=429,
            headers={"Retry-After": str(retry_after)},
        )


class ProjectRateLimit:
    """A limit per project (``POLYSMS_RATE_LIMIT`` by default), counted in
    ``POLYSMS_RATE_LIMIT_STORAGE_URL``.

    ``namespace`` keeps the counts of two limits apart in one storage (two limits with the same
    string would otherwise share a counter); ``storage`` shares another limit's storage (one Redis
    connection pool); ``what`` names the limit in the 429's detail. ``fail_open``: when the storage
    cannot be reached, log a warning and let the request through instead of raising.
    """

    def __init__(
        self,
        limit: str,
        storage_url: str | None = None,
        *,
        namespace: str = "project",
        storage: Storage | None = None,
        what: str = "rate limit",
        fail_open: bool = False,
    ) -> None:
        if storage is None and storage_url is None:
            raise ValueError("give storage_url or storage")
        self.items = parse_many(limit)
        self.storage = storage if storage is not None else storage_from_string(storage_url)
        self.strategy = FixedWindowRateLimiter(self.storage)
        self.namespace = namespace
        self.what = what
        self.fail_open = fail_open

    def hit(self, project_id: str) -> None:
        """Count one request of the project; raise :class:`RateLimited` when over a limit."""
        key = f"{self.namespace}:{project_id}"
        for item in self.items:
            try:
                allowed = self.strategy.hit(item, KEY_PREFIX, key)
                # Only on a 429: when the window that is full starts again.
                stats = None if allowed else self.strategy.get_window_stats(item, KEY_PREFIX, key)
            except self.storage.base_exceptions as exc:
                if not self.fail_open:
                    raise
                # A budget must not take every route down with its storage: count nothing now.
                log.warning("%s not counted, its storage is unavailable: %s", self.what, exc)
                return
            if stats is not None:
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(str(item), min(retry_after, item.get_expiry()), self.what)

    def reset(self) -> None:
        """Forget every count (tests)."""
        self.storage.reset()
