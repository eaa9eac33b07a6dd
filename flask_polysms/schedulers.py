"""The Scheduler port: run a job now or at a time.

Jobs are named (see :mod:`flask_polysms.jobs`) and take plain, JSON-able arguments, so every
scheduler can hand them across threads or processes. Three implementations:

- ``manual``: runs jobs inline; timed jobs wait until ``run_due(now)`` (tests, under freezegun);
- ``thread``: a background thread runs jobs and timers in-process (the embedded default);
- ``rq``: jobs on Redis through RQ, timers with ``enqueue_at`` and the worker's built-in scheduler.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import pickle
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .clock import as_utc, utcnow

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("flask_polysms.scheduler")


class Scheduler(ABC):
    """Runs named jobs now (``enqueue``) or later (``enqueue_at``)."""

    #: Whether ``enqueue`` runs the job before it returns (so its outcome can be read at once).
    inline = False

    def __init__(self, app: Flask) -> None:
        # The app object is needed to push a context around each job; the scheduler lives in the
        # app's extension state, so this is one app per scheduler.
        self.app = app
        self._held = threading.local()

    def enqueue(self, job: str, *args: Any) -> None:
        """Run the job as soon as possible."""
        held = getattr(self._held, "jobs", None)
        if held is not None:
            held.append((None, job, args, None))
        else:
            self._enqueue(job, *args)

    def enqueue_at(self, when: datetime, job: str, *args: Any, job_id: str | None = None) -> None:
        """Run the job at ``when``; a later call with the same ``job_id`` replaces the earlier."""
        held = getattr(self._held, "jobs", None)
        if held is not None:
            held.append((when, job, args, job_id))
        else:
            self._enqueue_at(when, job, *args, job_id=job_id)

    @contextmanager
    def holding(self) -> Iterator[list]:
        """Hold the jobs this thread enqueues inside the block, and hand them over together when
        the outermost block ends (RQ: one Redis round trip); drop them if it raises.

        Used around a Store transaction, so that no job runs before the rows it reads are
        committed. Yields the list of held jobs: a caller that runs its transaction again cuts
        the list back to its length before the first try (:func:`flask_polysms.units.unit_of_work`).
        """
        held = getattr(self._held, "jobs", None)
        if held is not None:  # nested: the outermost block hands everything over
            yield held
            return
        held = self._held.jobs = []
        try:
            yield held
        finally:
            self._held.jobs = None
        if held:
            self._hand_over(held)

    def _hand_over(self, held: list) -> None:
        for when, job, args, job_id in held:
            if when is None:
                self._enqueue(job, *args)
            else:
                self._enqueue_at(when, job, *args, job_id=job_id)

    @abstractmethod
    def _enqueue(self, job: str, *args: Any) -> None:
        """Run the job as soon as possible (not held)."""

    @abstractmethod
    def _enqueue_at(self, when: datetime, job: str, *args: Any, job_id: str | None = None) -> None:
        """Run the job at ``when`` (not held)."""

    def run_due(self, now: datetime) -> int:
        """Run what is due at ``now`` (manual only); returns how many session timers fired."""
        return 0

    def start(self) -> None:  # noqa: B027 - nothing to start for inline schedulers
        """Start background work, if any."""

    def stop(self) -> None:  # noqa: B027
        """Stop background work, if any."""

    def _run(self, job: str, args: tuple) -> Any:
        from .jobs import run_job_in_app

        return run_job_in_app(self.app, job, *args)


class ManualScheduler(Scheduler):
    """Deterministic scheduler for tests: immediate jobs inline, timed jobs on ``run_due``."""

    inline = True

    def __init__(self, app: Flask) -> None:
        super().__init__(app)
        self._timed: dict[str, tuple[datetime, str, tuple]] = {}
        self._counter = itertools.count()
        self._lock = threading.RLock()

    def _enqueue(self, job: str, *args: Any) -> None:
        self._run(job, args)

    def _enqueue_at(self, when: datetime, job: str, *args: Any, job_id: str | None = None) -> None:
        with self._lock:
            key = job_id or f"job-{next(self._counter)}"
            self._timed[key] = (as_utc(when), job, args)

    def pending(self) -> list[tuple[datetime, str, tuple]]:
        """The timed jobs waiting, earliest first."""
        with self._lock:
            return sorted(self._timed.values(), key=lambda item: item[0])

    def run_due(self, now: datetime) -> int:
        fired = 0
        while True:
            with self._lock:
                due = sorted(
                    (item for item in self._timed.items() if item[1][0] <= now),
                    key=lambda item: item[1][0],
                )
                if not due:
                    return fired
                key, (_, job, args) = due[0]
                del self._timed[key]
            # A job may schedule again (even under the same id): it runs outside the lock.
            result = self._run(job, args)
            if job in ("timer", "wake"):
                fired += int(result or 0)


class ThreadScheduler(Scheduler):
    """In-process background loop: immediate jobs and timers in one daemon thread.

    Timed jobs live in memory only; that is safe because every deadline also lives in the Store and
    the loop runs the sweep every ``POLYSMS_SWEEP_INTERVAL``, so a restart loses nothing.
    """

    def __init__(self, app: Flask, sweep_interval: float = 60.0) -> None:
        super().__init__(app)
        self._heap: list[tuple[datetime, int, str, str, tuple]] = []
        self._live_ids: dict[str, int] = {}
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._sweep_interval = sweep_interval

    def _push(self, when: datetime, job: str, args: tuple, job_id: str | None) -> None:
        with self._cond:
            seq = next(self._counter)
            key = job_id or f"job-{seq}"
            self._live_ids[key] = seq  # an older entry under this id becomes stale and is skipped
            heapq.heappush(self._heap, (as_utc(when), seq, key, job, args))
            self._cond.notify()
        self.start()

    def _enqueue(self, job: str, *args: Any) -> None:
        self._push(utcnow(), job, args, None)

    def _enqueue_at(self, when: datetime, job: str, *args: Any, job_id: str | None = None) -> None:
        self._push(when, job, args, job_id)

    def start(self) -> None:
        # Started lazily, by the first job or the first request: under `flask run --debug` the
        # reloader's parent process loads the app but never serves, so it never runs timers (they
        # would fire twice).
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(
                target=self._loop, name="polysms-scheduler", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def _loop(self) -> None:
        next_sweep = 0.0
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = utcnow()
                if self._heap and self._heap[0][0] <= now:
                    _, seq, key, job, args = heapq.heappop(self._heap)
                    if self._live_ids.get(key) != seq:
                        continue
                    del self._live_ids[key]
                else:
                    wait = self._sweep_interval
                    if self._heap:
                        wait = min(wait, (self._heap[0][0] - now).total_seconds())
                    sweep_due = now.timestamp() >= next_sweep
                    if not sweep_due:
                        self._cond.wait(timeout=max(0.01, min(wait, next_sweep - now.timestamp())))
                        continue
                    job, args = "sweep", ()
                    next_sweep = now.timestamp() + self._sweep_interval
            try:
                self._run(job, args)
            except Exception:  # one failing job must not stop the loop
                log.exception("polysms job %s failed", job)


RUN_JOB = "flask_polysms.jobs.run_job"


class JobSerializer:
    """RQ's pickle serializer, except for our own calls ``run_job(name, *ids)``: those are written
    as their arguments joined by a separator, some 45 bytes instead of about 100.

    Every value of an RQ job's hash then stays within Redis's compact (listpack) limit of 64
    bytes, and a waiting job (one per open session: its wake-up) takes about 500 bytes of Redis
    instead of 1,250. Jobs written by pickle, or by an earlier version, still load. Workers need
    it too: ``flask polysms worker`` passes it (``rq worker --serializer
    flask_polysms.schedulers.JobSerializer`` otherwise).
    """

    MARK = b"\x00polysms\x1f"  # no pickle starts with a NUL byte
    SEP = "\x1f"

    @classmethod
    def dumps(cls, obj: Any) -> bytes:
        if (
            isinstance(obj, tuple)
            and len(obj) == 4
            and obj[0] == RUN_JOB
            and obj[1] is None
            and not obj[3]
            and all(isinstance(a, str) and cls.SEP not in a for a in obj[2])
        ):
            return cls.MARK + cls.SEP.join(obj[2]).encode()
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def loads(cls, data: bytes) -> Any:
        if data.startswith(cls.MARK):
            return RUN_JOB, None, tuple(data[len(cls.MARK) :].decode().split(cls.SEP)), {}
        return pickle.loads(data)


def _description(job: str, args: tuple) -> str:
    # RQ's default repeats the call (~80 bytes): over the compact limit, see JobSerializer.
    return f"polysms {job} {' '.join(map(str, args))}"[:64]


class RQScheduler(Scheduler):
    """Jobs on Redis through RQ; timers through ``enqueue_at`` and the worker's scheduler."""

    def __init__(self, app: Flask, redis_url: str, queue_name: str) -> None:
        super().__init__(app)
        from redis import Redis
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
        from rq import Queue

        self.connection = Redis.from_url(redis_url)
        # What "Redis unreachable" raises (see _outage_tolerated); imported once, not per job.
        self._outages = (RedisConnectionError, RedisTimeoutError)
        self.queue = Queue(queue_name, connection=self.connection, serializer=JobSerializer)
        # Timed jobs this process has handed to Redis (id -> time), newest last: the shared
        # wake-up of a second is scheduled once, not once per session opened in it.
        self._scheduled: OrderedDict[str, datetime] = OrderedDict()
        self._scheduled_lock = threading.Lock()

    SCHEDULED_MEMORY = 256

    def _is_scheduled(self, job_id: str | None, when: datetime) -> bool:
        if job_id is None:
            return False
        with self._scheduled_lock:
            return self._scheduled.get(job_id) == when and as_utc(when) > utcnow()

    def _remember(self, timed: list[tuple[str, datetime]]) -> None:
        with self._scheduled_lock:
            for job_id, when in timed:
                self._scheduled[job_id] = when
                self._scheduled.move_to_end(job_id)
            while len(self._scheduled) > self.SCHEDULED_MEMORY:
                self._scheduled.popitem(last=False)

    @contextmanager
    def _outage_tolerated(self, what: str) -> Iterator[None]:
        """Redis unreachable: log and go on instead of failing work already committed.

        The Store holds every send's and timer's reason to run (a ``queued`` message, a session
        deadline), and `flask polysms sweep` runs them from there; raising here would answer 500
        to a request whose rows are written, and its retry would send twice.
        """
        try:
            yield
        except self._outages as exc:
            log.warning("Redis unreachable, %s not enqueued (the sweep recovers it): %s", what, exc)

    def _enqueue(self, job: str, *args: Any, pipeline: Any = None) -> None:
        # result_ttl=0: results are never read, and keeping them would cost Redis memory per job.
        with self._outage_tolerated(f"job {job}"):
            self.queue.enqueue(
                RUN_JOB,
                job,
                *args,
                result_ttl=0,
                description=_description(job, args),
                pipeline=pipeline,
            )

    def _enqueue_at(
        self, when: datetime, job: str, *args: Any, job_id: str | None = None, pipeline: Any = None
    ) -> None:
        if pipeline is None and self._is_scheduled(job_id, when):
            return
        # Aware UTC: RQ reads naive datetimes as the server's local time.
        with self._outage_tolerated(f"job {job} at {when.isoformat()}"):
            self.queue.enqueue_at(
                as_utc(when),
                RUN_JOB,
                job,
                *args,
                job_id=job_id,
                result_ttl=0,
                description=_description(job, args),
                pipeline=pipeline,
            )
            if pipeline is None and job_id is not None:
                self._remember([(job_id, when)])

    def _hand_over(self, held: list) -> None:
        # Every held job in one MULTI/EXEC round trip instead of one or two round trips each.
        timed = []
        with self._outage_tolerated(f"{len(held)} jobs"), self.connection.pipeline() as pipe:
            pipe.multi()  # before the first command: RQ's enqueue calls multi() itself otherwise
            for when, job, args, job_id in held:
                if when is None:
                    self._enqueue(job, *args, pipeline=pipe)
                elif not self._is_scheduled(job_id, when) and (job_id, when) not in timed:
                    self._enqueue_at(when, job, *args, job_id=job_id, pipeline=pipe)
                    if job_id is not None:
                        timed.append((job_id, when))
            if pipe.command_stack:
                pipe.execute()
            self._remember(timed)  # only once Redis has them


def create_scheduler(app: Flask, settings) -> Scheduler:
    if settings.scheduler == "manual":
        return ManualScheduler(app)
    if settings.scheduler == "thread":
        return ThreadScheduler(app, sweep_interval=settings.sweep_interval.total_seconds())
    return RQScheduler(app, settings.redis_url, settings.queue_name)
