"""The Scheduler port: the abstract scheduler, job ids, and what the broker says about a job."""

from __future__ import annotations

import logging
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("flask_polysms.scheduler")

#: How a scheduler runs one named job in its app: ``run_job(app, name, *args)``. Schedulers run
#: jobs without knowing them; the extension hands them :func:`flask_polysms.jobs.run_job_in_app`.
JobRunner = Callable[..., Any]


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


#: The lane of the app's own work: sends, timers, agents, the sweep.
MAIN_LANE = "main"
#: The lane of jobs that wait on servers the app does not control (event deliveries to a
#: project's receivers, up to their timeout each): in a lane of their own, a receiver that hangs
#: never holds up a send or a timer.
DELIVERIES_LANE = "deliveries"
#: Every lane, the main one first (a worker taking jobs from several takes the first's first).
LANES = (MAIN_LANE, DELIVERIES_LANE)


class Scheduler(ABC):
    """Runs named jobs now (``enqueue``) or later (``enqueue_at``), each in a lane: jobs of one
    lane never wait for another lane's (where the scheduler runs jobs in the background)."""

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

    def enqueue(
        self, job: str, *args: Any, job_id: str | None = None, lane: str = MAIN_LANE
    ) -> None:
        """Run the job as soon as possible, in ``lane``; ``job_id`` names it for the broker
        (RQ), so that the caller can ask about it later (:meth:`check_jobs`)."""
        held = getattr(self._held, "jobs", None)
        if held is not None:
            held.append((None, job, args, job_id, lane))
        else:
            self._enqueue(job, *args, job_id=job_id, lane=lane)

    def enqueue_at(
        self, when: datetime, job: str, *args: Any, job_id: str | None = None, lane: str = MAIN_LANE
    ) -> None:
        """Run the job at ``when``, in ``lane``; a later call with the same ``job_id`` replaces
        the earlier."""
        held = getattr(self._held, "jobs", None)
        if held is not None:
            held.append((when, job, args, job_id, lane))
        else:
            self._enqueue_at(when, job, *args, job_id=job_id, lane=lane)

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
        for when, job, args, job_id, lane in held:
            if when is None:
                self._enqueue(job, *args, job_id=job_id, lane=lane)
            else:
                self._enqueue_at(when, job, *args, job_id=job_id, lane=lane)

    @abstractmethod
    def _enqueue(
        self, job: str, *args: Any, job_id: str | None = None, lane: str = MAIN_LANE
    ) -> None:
        """Run the job as soon as possible (not held)."""

    @abstractmethod
    def _enqueue_at(
        self, when: datetime, job: str, *args: Any, job_id: str | None = None, lane: str = MAIN_LANE
    ) -> None:
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
