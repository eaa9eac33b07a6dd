"""Memory per 100,000 open sessions in the memory backend; rows and bytes per session in PostgreSQL.

    python benchmarks/bench_memory.py [--sessions 100000] [--pg-sessions 20000]

An open session as it usually is: the session (engaged, with its idle deadline), the greeting
sent by the outbound API and the user's reply, whose MessageSid is claimed. Both stores get the
same records through the Store interface (the memory store keeps a copy of each record).
Memory: the process's resident growth over all the sessions, and Python's exact allocations
(tracemalloc) over a sample. PostgreSQL: rows added per table and the growth of each table with its
indexes (``pg_total_relation_size``), divided by the number of sessions. Prints JSON.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PG_URL, emit, log, machine, reset_services  # noqa: E402

from flask_polysms.clock import utcnow  # noqa: E402
from flask_polysms.records import Message, Session, new_id  # noqa: E402

PROJECT, AGENT = "prj_memory_bench", "+14155550100"


def open_session(i: int) -> tuple[Session, Message, Message, str]:
    """The records of one engaged, open session (as the outbound API and one reply leave it)."""
    now = utcnow()
    user = f"+1415{2_000_000 + i:07d}"
    deadline = now + timedelta(hours=24)
    session = Session(
        id=new_id("conv_"),
        project_id=PROJECT,
        environment="live",
        user_number=user,
        agent_number=AGENT,
        created_at=now,
        last_activity_at=now,
        engaged=True,
        deadline_at=deadline,
        timer_kind="idle",
        wake_at=deadline,
        version=3,
    )
    common = {"project_id": PROJECT, "environment": "live", "session_id": session.id}
    greeting = Message(
        id=new_id("msg_"),
        direction="outbound",
        kind="greeting",
        body="Your appointment is tomorrow at 10. Reply YES to confirm.",
        to=user,
        from_=AGENT,
        created_at=now,
        updated_at=now,
        status="delivered",
        twilio_sid="SM" + new_id(),
        **common,
    )
    sid = "SM" + new_id()
    reply = Message(
        id=new_id("msg_"),
        direction="inbound",
        kind="user",
        body="Yes, 10 am works for me",
        to=AGENT,
        from_=user,
        created_at=now,
        updated_at=now,
        status="received",
        twilio_sid=sid,
        **common,
    )
    return session, greeting, reply, sid


def store_sessions(store, n: int, batch: int = 500) -> None:
    for start in range(0, n, batch):

        def write(start: int = start) -> None:
            for i in range(start, min(n, start + batch)):
                session, greeting, reply, sid = open_session(i)
                store.create_session(session)
                store.add_message(greeting)
                store.claim_inbound(sid, reply.created_at)
                store.add_message(reply)

        store.atomic(write)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_backend(n: int, sample: int) -> dict:
    """Resident growth for ``n`` sessions; exact Python allocations measured on ``sample`` more
    (tracemalloc slows allocation down several times, so it watches a sample only)."""
    from flask_polysms.backends.memory import MemoryStore

    store = MemoryStore()
    gc.collect()
    rss_before = rss_bytes()
    started = time.perf_counter()
    store_sessions(store, n)
    elapsed = time.perf_counter() - started
    gc.collect()
    rss_growth = rss_bytes() - rss_before
    sample_store = MemoryStore()
    tracemalloc.start()
    store_sessions(sample_store, sample)
    gc.collect()
    allocated, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "sessions": n,
        "rss_growth_mb": round(rss_growth / 2**20, 1),
        "rss_mb_per_100k_sessions": round(rss_growth / n * 100_000 / 2**20, 1),
        "seconds_to_create": round(elapsed, 1),
        "tracemalloc_sample_sessions": sample,
        "allocated_bytes_per_session": round(allocated / sample),
        "allocated_mb_per_100k_sessions": round(allocated / sample * 100_000 / 2**20, 1),
    }


def postgres(n: int) -> dict:
    import psycopg2

    from flask_polysms.backends import create_store

    reset_services()
    store = create_store(PG_URL)
    tables = [model._meta.table_name for model in store._m.all]

    def sizes() -> dict[str, tuple[int, int]]:
        with psycopg2.connect(PG_URL) as conn, conn.cursor() as cur:
            out = {}
            for table in tables:
                cur.execute(f'SELECT count(*), pg_total_relation_size(%s) FROM "{table}"', (table,))
                out[table] = cur.fetchone()
            return out

    before = sizes()
    started = time.perf_counter()
    store_sessions(store, n)
    elapsed = time.perf_counter() - started
    store.close()
    conn = psycopg2.connect(PG_URL)
    conn.autocommit = True  # VACUUM runs outside transactions
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f'VACUUM ANALYZE "{table}"')
    conn.close()
    after = sizes()
    per_table = {}
    total_bytes = total_rows = 0
    for table in tables:
        rows = after[table][0] - before[table][0]
        grown = after[table][1] - before[table][1]
        if rows or grown > 16384:
            per_table[table] = {
                "rows_per_session": round(rows / n, 3),
                "bytes_per_session": round(grown / n),
            }
        total_rows += rows
        total_bytes += grown
    return {
        "sessions": n,
        "rows_per_session": round(total_rows / n, 3),
        "bytes_per_session": round(total_bytes / n),
        "mb_per_100k_sessions": round(total_bytes / n * 100_000 / 2**20, 1),
        "per_table": per_table,
        "seconds_to_create": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="in the memory store")
    parser.add_argument("--sample", type=int, default=5_000, help="traced by tracemalloc")
    parser.add_argument("--pg-sessions", type=int, default=20_000, help="in PostgreSQL")
    args = parser.parse_args()
    result: dict = {"benchmark": "memory", "machine": machine()}
    log(f"memory store: {args.sessions} open sessions")
    result["memory_store"] = memory_backend(args.sessions, args.sample)
    log(f"PostgreSQL: {args.pg_sessions} open sessions")
    result["postgresql"] = postgres(args.pg_sessions)
    result["command"] = "python benchmarks/bench_memory.py " + " ".join(sys.argv[1:])
    result["open_session"] = (
        "an engaged session, its delivered greeting and the user's reply (MessageSid claimed)"
    )
    emit(result)


if __name__ == "__main__":
    main()
