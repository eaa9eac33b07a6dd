"""Schedulers that run jobs in this process: ``manual`` (inline, tests) and ``thread``."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import weakref
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...clock import as_utc, utcnow
from .base import MAIN_LANE, JobRunner, Scheduler

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("flask_polysms.scheduler")


class ManualScheduler(Scheduler):
    """Deterministic scheduler for tests: immediate jobs inline, timed jobs on ``run_due``."""

    inline = True

    def __init__(self, app: Flask, run_job: JobRunner | None = None) -> None:
        super().__init__(app, run_job)
        self._timed: dict[str, tuple[datetime, str, tuple]] = {}
        self._counter = itertools.count()
        self._lock = threading.RLock()

    # Lanes matter only to jobs that run in the background: these run when asked, one by one.
    def _enqueue(
        self, job: str, *args: Any, job_id: str | None = None, lane: str = MAIN_LANE
    ) -> None:
        self._run(job, args)

    def forget_pending(self) -> None:
        with self._lock:
            self._timed.clear()

    def _enqueue_at(
        self, when: datetime, job: str, *args: Any, job_id: str | None = None, lane: str = MAIN_LANE
    ) -> None:
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
    """In-process background loops: the main lane's jobs and timers in one daemon thread, each
    other lane's in a thread of its own (started with the first job of that lane).

    Timed jobs live in memory only; that is safe because every deadline also lives in the Store and
    the main loop runs the sweep every ``POLYSMS_SWEEP_INTERVAL``, so a restart loses nothing.
    """

    def __init__(
        self,
        app: Flask,
        sweep_interval: float = 60.0,
        run_job: JobRunner | None = None,
        sweep_job: str | None = None,
    ) -> None:
        super().__init__(app, run_job)
        self._sweep_job = sweep_job
        self._sweep_interval = sweep_interval
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()
        self._started = False
        # When the app goes away (or at interpreter exit), so do its loops: a loop outliving its
        # app would fire timers of whatever shares its database through a dead app's gateway.
        weakref.finalize(app, self._stop_soon)

    def _lane(self, name: str) -> _Lane:
        with self._lock:
            lane = self._lanes.get(name)
            if lane is None:
                main = name == MAIN_LANE
                lane = self._lanes[name] = _Lane(
                    self,
                    "polysms-scheduler" if main else f"polysms-scheduler-{name}",
                    self._sweep_job if main else None,
                    self._sweep_interval,
                )
                if self._started:
                    lane.start()
            return lane

    def _enqueue(
        self, job: str, *args: Any, job_id: str | None = None, lane: str = MAIN_LANE
    ) -> None:
        self._lane(lane).push(utcnow(), job, args, None)

    def _enqueue_at(
        self, when: datetime, job: str, *args: Any, job_id: str | None = None, lane: str = MAIN_LANE
    ) -> None:
        self._lane(lane).push(when, job, args, job_id)

    def start(self) -> None:
        """Start the loops (once): called by the first request the app serves outside testing.

        Not at start-up, nor by a job: under `flask run --debug` the reloader's parent process
        loads the app but never serves (its timers would fire twice), and CLI commands and test
        suites load apps that must leave no thread behind. Jobs queued before wait for it.
        """
        self._lane(MAIN_LANE)
        for lane in self._all_lanes(started=True):
            lane.start()

    def stop(self) -> None:
        """Stop the loops and wait (up to 5 s each) for their current jobs to end."""
        for lane in self._all_lanes(started=False):
            lane.stop()

    def threads(self) -> list[threading.Thread]:
        """The loops' threads now running."""
        threads = (lane.thread for lane in self._all_lanes())
        return [t for t in threads if t is not None and t.is_alive()]

    def _stop_soon(self) -> None:
        # No join: this also runs from a finalizer, possibly on a loop's own thread.
        for lane in self._all_lanes(started=False):
            lane.stop_soon()

    def _all_lanes(self, started: bool | None = None) -> list[_Lane]:
        """The lanes made so far; with ``started``, whether lanes made from now on start."""
        with self._lock:
            if started is not None:
                self._started = started
            return list(self._lanes.values())


class _Lane:
    """One lane of a :class:`ThreadScheduler`: its timed jobs and the thread that runs them."""

    def __init__(
        self,
        scheduler: ThreadScheduler,
        thread_name: str,
        sweep_job: str | None,
        sweep_interval: float,
    ) -> None:
        # Weakly: the thread must not keep the scheduler, and so its app, alive.
        self._scheduler = weakref.ref(scheduler)
        self._thread_name = thread_name
        self._sweep_job = sweep_job
        self._sweep_interval = sweep_interval
        self._heap: list[tuple[datetime, int, str, str, tuple]] = []
        self._live_ids: dict[str, int] = {}
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self._stopping = False

    def push(self, when: datetime, job: str, args: tuple, job_id: str | None) -> None:
        with self._cond:
            seq = next(self._counter)
            key = job_id or f"job-{seq}"
            self._live_ids[key] = seq  # an older entry under this id becomes stale and is skipped
            heapq.heappush(self._heap, (as_utc(when), seq, key, job, args))
            self._cond.notify()

    def start(self) -> None:
        with self._cond:
            if self.thread is not None and self.thread.is_alive():
                return
            self._stopping = False
            self.thread = threading.Thread(target=self._loop, name=self._thread_name, daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.stop_soon()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.thread = None

    def stop_soon(self) -> None:
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
                    if self._sweep_job is None:
                        next_sweep = now.timestamp() + wait
                    if now.timestamp() < next_sweep or self._sweep_job is None:
                        self._cond.wait(timeout=max(0.01, min(wait, next_sweep - now.timestamp())))
                        continue
                    job, args = self._sweep_job, ()
                    next_sweep = now.timestamp() + self._sweep_interval
            scheduler = self._scheduler()
            if scheduler is None:  # its app is gone
                return
            try:
                scheduler._run(job, args)
            except Exception:  # one failing job must not stop the loop
                log.exception("polysms job %s failed", job)
            del scheduler
