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
from .base import JobRunner, Scheduler

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
        self,
        app: Flask,
        sweep_interval: float = 60.0,
        run_job: JobRunner | None = None,
        sweep_job: str | None = None,
    ) -> None:
        super().__init__(app, run_job)
        self._sweep_job = sweep_job
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
                    if self._sweep_job is None:
                        next_sweep = now.timestamp() + wait
                    if now.timestamp() < next_sweep or self._sweep_job is None:
                        self._cond.wait(timeout=max(0.01, min(wait, next_sweep - now.timestamp())))
                        continue
                    job, args = self._sweep_job, ()
                    next_sweep = now.timestamp() + self._sweep_interval
            try:
                self._run(job, args)
            except Exception:  # one failing job must not stop the loop
                log.exception("polysms job %s failed", job)
