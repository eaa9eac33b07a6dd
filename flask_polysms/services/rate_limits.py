"""Per-project limits: the outbound limit (``POLYSMS_RATE_LIMIT``) and the request budget of every
authenticated route (``POLYSMS_READ_RATE_LIMIT``).

They run on the ``limits`` library, the engine under flask-limiter: the same limit strings, the same
storages (``memory://`` per process, ``redis://`` shared by every process) and flask-limiter's
default fixed-window strategy. Each is checked once, right after authentication, keyed on the
authenticated project (never on a raw header). flask-limiter's request middleware resolved routes,
blueprints and exemptions on every request of the whole app, which cost more CPU than the check
itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from limits import parse_many
from limits.storage import RedisStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from ..errors import PolySMSError

KEY_PREFIX = "polysms"

log = logging.getLogger("flask_polysms.rate_limits")

#: Seconds a limit's Redis may take to accept a connection, then to answer, before the request
#: goes on uncounted (a URL's own ``socket_timeout``/``socket_connect_timeout`` win).
STORAGE_TIMEOUT = 2.0
#: While a storage stays down, its warning is repeated at most this often (seconds).
OUTAGE_WARN_EVERY = 60.0


def limit_storage(url: str) -> Storage:
    """The ``limits`` storage of ``url``; a Redis one with bounded timeouts, so that a Redis that
    does not answer (a host gone from the network) costs a request seconds, not minutes."""
    options: dict[str, Any] = {}
    if url.split("://", 1)[0] in ("redis", "rediss", "redis+unix"):
        options = {"socket_connect_timeout": STORAGE_TIMEOUT, "socket_timeout": STORAGE_TIMEOUT}
    return storage_from_string(url, **options)


class StorageOutage:
    """Logs that a limit goes uncounted because its storage is down: a warning when it starts,
    again at most every OUTAGE_WARN_EVERY seconds with how many checks went uncounted meanwhile,
    and an info line when counting works again. One line per request would flood the log for
    the whole outage."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._warned_at = 0.0
        self._uncounted = 0

    def failed(self, exc: BaseException) -> None:
        """A check could not reach the storage and let the request through."""
        now = time.monotonic()
        with self._lock:
            self._uncounted += 1
            if self._down_since is not None and now - self._warned_at < OUTAGE_WARN_EVERY:
                return
            first = self._down_since is None
            if first:
                self._down_since = now
            self._warned_at = now
            uncounted, self._uncounted = self._uncounted, 0
        if first:
            log.warning("%s not counted, its storage is unavailable: %s", self.what, exc)
        else:
            log.warning(
                "%s still not counted, its storage is unavailable (%d checks let through in "
                "the last %.0f s): %s",
                self.what,
                uncounted,
                OUTAGE_WARN_EVERY,
                exc,
            )

    def worked(self) -> None:
        """A check reached the storage."""
        if self._down_since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self._down_since is None:
                return
            down_for = time.monotonic() - self._down_since
            self._down_since = None
            uncounted, self._uncounted = self._uncounted, 0
        log.info(
            "%s counted again: its storage answers after %.0f s (%d more checks let through)",
            self.what,
            down_for,
            uncounted,
        )


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
    connection pool); ``what`` names the limit in the 429's detail. ``fail_open`` (the default):
    when the storage cannot be reached, log a warning (see :class:`StorageOutage`) and let the
    request through instead of raising; accepting a message needs the database only.
    """

    def __init__(
        self,
        limit: str,
        storage_url: str | None = None,
        *,
        namespace: str = "project",
        storage: Storage | None = None,
        what: str = "rate limit",
        fail_open: bool = True,
    ) -> None:
        if storage is None and storage_url is None:
            raise ValueError("give storage_url or storage")
        self.items = parse_many(limit)
        self.storage = storage if storage is not None else limit_storage(storage_url)
        self.strategy = FixedWindowRateLimiter(self.storage)
        self.namespace = namespace
        self.what = what
        self.fail_open = fail_open
        self.outage = StorageOutage(what)
        self._count_script: Any = None

    def count_script(self) -> Any:
        """The script of :func:`hit_together`, registered once with this limit's Redis."""
        if self._count_script is None:
            self._count_script = self.storage.get_connection().register_script(_COUNT_IN_ORDER)
        return self._count_script

    def key(self, project_id: str) -> str:
        """The project's identifier in this limit's storage (beside KEY_PREFIX)."""
        return f"{self.namespace}:{project_id}"

    def hit(self, project_id: str) -> None:
        """Count one request of the project; raise :class:`RateLimited` when over a limit."""
        key = self.key(project_id)
        for item in self.items:
            try:
                allowed = self.strategy.hit(item, KEY_PREFIX, key)
            except self.storage.base_exceptions as exc:
                self.uncounted(exc)
                return
            self.outage.worked()
            if not allowed:
                self.refuse(item, key)

    def uncounted(self, exc: BaseException) -> None:
        """The storage could not be reached: raise when the limit fails closed, else log."""
        if not self.fail_open:
            raise exc
        # A limit must not take every route down with its storage: count nothing now.
        self.outage.failed(exc)

    def refuse(self, item: Any, key: str) -> None:
        """Raise the 429 of ``item``, with when its full window starts again."""
        try:
            stats = self.strategy.get_window_stats(item, KEY_PREFIX, key)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        except self.storage.base_exceptions:
            retry_after = item.get_expiry()
        raise RateLimited(str(item), min(retry_after, item.get_expiry()), self.what)

    def reset(self) -> None:
        """Forget every count (tests)."""
        self.storage.reset()


# Counts several fixed-window limits in one Redis call: the keys and expiries the limits library's
# own script uses, and it stops at the first limit over its amount, as hits one after another do
# (a later limit is not counted for a request an earlier one refused).
_COUNT_IN_ORDER = """
for i, key in ipairs(KEYS) do
    local count = redis.call("incrby", key, 1)
    if count == 1 then
        redis.call("expire", key, ARGV[2 * i - 1])
    end
    if count > tonumber(ARGV[2 * i]) then
        return i
    end
end
return 0
"""


def hit_together(project_id: str, limits: Sequence[ProjectRateLimit]) -> None:
    """Count one request of the project against each of ``limits``, in order, as their
    :meth:`~ProjectRateLimit.hit` calls one after another would (the first limit over its amount
    raises :class:`RateLimited` and the later ones are not counted), in one round trip when they
    share one plain Redis storage."""
    storage = limits[0].storage
    # A cluster or sentinel storage may hold the keys on different nodes: one call each there.
    if (
        len(limits) == 1
        or type(storage) is not RedisStorage
        or any(limit.storage is not storage for limit in limits)
    ):
        for limit in limits:
            limit.hit(project_id)
        return
    checks = [(limit, item, limit.key(project_id)) for limit in limits for item in limit.items]
    keys = [storage.prefixed_key(item.key_for(KEY_PREFIX, key)) for _, item, key in checks]
    args: list[int] = []
    for _, item, _ in checks:
        args += [item.get_expiry(), item.amount]
    try:
        refused = int(limits[0].count_script()(keys=keys, args=args))
    except storage.base_exceptions as exc:
        for limit in limits:
            limit.uncounted(exc)
        return
    for limit in limits:
        limit.outage.worked()
    if refused:
        limit, item, key = checks[refused - 1]
        limit.refuse(item, key)


# Takes an entry in several moving windows in one Redis call: the limits library's own moving-window
# algorithm (a list of timestamps per key, as its acquire script keeps them) for one entry each,
# stopping at the first window that is full, as hits one after another do.
_ACQUIRE_IN_ORDER = """
local timestamp = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
    local limit = tonumber(ARGV[2 * i])
    local expiry = tonumber(ARGV[2 * i + 1])
    local entry = redis.call("lindex", key, limit - 1)
    if entry and tonumber(entry) >= timestamp - expiry then
        return i
    end
    redis.call("lpush", key, timestamp)
    redis.call("ltrim", key, 0, limit - 1)
    redis.call("expire", key, expiry)
end
return 0
"""


class MovingWindows:
    """Moving-window limits (the limits library's ``MovingWindowRateLimiter``) hit in order, in
    one round trip on a plain Redis storage; one hit each elsewhere."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.strategy = MovingWindowRateLimiter(storage)
        self._script: Any = None

    def first_refused(self, checks: Sequence[tuple[Any, tuple[str, ...]]]) -> int | None:
        """Take one entry in each ``(item, identifiers)`` window, in order; the index of the
        first one that is full (the later ones are not taken), None when all took it. Raises the
        storage's errors (``storage.base_exceptions``)."""
        if type(self.storage) is not RedisStorage:
            for index, (item, identifiers) in enumerate(checks):
                if not self.strategy.hit(item, *identifiers):
                    return index
            return None
        if self._script is None:
            self._script = self.storage.get_connection().register_script(_ACQUIRE_IN_ORDER)
        keys = [self.storage.prefixed_key(item.key_for(*ids)) for item, ids in checks]
        args: list[float] = [time.time()]
        for item, _ in checks:
            args += [item.amount, item.get_expiry()]
        refused = int(self._script(keys=keys, args=args))
        return refused - 1 if refused else None
