"""The Scheduler port: run a job now or at a time.

Jobs are named (see :mod:`flask_polysms.jobs`) and take plain, JSON-able arguments, so every
scheduler can hand them across threads or processes. Three implementations:

- ``manual``: runs jobs inline; timed jobs wait until ``run_due(now)`` (tests, under freezegun);
- ``thread``: a background thread runs jobs and timers in-process (the embedded default);
- ``rq``: jobs on Redis through RQ, timers with ``enqueue_at`` and the worker's built-in scheduler.

One module per idea: :mod:`.base` (the port, job ids, job states), :mod:`.inprocess` (manual,
thread), :mod:`.rq_scheduler`, :mod:`.serializer`, :mod:`.keeper` (beside every RQ worker) and
:mod:`.workers` (RQ worker classes with a bounded exit). Every name stays importable from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    DELIVERIES_LANE,
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
from .inprocess import ManualScheduler, ThreadScheduler
from .keeper import BEAT, RECONNECT_WAIT, WorkerKeeper, keep_worker
from .rq_scheduler import (
    ALIVE_TTL,
    BEAT_SCRIPT,
    MOVE_LOCK,
    PRUNE_AFTER,
    REDIS_CONNECT_TIMEOUT,
    SWEEP_JOB_ID,
    WORKER_SWEEP_EVERY,
    KeeperKeys,
    RQScheduler,
    lane_queue_name,
)
from .serializer import RUN_JOB, JobSerializer
from .workers import (
    COMMAND_POLL,
    ORPHAN_GRACE,
    RQ_SCHEDULER_PROCESS,
    SCHEDULER_STOP_TIMEOUT,
    BoundedExit,
    CommandListener,
    worker_class,
)

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "ALIVE_TTL",
    "BEAT",
    "BEAT_SCRIPT",
    "COMMAND_POLL",
    "DELIVERIES_LANE",
    "LANES",
    "LOST",
    "MAIN_LANE",
    "MISSING",
    "MOVE_LOCK",
    "ORPHAN_GRACE",
    "PENDING",
    "PRUNE_AFTER",
    "RECONNECT_WAIT",
    "REDIS_CONNECT_TIMEOUT",
    "RQ_SCHEDULER_PROCESS",
    "RUNNING",
    "RUN_JOB",
    "SCHEDULER_STOP_TIMEOUT",
    "SWEEP_JOB_ID",
    "UNSURE",
    "WORKER_SWEEP_EVERY",
    "BoundedExit",
    "CommandListener",
    "JobRunner",
    "JobSerializer",
    "KeeperKeys",
    "ManualScheduler",
    "RQScheduler",
    "Scheduler",
    "ThreadScheduler",
    "WorkerKeeper",
    "create_scheduler",
    "keep_worker",
    "lane_queue_name",
    "worker_class",
]


def create_scheduler(app: Flask, settings, run_job: JobRunner, sweep_job: str) -> Scheduler:
    """The scheduler ``settings`` name; ``run_job(app, name, *args)`` runs a job in-process, and
    the schedulers that run on their own run ``sweep_job`` every sweep interval."""
    if settings.scheduler == "manual":
        return ManualScheduler(app, run_job)
    if settings.scheduler == "thread":
        return ThreadScheduler(
            app,
            sweep_interval=settings.sweep_interval.total_seconds(),
            run_job=run_job,
            sweep_job=sweep_job,
        )
    return RQScheduler(
        app,
        settings.redis_url,
        settings.queue_name,
        sweep_interval=min(settings.sweep_interval.total_seconds(), WORKER_SWEEP_EVERY),
        run_job=run_job,
        sweep_job=sweep_job,
    )
