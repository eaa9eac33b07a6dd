"""The outbound API's per-project rate limit (``POLYSMS_RATE_LIMIT``).

It runs on the ``limits`` library, the engine under flask-limiter: the same limit strings, the same
storages (``memory://`` per process, ``redis://`` shared by every process) and flask-limiter's
default fixed-window strategy. It is checked once, right after authentication, keyed on the
authenticated project (never on a raw header). flask-limiter's request middleware resolved routes,
blueprints and exemptions on every request of the whole app, which cost more CPU than the check
itself (issue 10).
"""

from __future__ import annotations

import math
import time

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from .errors import PolySMSError

KEY_PREFIX = "polysms"


class RateLimited(PolySMSError):
    """429: the project's limit is used up for now; ``Retry-After`` says when to try again."""

    def __init__(self, limit: str, retry_after: int) -> None:
        super().__init__(
            f"rate limit exceeded for this project ({limit}); retry later",
            status=429,
            headers={"Retry-After": str(retry_after)},
        )


class ProjectRateLimit:
    """``POLYSMS_RATE_LIMIT`` per project, counted in ``POLYSMS_RATE_LIMIT_STORAGE_URL``."""

    def __init__(self, limit: str, storage_url: str) -> None:
        self.items = parse_many(limit)
        self.storage = storage_from_string(storage_url)
        self.strategy = FixedWindowRateLimiter(self.storage)

    def hit(self, project_id: str) -> None:
        """Count one request of the project; raise :class:`RateLimited` when over a limit."""
        key = "project:" + project_id
        for item in self.items:
            if not self.strategy.hit(item, KEY_PREFIX, key):
                # Only on a 429: when the window that is full starts again.
                reset = self.strategy.get_window_stats(item, KEY_PREFIX, key).reset_time
                retry_after = max(1, math.ceil(reset - time.time()))
                raise RateLimited(str(item), min(retry_after, item.get_expiry()))

    def reset(self) -> None:
        """Forget every count (tests)."""
        self.storage.reset()
