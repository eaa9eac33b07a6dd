"""Session timers with 100,000 engaged sessions on PostgreSQL and Redis.

    python benchmarks/bench_timers.py [--sessions 100000] [--fire 2000]

1. Opens ``--sessions`` engaged sessions, each with its idle deadline in the Store and its
   wake-up scheduled in RQ, as ``new_session`` leaves them (rows written in bulk; wake-ups are
   shared per second of deadline).
2. The bookkeeping of one inbound message (``note_activity``: the deadline moves 24 h later):
   SQL statements, Redis commands and time per message, measured with 1,000 sessions open and
   again with all of them open: constant work means the same figures.
3. Redis memory per open session: the shared wake-up jobs' hashes and their entries in RQ's
   scheduled registry (``MEMORY USAGE``, exact for the registry, a sample of the hashes).
4. Timers fired per second per worker: ``--fire`` sessions made due, their shared wake-ups run by
   one ``flask polysms worker --burst`` (SimpleWorker): each fires the warning (transition,
   warning queued, grace wake-up scheduled). The rate is taken from the warnings' timestamps;
   RQ's no-op job rate with the same worker is measured beside it. Then ``--fire`` more made due
   with no job at all, fired by the sweep (``flask polysms sweep``, 500 per call).
Prints JSON.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("POLYSMS_BENCH_GATEWAY", "outbox")  # warnings go nowhere (worker child too)

from harness import QUEUE, REDIS_URL, emit, log, machine, median, reset_services  # noqa: E402

AGENT = "+14155550100"


class Counters:
    """Counts SQL round trips (messages sent to the database, whatever statements each holds)
    and Redis commands (pipelined ones included) of this process."""

    def __init__(self, store) -> None:
        from redis.client import Pipeline, Redis

        self.sql = self.redis = 0
        # Peewee calls its query hooks once per message sent, however the store sends it.
        store.database.query_hooks = [*store.database.query_hooks, self._count_sql]
        execute_command = Redis.execute_command
        pipeline_execute = Pipeline.execute
        counters = self

        def counted_command(redis_self, *args, **kwargs):
            counters.redis += 1
            return execute_command(redis_self, *args, **kwargs)

        def counted_pipeline(pipe_self, *args, **kwargs):
            counters.redis += len(pipe_self.command_stack)
            return pipeline_execute(pipe_self, *args, **kwargs)

        Redis.execute_command = counted_command
        Pipeline.execute = counted_pipeline
        # Pipeline.execute_command only stacks commands: counted when the pipeline runs.

    def _count_sql(self, event) -> None:
        self.sql += 1

    def reset(self) -> None:
        self.sql = self.redis = 0


def open_sessions(state, tenant, first: int, n: int, deadline_from) -> list[str]:
    """``n`` engaged sessions, rows in bulk, wake-ups scheduled as ``new_session`` does."""
    from flask_polysms.records import Session, new_id
    from flask_polysms.services.lifecycle import _schedule_wake

    store = state.store
    model = store._m.Session
    ids = []
    for start in range(first, first + n, 1000):
        rows, wakes = [], []
        for i in range(start, min(first + n, start + 1000)):
            now = deadline_from - timedelta(hours=24)
            deadline = deadline_from + timedelta(milliseconds=i)
            session = Session(
                id=new_id("conv_"),
                project_id=tenant.project_id,
                environment="live",
                user_number=f"+1415{2_000_000 + i:07d}",
                agent_number=AGENT,
                created_at=now,
                last_activity_at=now,
                engaged=True,
                deadline_at=deadline,
                timer_kind="idle",
                wake_at=deadline,
                version=2,
            )
            fields = model._meta.fields
            rows.append(
                {name: fields[name].db_value(value) for name, value in _values(session).items()}
            )
            wakes.append((session.id, deadline))
            ids.append(session.id)
        store.atomic(lambda rows=rows: model.insert_many(rows).execute())
        with state.scheduler.holding():
            for _, deadline in wakes:
                _schedule_wake(state, deadline)
    return ids


def _values(record) -> dict:
    from flask_polysms.backends.peewee import _values as values

    return values(record)


def bookkeeping(state, counters: Counters, ids: list[str], n: int) -> dict:
    """One inbound message's timer bookkeeping, ``n`` times on random open sessions."""
    from flask_polysms.services.lifecycle import note_activity

    chosen = random.sample(ids, n)
    sessions = [state.store.get_session(i) for i in chosen]  # routing read them (not timed)
    counters.reset()
    cpu, wall = time.process_time(), time.perf_counter()
    for session in sessions:
        note_activity(state, session.id, user_reply=True, session=session)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "messages": n,
        "sql_statements_per_message": counters.sql / n,
        "redis_commands_per_message": counters.redis / n,
        "cpu_ms_per_message": round(cpu / n * 1000, 3),
        "wall_ms_per_message": round(wall / n * 1000, 3),
    }


def redis_memory(connection, ids: list[str], sample: int = 500) -> dict:
    """Bytes of Redis per open session: the wake-up jobs and the scheduled registry."""
    registry = f"rq:scheduled:{QUEUE}"
    members = connection.zcard(registry)
    registry_bytes = connection.memory_usage(registry, samples=0)
    # Wake-ups are shared per second of deadline: a few jobs for all the sessions.
    keys = [k for k in connection.scan_iter(match="rq:job:wake-*", count=5000)]
    picked = random.sample(keys, min(sample, len(keys)))
    job_bytes = median([connection.memory_usage(k, samples=0) for k in picked])
    per_session = (job_bytes * len(keys) + registry_bytes) / len(ids)
    return {
        "open_sessions": len(ids),
        "wake_up_jobs": len(keys),
        "scheduled_registry_entries": members,
        "job_hash_bytes_median": job_bytes,
        "registry_bytes_per_entry": round(registry_bytes / members, 1),
        "bytes_per_open_session": round(per_session),
        "redis_keys_in_db": connection.dbsize(),
    }


def make_due(state, ids: list[str]) -> None:
    """Move these sessions' deadlines (and wake-ups) one second into the past."""
    from flask_polysms.clock import utcnow

    model = state.store._m.Session
    past = utcnow() - timedelta(seconds=1)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        state.store.atomic(
            lambda chunk=chunk: (
                model.update(deadline_at=past, wake_at=past).where(model.id.in_(chunk)).execute()
            )
        )


def fire_with_worker(app, state, ids: list[str]) -> dict:
    """The due sessions' wake-up jobs, run by one ``flask polysms worker --burst``."""
    from bench_worker import work

    # As the RQ scheduler moves the shared wake-ups to the queue when due: the sessions' deadlines
    # are a millisecond apart, so each second's wake-up covers a thousand of them.
    with state.scheduler.holding():
        for _ in range(0, len(ids), 1000):
            state.scheduler.enqueue("wake")
    done = work("sends", True)  # the worker command; the warnings' send jobs follow the timers
    model = state.store._m.Message
    stamps = sorted(
        row.created_at
        for row in model.select(model.created_at).where(
            (model.kind == "warning") & model.session_id.in_(ids)
        )
    )
    seconds = (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else float("nan")
    return {
        "timers": len(ids),
        "warnings_queued": len(stamps),
        "timers_fired_per_s": round((len(stamps) - 1) / seconds, 1),
        "worker_jobs": done["jobs"],
        "worker_seconds_all_jobs": round(done["seconds"], 2),
    }


def fire_with_sweep(state, ids: list[str]) -> dict:
    from flask_polysms.services.lifecycle import sweep

    started = time.perf_counter()
    fired = calls = 0
    while True:
        calls += 1
        n = sweep(state)
        fired += n
        if n == 0:
            break
    elapsed = time.perf_counter() - started
    return {
        "due": len(ids),
        "fired": fired,
        "sweep_calls": calls,
        "timers_fired_per_s": round(fired / elapsed, 1),
    }


def noop_rate(n: int) -> dict:
    from bench_worker import fill_noop, work

    fill_noop(n)
    return work("noop", True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--fire", type=int, default=2000, help="timers fired by each path")
    parser.add_argument("--messages", type=int, default=2000, help="bookkeeping calls timed")
    args = parser.parse_args()

    import polysms_app
    from redis import Redis

    from flask_polysms.clock import utcnow
    from flask_polysms.services.state import get_state
    from flask_polysms.testing import provision

    random.seed(7)
    result: dict = {"benchmark": "timers", "machine": machine()}
    log("resetting the benchmark database and Redis")
    reset_services()
    app = polysms_app.create_app()
    tenant = provision(app, numbers=(AGENT,))
    redis = Redis.from_url(REDIS_URL)
    with app.app_context():
        state = get_state(app)
        counters = Counters(state.store)
        # Deadlines an hour short of 24 h: a message now moves each one later, as a reply does.
        start = utcnow() + timedelta(hours=23)
        first = min(1000, args.sessions)
        ids = open_sessions(state, tenant, 0, first, start)
        small = bookkeeping(state, counters, ids, min(args.messages, first))
        log(f"{first} sessions open: {small}")
        started = time.perf_counter()
        ids += open_sessions(state, tenant, first, args.sessions - first, start)
        log(f"{len(ids)} sessions open ({time.perf_counter() - started:.0f} s)")
        memory = redis_memory(redis, ids)
        large = bookkeeping(state, counters, ids, args.messages)
        log(f"{len(ids)} sessions open: {large}")
        pool = random.sample(ids, 2 * args.fire)
        by_worker, by_sweep = pool[: args.fire], pool[args.fire :]
        make_due(state, by_worker)
        noop = noop_rate(3000)
        worker = fire_with_worker(app, state, by_worker)
        log(f"worker: {worker}; RQ no-op {noop['jobs_per_s']:.1f} jobs/s")
        make_due(state, by_sweep)
        swept = fire_with_sweep(state, by_sweep)
        log(f"sweep: {swept}")
    result.update(
        {
            "command": "python benchmarks/bench_timers.py " + " ".join(sys.argv[1:]),
            "open_sessions": len(ids),
            "bookkeeping_per_inbound_message": {
                f"{first}_sessions_open": small,
                f"{len(ids)}_sessions_open": large,
            },
            "redis_memory": memory,
            "timers_by_worker": {**worker, "rq_noop_jobs_per_s": round(noop["jobs_per_s"], 1)},
            "timers_by_sweep": swept,
            "targets": {
                "constant_work_per_message": (
                    small["sql_statements_per_message"] == large["sql_statements_per_message"]
                    and small["redis_commands_per_message"] == large["redis_commands_per_message"]
                ),
                "redis_at_most_1kb_per_open_session": memory["bytes_per_open_session"] <= 1024,
                "at_least_500_timers_per_s_per_worker": worker["timers_fired_per_s"] >= 500,
                "at_least_500_timers_per_s_by_sweep": swept["timers_fired_per_s"] >= 500,
            },
        }
    )
    emit(result)


if __name__ == "__main__":
    main()
