"""The ``rq`` scheduler: jobs on Redis through RQ, timers with ``enqueue_at``."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...clock import as_utc, utcnow
from .base import (
    LANES,
    LOST,
    MAIN_LANE,
    MISSING,
    PENDING,
    RUNNING,
    UNSURE,
    JobRunner,
    Scheduler,
)
from .serializer import RUN_JOB, JobSerializer

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("flask_polysms.scheduler")


def _description(job: str, args: tuple) -> str:
    # RQ's default repeats the call (~80 bytes): over the compact limit, see JobSerializer.
    return f"polysms {job} {' '.join(map(str, args))}"[:64]


#: Seconds to wait for Redis to accept a connection (a URL's own ``socket_connect_timeout``
#: wins): a Redis host gone from the network costs a request seconds, not the system's minutes.
REDIS_CONNECT_TIMEOUT = 5.0
#: The longest the sweep runs apart inside workers (a smaller POLYSMS_SWEEP_INTERVAL wins).
WORKER_SWEEP_EVERY = 5.0


def lane_queue_name(queue_name: str, lane: str) -> str:
    """The RQ queue of a lane: the main lane's is ``POLYSMS_QUEUE_NAME`` itself."""
    return queue_name if lane == MAIN_LANE else f"{queue_name}-{lane}"


class RQScheduler(Scheduler):
    """Jobs on Redis through RQ, a queue per lane; timers through ``enqueue_at`` and the
    worker's scheduler.

    Every ``flask polysms worker`` also runs a :class:`WorkerKeeper` thread: it reports the
    worker alive and what it runs, moves due timed jobs when no RQ scheduler does, and has the
    sweep run every few seconds (``sweep_interval``), so work whose job Redis lost is enqueued
    again within seconds.
    """

    def __init__(
        self,
        app: Flask,
        redis_url: str,
        queue_name: str,
        sweep_interval: float = WORKER_SWEEP_EVERY,
        run_job: JobRunner | None = None,
        sweep_job: str | None = None,
    ) -> None:
        super().__init__(app, run_job)
        self.sweep_job = sweep_job
        from redis import Redis
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
        from rq import Queue

        self.connection = Redis.from_url(redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT)
        # What "Redis unreachable" raises (see _outage_tolerated); imported once, not per job.
        self._outages = (RedisConnectionError, RedisTimeoutError)
        #: The queue of each lane (``queue`` is the main lane's): ``flask polysms worker`` takes
        #: jobs from all of them unless told which (``--lane``).
        self.queues = {
            lane: Queue(
                lane_queue_name(queue_name, lane),
                connection=self.connection,
                serializer=JobSerializer,
            )
            for lane in LANES
        }
        self.queue = self.queues[MAIN_LANE]
        self.sweep_interval = sweep_interval
        self.keys = KeeperKeys(queue_name)
        self._beat: Any = None  # the beat's script, registered on first use
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

    def broker_available(self) -> bool:
        """Whether Redis answers a PING now."""
        try:
            return bool(self.connection.ping())
        except self._outages:
            return False

    def outage(self, exc: BaseException) -> bool:
        return isinstance(exc, self._outages)

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

    def _enqueue(
        self,
        job: str,
        *args: Any,
        job_id: str | None = None,
        lane: str = MAIN_LANE,
        pipeline: Any = None,
    ) -> None:
        with self._outage_tolerated(f"job {job}"):
            self._put(job, args, job_id, lane=lane, pipeline=pipeline)

    def _put(
        self, job: str, args: tuple, job_id: str | None, lane: str = MAIN_LANE, **options: Any
    ) -> None:
        # result_ttl=0: results are never read, and keeping them would cost Redis memory per job.
        self.queues[lane].enqueue(
            RUN_JOB,
            job,
            *args,
            job_id=job_id,
            result_ttl=0,
            description=_description(job, args),
            **options,
        )

    def _enqueue_at(
        self,
        when: datetime,
        job: str,
        *args: Any,
        job_id: str | None = None,
        lane: str = MAIN_LANE,
        pipeline: Any = None,
        tolerate: bool = True,
    ) -> None:
        if pipeline is None and self._is_scheduled(job_id, when):
            return
        # Aware UTC: RQ reads naive datetimes as the server's local time.
        outage = self._outage_tolerated if tolerate else _raising
        with outage(f"job {job} at {when.isoformat()}"):
            self.queues[lane].enqueue_at(
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
            for when, job, args, job_id, lane in held:
                if when is None:
                    self._enqueue(job, *args, job_id=job_id, lane=lane, pipeline=pipe)
                elif not self._is_scheduled(job_id, when) and (job_id, when) not in timed:
                    self._enqueue_at(when, job, *args, job_id=job_id, lane=lane, pipeline=pipe)
                    if job_id is not None:
                        timed.append((job_id, when))
            if pipe.command_stack:
                pipe.execute()
            self._remember(timed)  # only once Redis has them

    # -- what the sweep asks ----------------------------------------------------------------------
    def check_jobs(self, job_ids: Iterable[str]) -> dict[str, str]:
        """What Redis says about each job (see PENDING ... UNSURE), in two round trips at most.

        Liveness comes from the keepers' reports (:class:`WorkerKeeper`), not from RQ's worker
        records, which outlive a killed worker by minutes. A job RQ marks started on a worker
        no keeper ever reported is UNSURE while RQ still has that worker, and LOST once RQ has
        forgotten it.
        """
        from rq.job import Job
        from rq.worker import Worker

        ids = list(dict.fromkeys(job_ids))
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(Job.key_for(job_id), "status", "worker_name")
            pipe.zrange(self.keys.workers, 0, -1, withscores=True)
            pipe.hgetall(self.keys.running)
            pipe.get(self.keys.since)
            pipe.time()  # the reports are in Redis's time (see beat)
            *found, beats, running, since, (seconds, micros) = pipe.execute()
        now = seconds + micros / 1e6
        seen = {_text(name): score for name, score in beats}
        live = {name for name, at in seen.items() if at >= now - ALIVE_TTL}
        reported = {
            job_id
            for name, jobs in running.items()
            if _text(name) in live
            for job_id in _text(jobs).split(",")
        }
        # Every live worker has reported since Redis last lost its keys.
        settled = since is not None and now - float(since) >= ALIVE_TTL
        verdicts: dict[str, str] = {}
        unknown: dict[str, str] = {}  # job id -> a worker no keeper reported
        for job_id, (status, worker) in zip(ids, found, strict=True):
            status, worker = _text(status), _text(worker)
            if job_id in reported:
                verdicts[job_id] = RUNNING
            elif status is None:
                verdicts[job_id] = LOST if settled else MISSING
            elif status in _WAITING_STATUSES:
                verdicts[job_id] = PENDING
            elif status != "started":
                verdicts[job_id] = LOST  # it ended, and its work is still not done
            elif worker in live:
                verdicts[job_id] = RUNNING
            elif worker in seen:
                verdicts[job_id] = LOST  # its worker stopped reporting: it died
            elif worker:
                unknown[job_id] = worker
            else:
                verdicts[job_id] = LOST
        if unknown:
            prefix = Worker.redis_worker_namespace_prefix
            with self.connection.pipeline(transaction=False) as pipe:
                for worker in unknown.values():
                    pipe.exists(prefix + worker)
                exists = pipe.execute()
            for job_id, known in zip(unknown, exists, strict=True):
                verdicts[job_id] = UNSURE if known else LOST
        return verdicts

    def requeue(
        self,
        job: str,
        *args: Any,
        job_id: str,
        when: datetime | None = None,
        stale: Iterable[str] = (),
    ) -> bool:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            for old in stale:
                try:
                    # Out of every registry (a dead worker's "started" entry included), so its
                    # id can be used again and RQ's own clean-up never touches the new job.
                    Job.fetch(old, connection=self.connection, serializer=JobSerializer).delete()
                except NoSuchJobError:
                    # Absent, or a hash RQ cannot read (what a heartbeat racing a job's end
                    # leaves): nothing of it can run.
                    self.connection.delete(Job.key_for(old))
            if when is None:
                self._put(job, args, job_id)
            else:
                with self._scheduled_lock:  # remembered, but Redis lost it: schedule it again
                    self._scheduled.pop(job_id, None)
                self._enqueue_at(when, job, *args, job_id=job_id, pipeline=None, tolerate=False)
        except self._outages as exc:
            log.warning("Redis unreachable, job %s not enqueued again: %s", job_id, exc)
            return False
        return True

    def move_due_jobs(self) -> int:
        """Move timed jobs whose time has come from RQ's scheduled registries to their queues,
        as RQ's scheduler does, for each lane's queue that no RQ scheduler holds the lock of.

        RQ's scheduler process dies with its Redis connection and its worker starts it again
        only at its next maintenance (10 minutes); a killed worker's lock stops the others'
        schedulers for a minute. Retries and wake-ups must not wait for either. A short lock of
        our own keeps two keepers from moving the same jobs at once (a job moved twice runs
        twice, which every job survives, but costs a run).
        """
        from rq.job import Job
        from rq.registry import ScheduledJobRegistry
        from rq.scheduler import RQScheduler as RQOwnScheduler

        connection = self.connection
        with connection.pipeline(transaction=False) as pipe:
            for queue in self.queues.values():
                pipe.exists(RQOwnScheduler.get_locking_key(queue.name))
            locked = pipe.execute()
        unattended = [q for q, held in zip(self.queues.values(), locked, strict=True) if not held]
        if not unattended:
            return 0
        if not connection.set(self.keys.moving, "1", nx=True, px=int(MOVE_LOCK * 1000)):
            return 0
        moved = 0
        for queue in unattended:
            registry = ScheduledJobRegistry(queue=queue)
            due = registry.get_jobs_to_schedule()
            if not due:
                continue
            jobs = Job.fetch_many(due, connection=connection, serializer=JobSerializer)
            with connection.pipeline() as pipe:
                for job_id, job in zip(due, jobs, strict=True):
                    if job is not None:
                        queue.enqueue_job(job, pipeline=pipe)
                    registry.remove(job_id, pipeline=pipe)
                pipe.execute()
            moved += sum(job is not None for job in jobs)
        if moved:
            log.info("%d due timed jobs moved to their queues (no RQ scheduler held them)", moved)
        else:  # nothing was due: another keeper need not wait for the lock to expire
            connection.delete(self.keys.moving)
        return moved

    # -- what the keeper does ---------------------------------------------------------------------
    def beat(self, worker_name: str, running: Iterable[str]) -> None:
        """Report a worker alive now, and the jobs it runs (see :class:`WorkerKeeper`), in
        Redis's own time: the hosts' clocks never have to agree."""
        if self._beat is None:
            self._beat = self.connection.register_script(BEAT_SCRIPT)
        self._beat(
            keys=[self.keys.workers, self.keys.running, self.keys.since],
            args=[worker_name, ",".join(running)],
        )

    def forget_worker(self, worker_name: str) -> None:
        """A worker that stops cleanly leaves the reports (it finished its job first)."""
        with self.connection.pipeline() as pipe:
            pipe.zrem(self.keys.workers, worker_name)
            pipe.hdel(self.keys.running, worker_name)
            pipe.execute()

    def prune_workers(self) -> None:
        """Forget workers silent for a day (killed ones never leave by themselves)."""
        seconds, _ = self.connection.time()
        gone = self.connection.zrangebyscore(self.keys.workers, 0, seconds - PRUNE_AFTER)
        if gone:
            with self.connection.pipeline() as pipe:
                pipe.zrem(self.keys.workers, *gone)
                pipe.hdel(self.keys.running, *gone)
                pipe.execute()

    def request_sweep(self, worker_name: str) -> bool:
        """Enqueue the sweep at the front of the queue, at most once per ``sweep_interval``
        across every worker, and not while an earlier one still waits; True when enqueued.
        Never without a sweep job (``sweep_job``)."""
        if self.sweep_job is None:
            return False
        if not self.connection.set(
            self.keys.sweep, worker_name, nx=True, px=max(1, int(self.sweep_interval * 1000))
        ):
            return False
        from rq.job import Job

        if _text(self.connection.hget(Job.key_for(SWEEP_JOB_ID), "status")) == "queued":
            return False
        self._put(self.sweep_job, (), SWEEP_JOB_ID, at_front=True)
        return True


@contextmanager
def _raising(what: str) -> Iterator[None]:
    yield


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


#: RQ statuses of a job that has not run yet and will.
_WAITING_STATUSES = frozenset(
    {"created", "queued", "deferred", "scheduled", "rate_limited", "ready_to_enqueue"}
)
#: A worker whose keeper has not reported for this long is dead (seconds).
ALIVE_TTL = 10.0
#: How long one keeper may move due timed jobs before another may (seconds).
MOVE_LOCK = 2.0
#: A worker silent this long is forgotten (seconds).
PRUNE_AFTER = 86400.0
#: The sweep's job id: one waiting at a time.
SWEEP_JOB_ID = "polysms-sweep"


#: A keeper's report: the worker's time (Redis's clock), the jobs it runs, and the first report
#: since Redis lost its keys. KEYS: workers, running, since; ARGV: worker name, job ids or "".
BEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
else
    redis.call('HDEL', KEYS[2], ARGV[1])
end
redis.call('SET', KEYS[3], now, 'NX')
return 1
"""


class KeeperKeys:
    """The Redis keys of the keepers of one queue."""

    def __init__(self, queue_name: str) -> None:
        prefix = f"polysms:{queue_name}"
        self.workers = f"{prefix}:workers"  # sorted set: worker name -> time of its last report
        self.running = f"{prefix}:running"  # hash: worker name -> the job ids it runs
        self.since = f"{prefix}:since"  # the first report since Redis lost its keys
        self.moving = f"{prefix}:moving"  # held while a keeper moves due timed jobs
        self.sweep = f"{prefix}:sweep"  # held for a sweep interval by the keeper that asked
