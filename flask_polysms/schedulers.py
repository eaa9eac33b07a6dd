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
        # The app is needed to push a context around each job; the scheduler lives in the app's
        # extension state (one app per scheduler) and holds it weakly, so a background thread
        # never keeps an app alive after everything else has let it go.
        self._app_ref = weakref.ref(app)
        self._held = threading.local()

    @property
    def app(self) -> Flask:
        """The app whose jobs this scheduler runs."""
        app = self._app_ref()
        if app is None:
            raise RuntimeError("the app of this scheduler is gone")
        return app

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

    def broker_available(self) -> bool | None:
        """Whether the broker this scheduler needs answers now; None when it needs none."""
        return None

    def forget_pending(self) -> None:  # noqa: B027 - nothing kept by schedulers that hand jobs on
        """Drop the timed jobs kept in this process (between tests)."""

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

    def _enqueue(self, job: str, *args: Any) -> None:
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

    def broker_available(self) -> bool:
        """Whether Redis answers a PING now."""
        try:
            return bool(self.connection.ping())
        except self._outages:
            return False

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
    if not _fork_watch_registered:
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


def create_scheduler(app: Flask, settings) -> Scheduler:
    if settings.scheduler == "manual":
        return ManualScheduler(app)
    if settings.scheduler == "thread":
        return ThreadScheduler(app, sweep_interval=settings.sweep_interval.total_seconds())
    return RQScheduler(app, settings.redis_url, settings.queue_name)
