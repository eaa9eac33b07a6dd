"""The keeper thread beside every RQ worker: liveness reports, due timed jobs, the sweep."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .rq_scheduler import RQScheduler

log = logging.getLogger("flask_polysms.scheduler")


#: Seconds between a keeper's reports.
BEAT = 1.0
#: The longest an RQ worker waits between tries to reach Redis again (RQ's own: 60 s).
RECONNECT_WAIT = 5.0


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
