"""The Scheduler port: run a job now or at a time.

Jobs are named (see :mod:`flask_polysms.jobs`) and take plain, JSON-able arguments, so every
scheduler can hand them across threads or processes. Three implementations:

- ``manual``: runs jobs inline; timed jobs wait until ``run_due(now)`` (tests, under freezegun);
- ``thread``: a background thread runs jobs and timers in-process (the embedded default);
- ``rq``: jobs on Redis through RQ, timers with ``enqueue_at`` and the worker's built-in scheduler.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..clock import as_utc, utcnow

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("flask_polysms.scheduler")

#: How a scheduler runs one named job in its app: ``run_job(app, name, *args)``. Schedulers run
#: jobs without knowing them; the extension hands them :func:`flask_polysms.jobs.run_job_in_app`.
JobRunner = Callable[..., Any]


# -- job ids ---------------------------------------------------------------------------------------
# A job that works on one message has an id the Store can name: the sweep asks the broker about
# exactly that job (is it waiting, running on a live worker, or lost?) instead of waiting
# POLYSMS_STUCK_AFTER to guess.


def send_job_id(message_id: str, attempt: int) -> str:
    """The id of the job that makes a message's send attempt ``attempt + 1``: ``send-<id>-0``
    for its first send, ``send-<id>-N`` for the retry after attempt N (what the send job
    schedules) or the send again after a lost attempt N (what the sweep enqueues)."""
    return f"send-{message_id}-{attempt}"


def agent_job_id(message_id: str) -> str:
    """The id of the job that runs the agent's turn on one inbound message."""
    return f"agent-{message_id}"


def default_job_id(job: str, args: tuple) -> str | None:
    """The id of an immediate job enqueued without one: a message's first send, an agent turn."""
    if job == "send" and len(args) == 1:
        return send_job_id(args[0], 0)
    if job == "agent" and len(args) == 2:
        return agent_job_id(args[1])
    return None


#: What the broker says about a job the Store expects (see :meth:`Scheduler.check_jobs`):
#: waiting to run (queued, scheduled, deferred);
PENDING = "pending"
#: started on a worker known to be alive, or reported running by one;
RUNNING = "running"
#: ended (finished, failed, stopped, canceled) or started on a worker that died, or not in the
#: broker while every live worker has reported what it runs: it will never run;
LOST = "lost"
#: not in the broker, and the workers may not all have reported what they run yet (the broker
#: was emptied moments ago): lost unless a worker is running it;
MISSING = "missing"
#: started on a worker the broker knows but this package does not watch: ask again later.
UNSURE = "unsure"


class Scheduler(ABC):
    """Runs named jobs now (``enqueue``) or later (``enqueue_at``)."""

    #: Whether ``enqueue`` runs the job before it returns (so its outcome can be read at once).
    inline = False

    def __init__(self, app: Flask, run_job: JobRunner | None = None) -> None:
        # The app is needed to push a context around each job; the scheduler lives in the app's
        # extension state (one app per scheduler) and holds it weakly, so a background thread
        # never keeps an app alive after everything else has let it go.
        self._app_ref = weakref.ref(app)
        self._held = threading.local()
        self._run_job = run_job

    @property
    def app(self) -> Flask:
        """The app whose jobs this scheduler runs."""
        app = self._app_ref()
        if app is None:
            raise RuntimeError("the app of this scheduler is gone")
        return app

    def enqueue(self, job: str, *args: Any, job_id: str | None = None) -> None:
        """Run the job as soon as possible; ``job_id`` names it for the broker (RQ), which
        otherwise names a message's first send and an agent turn itself
        (:func:`default_job_id`)."""
        held = getattr(self._held, "jobs", None)
        if held is not None:
            held.append((None, job, args, job_id))
        else:
            self._enqueue(job, *args, job_id=job_id)

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
        the list back to its length before the first try
        (:func:`flask_polysms.services.units.unit_of_work`).
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
                self._enqueue(job, *args, job_id=job_id)
            else:
                self._enqueue_at(when, job, *args, job_id=job_id)

    @abstractmethod
    def _enqueue(self, job: str, *args: Any, job_id: str | None = None) -> None:
        """Run the job as soon as possible (not held)."""

    @abstractmethod
    def _enqueue_at(self, when: datetime, job: str, *args: Any, job_id: str | None = None) -> None:
        """Run the job at ``when`` (not held)."""

    def run_due(self, now: datetime) -> int:
        """Run the timed jobs due at ``now`` (manual only); returns how many jobs ran."""
        return 0

    def start(self) -> None:  # noqa: B027 - nothing to start for inline schedulers
        """Start background work, if any."""

    def stop(self) -> None:  # noqa: B027
        """Stop background work, if any."""

    def broker_available(self) -> bool | None:
        """Whether the broker this scheduler needs answers now; None when it needs none."""
        return None

    def outage(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the broker cannot be reached (try again later)."""
        return False

    def forget_pending(self) -> None:  # noqa: B027 - nothing kept by schedulers that hand jobs on
        """Drop the timed jobs kept in this process (between tests)."""

    # -- what the sweep asks (see flask_polysms.services.lifecycle.run_sweep) ----------------------
    def check_jobs(self, job_ids: Iterable[str]) -> dict[str, str] | None:
        """What the broker says about each job (PENDING, RUNNING, LOST, MISSING or UNSURE);
        None when this scheduler cannot tell (its jobs live in one process's memory)."""
        return None

    def requeue(
        self,
        job: str,
        *args: Any,
        job_id: str,
        when: datetime | None = None,
        stale: Iterable[str] = (),
    ) -> bool:
        """Enqueue a job again under ``job_id`` (at ``when``, or now), first discarding the
        ``stale`` jobs the broker still holds for the same work; False when the broker could not
        be reached (nothing enqueued)."""
        if when is None:
            self.enqueue(job, *args, job_id=job_id)
        else:
            self.enqueue_at(when, job, *args, job_id=job_id)
        return True

    def move_due_jobs(self) -> int:
        """Hand the broker's timed jobs whose time has come to the workers when nothing else
        does (no broker scheduler holds its lock); how many moved."""
        return 0

    def _run(self, job: str, args: tuple) -> Any:
        if self._run_job is None:
            raise RuntimeError("this scheduler was given no run_job: it cannot run jobs in-process")
        return self._run_job(self.app, job, *args)


class ManualScheduler(Scheduler):
    """Deterministic scheduler for tests: immediate jobs inline, timed jobs on ``run_due``."""

    inline = True

    def __init__(self, app: Flask, run_job: JobRunner | None = None) -> None:
        super().__init__(app, run_job)
        self._timed: dict[str, tuple[datetime, str, tuple]] = {}
        self._counter = itertools.count()
        self._lock = threading.RLock()

    def _enqueue(self, job: str, *args: Any, job_id: str | None = None) -> None:
        self._run(job, args)

    def forget_pending(self) -> None:
        with self._lock:
            self._timed.clear()

    def _enqueue_at(self, when: datetime, job: str, *args: Any, job_id: str | None = None) -> None:
        with self._lock:
            key = job_id or f"job-{next(self._counter)}"
            self._timed[key] = (as_utc(when), job, args)

    def pending(self) -> list[tuple[datetime, str, tuple]]:
        """The timed jobs waiting, earliest first."""
        with self._lock:
            return sorted(self._timed.values(), key=lambda item: item[0])

    def run_due(self, now: datetime) -> int:
        ran = 0
        while True:
            with self._lock:
                due = sorted(
                    (item for item in self._timed.items() if item[1][0] <= now),
                    key=lambda item: item[1][0],
                )
                if not due:
                    return ran
                key, (_, job, args) = due[0]
                del self._timed[key]
            # A job may schedule again (even under the same id): it runs outside the lock.
            self._run(job, args)
            ran += 1


class ThreadScheduler(Scheduler):
    """In-process background loop: immediate jobs and timers in one daemon thread.

    Timed jobs live in memory only; that is safe because every deadline also lives in the Store and
    the loop runs the sweep every ``POLYSMS_SWEEP_INTERVAL``, so a restart loses nothing.
    """

    def __init__(
        self, app: Flask, sweep_interval: float = 60.0, run_job: JobRunner | None = None
    ) -> None:
        super().__init__(app, run_job)
        self._heap: list[tuple[datetime, int, str, str, tuple]] = []
        self._live_ids: dict[str, int] = {}
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._sweep_interval = sweep_interval
        # When the app goes away (or at interpreter exit), so does its loop: a loop outliving its
        # app would fire timers of whatever shares its database through a dead app's gateway.
        weakref.finalize(app, self._stop_soon)

    def _push(self, when: datetime, job: str, args: tuple, job_id: str | None) -> None:
        with self._cond:
            seq = next(self._counter)
            key = job_id or f"job-{seq}"
            self._live_ids[key] = seq  # an older entry under this id becomes stale and is skipped
            heapq.heappush(self._heap, (as_utc(when), seq, key, job, args))
            self._cond.notify()

    def _enqueue(self, job: str, *args: Any, job_id: str | None = None) -> None:
        self._push(utcnow(), job, args, None)

    def _enqueue_at(self, when: datetime, job: str, *args: Any, job_id: str | None = None) -> None:
        self._push(when, job, args, job_id)

    def start(self) -> None:
        """Start the loop (once): called by the first request the app serves outside testing.

        Not at start-up, nor by a job: under `flask run --debug` the reloader's parent process
        loads the app but never serves (its timers would fire twice), and CLI commands and test
        suites load apps that must leave no thread behind. Jobs queued before wait for it.
        """
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(
                target=self._loop, name="polysms-scheduler", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the loop and wait (up to 5 s) for its current job to end."""
        self._stop_soon()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None

    def _stop_soon(self) -> None:
        # No join: this also runs from a finalizer, possibly on the loop's own thread.
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

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
    flask_polysms.ports.schedulers.JobSerializer`` otherwise).
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


#: Seconds to wait for Redis to accept a connection (a URL's own ``socket_connect_timeout``
#: wins): a Redis host gone from the network costs a request seconds, not the system's minutes.
REDIS_CONNECT_TIMEOUT = 5.0
#: The longest the sweep runs apart inside workers (a smaller POLYSMS_SWEEP_INTERVAL wins).
WORKER_SWEEP_EVERY = 5.0


class RQScheduler(Scheduler):
    """Jobs on Redis through RQ; timers through ``enqueue_at`` and the worker's scheduler.

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
    ) -> None:
        super().__init__(app, run_job)
        from redis import Redis
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
        from rq import Queue

        self.connection = Redis.from_url(redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT)
        # What "Redis unreachable" raises (see _outage_tolerated); imported once, not per job.
        self._outages = (RedisConnectionError, RedisTimeoutError)
        self.queue = Queue(queue_name, connection=self.connection, serializer=JobSerializer)
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
        self, job: str, *args: Any, job_id: str | None = None, pipeline: Any = None
    ) -> None:
        with self._outage_tolerated(f"job {job}"):
            self._put(job, args, job_id, pipeline=pipeline)

    def _put(self, job: str, args: tuple, job_id: str | None, **options: Any) -> None:
        # result_ttl=0: results are never read, and keeping them would cost Redis memory per job.
        self.queue.enqueue(
            RUN_JOB,
            job,
            *args,
            job_id=job_id or default_job_id(job, args),
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
        pipeline: Any = None,
        tolerate: bool = True,
    ) -> None:
        if pipeline is None and self._is_scheduled(job_id, when):
            return
        # Aware UTC: RQ reads naive datetimes as the server's local time.
        outage = self._outage_tolerated if tolerate else _raising
        with outage(f"job {job} at {when.isoformat()}"):
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
                    self._enqueue(job, *args, job_id=job_id, pipeline=pipe)
                elif not self._is_scheduled(job_id, when) and (job_id, when) not in timed:
                    self._enqueue_at(when, job, *args, job_id=job_id, pipeline=pipe)
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
        """Move timed jobs whose time has come from RQ's scheduled registry to the queue, as RQ's
        scheduler does, when no RQ scheduler holds the queue's lock.

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
        if connection.exists(RQOwnScheduler.get_locking_key(self.queue.name)):
            return 0
        if not connection.set(self.keys.moving, "1", nx=True, px=int(MOVE_LOCK * 1000)):
            return 0
        registry = ScheduledJobRegistry(queue=self.queue)
        due = registry.get_jobs_to_schedule()
        if not due:
            return 0
        jobs = Job.fetch_many(due, connection=connection, serializer=JobSerializer)
        with connection.pipeline() as pipe:
            for job_id, job in zip(due, jobs, strict=True):
                if job is not None:
                    self.queue.enqueue_job(job, pipeline=pipe)
                registry.remove(job_id, pipeline=pipe)
            pipe.execute()
        moved = sum(job is not None for job in jobs)
        if moved:
            log.info("%d due timed jobs moved to the queue (no RQ scheduler holds its lock)", moved)
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
        across every worker, and not while an earlier one still waits; True when enqueued."""
        if not self.connection.set(
            self.keys.sweep, worker_name, nx=True, px=max(1, int(self.sweep_interval * 1000))
        ):
            return False
        from rq.job import Job

        if _text(self.connection.hget(Job.key_for(SWEEP_JOB_ID), "status")) == "queued":
            return False
        self._put("sweep", (), SWEEP_JOB_ID, at_front=True)
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
#: Seconds between a keeper's reports.
BEAT = 1.0
#: A worker whose keeper has not reported for this long is dead (seconds).
ALIVE_TTL = 10.0
#: How long one keeper may move due timed jobs before another may (seconds).
MOVE_LOCK = 2.0
#: A worker silent this long is forgotten (seconds).
PRUNE_AFTER = 86400.0
#: The sweep's job id: one waiting at a time.
SWEEP_JOB_ID = "polysms-sweep"
#: The longest an RQ worker waits between tries to reach Redis again (RQ's own: 60 s).
RECONNECT_WAIT = 5.0


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


def _running_job_ids(worker: Any) -> list[str]:
    """The ids of the jobs an RQ worker runs now, read from the worker object (not Redis)."""
    executions = getattr(worker, "executions", None)  # rq 3: execution id -> Execution
    if isinstance(executions, dict):
        return [execution.job_id for execution in list(executions.values())]
    execution = getattr(worker, "execution", None)  # rq 2
    job_id = getattr(execution, "job_id", None)
    return [job_id] if job_id else []


class WorkerKeeper(threading.Thread):
    """Runs beside an RQ worker, touching Redis only (never the database: a forking worker's
    work horses must not inherit a connection). Every BEAT seconds it

    - reports the worker alive and the jobs it runs (:meth:`RQScheduler.beat`), which is how the
      sweep tells a job on a live worker from one whose worker was killed, within ALIVE_TTL;
    - unless the worker works in burst mode: moves due timed jobs when no RQ scheduler holds
      the queue's lock (:meth:`RQScheduler.move_due_jobs`), and asks for the sweep, which runs
      as a job (:meth:`RQScheduler.request_sweep`) at most once per sweep interval across the
      workers.

    Redis unreachable: it logs (once per outage) and tries again at the next beat.
    """

    def __init__(self, scheduler: RQScheduler, worker: Any, *, sweeps: bool) -> None:
        super().__init__(name=f"polysms-keeper-{worker.name}", daemon=True)
        self.scheduler = scheduler
        self.worker = worker
        self.sweeps = sweeps
        self._stopping = threading.Event()
        self._down = False

    def run(self) -> None:
        from redis.exceptions import RedisError

        last_prune = 0.0
        while True:
            try:
                self.scheduler.beat(self.worker.name, _running_job_ids(self.worker))
                if self.sweeps:
                    self.scheduler.move_due_jobs()
                    self.scheduler.request_sweep(self.worker.name)
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    self.scheduler.prune_workers()
                if self._down:
                    self._down = False
                    log.info("keeper of worker %s: Redis answers again", self.worker.name)
            except RedisError as exc:
                if not self._down:
                    self._down = True
                    log.warning("keeper of worker %s: Redis unreachable: %s", self.worker.name, exc)
            except Exception:  # a bug here must not stop the reports for good
                log.exception("keeper of worker %s failed", self.worker.name)
            if self._stopping.wait(BEAT):
                break
        try:
            self.scheduler.forget_worker(self.worker.name)
        except RedisError:
            pass  # its reports age out

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reporting (at most ``timeout`` seconds)."""
        self._stopping.set()
        if self is not threading.current_thread():
            self.join(timeout)


def keep_worker(scheduler: RQScheduler, worker: Any, *, burst: bool) -> WorkerKeeper:
    """Start the :class:`WorkerKeeper` of an RQ worker (``flask polysms worker`` does): stop it
    when the worker's ``work()`` returns. Also caps the time the worker waits between tries to
    reach Redis again at RECONNECT_WAIT, so that after an outage it takes jobs within seconds."""
    worker.max_connection_wait_time = min(worker.max_connection_wait_time, RECONNECT_WAIT)
    keeper = WorkerKeeper(scheduler, worker, sweeps=not burst)
    keeper.start()
    return keeper


# -- RQ workers whose exit takes bounded time ------------------------------------------------------

#: Seconds the command listener waits on Redis per round: the longest a stopping worker waits
#: for it (RQ's own listener waits 60 s in rq 3.0, without end in rq 2.x).
COMMAND_POLL = 1.0
#: Seconds a stopping worker gives its scheduler process to end after SIGTERM, then after SIGKILL.
SCHEDULER_STOP_TIMEOUT = 5.0
#: Seconds a scheduler process whose worker died gets to stop by itself before it exits hard.
ORPHAN_GRACE = 10.0
#: The name RQScheduler.start() gives its process (rq 2.x and 3.0).
RQ_SCHEDULER_PROCESS = "Scheduler"


class CommandListener(threading.Thread):
    """Reads the commands RQ sends a worker (``rq`` shutdown, kill-horse, stop-job) on its PubSub
    channel and hands them to the worker; stops in bounded time.

    RQ's own listener (redis-py's ``PubSubWorkerThread``) cannot: since redis-py 8.2 its
    ``stop()`` waits for the thread with no timeout, and a thread that read the UNSUBSCRIBE
    confirmation before the stop flag was set waits for a new subscription for RQ's whole poll
    time. Here the flag is set before UNSUBSCRIBE and every wait lasts at most COMMAND_POLL.
    """

    def __init__(self, pubsub: Any, worker_name: str) -> None:
        super().__init__(name=f"rq-commands-{worker_name}", daemon=True)
        self.pubsub = pubsub
        self._stopping = threading.Event()

    def run(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        while not self._stopping.is_set():
            try:
                self.pubsub.get_message(ignore_subscribe_messages=True, timeout=COMMAND_POLL)
            except RedisConnectionError as exc:
                if self._stopping.is_set():
                    return
                # redis-py connects and subscribes again on the next read
                log.warning("RQ command listener: Redis unreachable, retrying: %s", exc)
                self._stopping.wait(COMMAND_POLL)
            except Exception:  # a bad command must not end the listening
                log.exception("RQ command listener: a command failed")
                self._stopping.wait(COMMAND_POLL)

    def stop(self, timeout: float = 5 * COMMAND_POLL) -> None:
        """Stop listening and close the PubSub connection; waits at most ``timeout`` seconds."""
        from redis.exceptions import RedisError

        self._stopping.set()
        try:
            # The confirmation wakes a reader waiting on the socket; it then sees the flag.
            self.pubsub.unsubscribe()
        except RedisError:
            pass  # closing the connection below ends the subscription as well
        self.join(timeout)
        if not self.is_alive():  # never close a socket a reader still uses
            self.pubsub.close()


class BoundedExit:
    """Mixin for RQ worker classes (listed before them): the worker's exit takes bounded time,
    and the scheduler process of ``work(with_scheduler=True)`` never outlives the worker.

    - Commands are read by :class:`CommandListener`, which stops within seconds.
    - At teardown the scheduler process gets SIGTERM, then SIGKILL after
      SCHEDULER_STOP_TIMEOUT (RQ waits for it without end).
    - A scheduler process whose worker died without a teardown (SIGKILL, the OOM killer) stops
      by itself, as if the worker had sent it SIGTERM.
    """

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's ``work``; the processes it forks meanwhile (its scheduler) stop when it dies."""
        global _watch_forks
        _register_fork_watch()
        _watch_forks = True
        try:
            return super().work(*args, **kwargs)
        finally:
            _watch_forks = False

    def subscribe(self) -> None:
        """Listen for RQ's commands to this worker."""
        pubsub = self.connection.pubsub()
        pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub = pubsub
        self.pubsub_thread = CommandListener(pubsub, self.name)
        self.pubsub_thread.start()

    def unsubscribe(self) -> None:
        """Stop listening for commands, within seconds."""
        listener, self.pubsub_thread = self.pubsub_thread, None
        if isinstance(listener, CommandListener):
            listener.stop()
        elif listener is not None:  # not ours: RQ's own way
            super().unsubscribe()

    def stop_scheduler(self) -> None:
        """Stop the scheduler process: SIGTERM, then SIGKILL if it has not ended in time."""
        found = False
        for child in multiprocessing.active_children():
            if child.name != RQ_SCHEDULER_PROCESS:
                continue
            found = True
            child.terminate()
            child.join(SCHEDULER_STOP_TIMEOUT)
            if child.is_alive():
                log.warning("RQ scheduler process %s ignored SIGTERM: killing it", child.pid)
                child.kill()
                child.join(SCHEDULER_STOP_TIMEOUT)
        if not found:
            # None running (burst mode enqueues scheduled jobs in the worker itself), or RQ
            # renamed the process: then RQ's own way.
            super().stop_scheduler()


@functools.cache
def worker_class(fork: bool = False) -> type:
    """The RQ worker class ``flask polysms worker`` runs, with :class:`BoundedExit`: RQ's
    ``SimpleWorker`` (jobs run in the worker's process), or with ``fork`` its ``Worker`` (a work
    horse forked per job)."""
    from rq import SimpleWorker, Worker

    base = Worker if fork else SimpleWorker
    name = f"Bounded{base.__name__}"
    return type(name, (BoundedExit, base), {"__module__": __name__, "__qualname__": name})


# Set while a BoundedExit worker runs: the multiprocessing children it forks (RQ's scheduler)
# watch it and stop when it dies.
_watch_forks = False
_fork_watch_registered = False


def _register_fork_watch() -> None:
    global _fork_watch_registered
    # Windows has no fork (nor register_at_fork): nothing is forked there to watch.
    if not _fork_watch_registered and hasattr(os, "register_at_fork"):
        _fork_watch_registered = True
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    global _watch_forks
    if _watch_forks:
        _watch_forks = False  # the child's own children are not watched
        threading.Thread(target=_stop_with_parent, name="polysms-parent-watch", daemon=True).start()


def _stop_with_parent() -> None:
    """In a child forked by a worker: SIGTERM this process once the worker has died.

    Only multiprocessing children (RQ's scheduler) are watched: a work horse, forked with
    ``os.fork``, has no ``parent_process()`` and finishes its job, as RQ designed it.
    """
    parent = None
    for _ in range(50):  # the fork returns before multiprocessing records the parent
        parent = multiprocessing.parent_process()
        if parent is not None:
            break
        time.sleep(0.1)
    if parent is None:
        return
    if parent.pid != os.getppid() and parent.is_alive():
        return  # a plain fork inside a process multiprocessing started: not ours to watch
    parent.join()  # returns once the parent process has exited
    log.warning("the RQ worker %s has died: stopping its scheduler process", parent.pid)
    os.kill(os.getpid(), signal.SIGTERM)  # the scheduler stops within its interval (1 s)
    time.sleep(ORPHAN_GRACE)
    os._exit(1)  # still here: it had no SIGTERM handler of its own yet


def create_scheduler(app: Flask, settings, run_job: JobRunner) -> Scheduler:
    """The scheduler ``settings`` name; ``run_job(app, name, *args)`` runs a job in-process."""
    if settings.scheduler == "manual":
        return ManualScheduler(app, run_job)
    if settings.scheduler == "thread":
        return ThreadScheduler(
            app, sweep_interval=settings.sweep_interval.total_seconds(), run_job=run_job
        )
    return RQScheduler(
        app,
        settings.redis_url,
        settings.queue_name,
        sweep_interval=min(settings.sweep_interval.total_seconds(), WORKER_SWEEP_EVERY),
        run_job=run_job,
    )
