"""Worker send throughput through the Twilio emulator, beside RQ's own no-op job rate.

    python benchmarks/bench_worker.py [--messages 1500] [--noop-jobs 3000] [--rounds 2]

Each measurement is one worker process, started the way ``flask polysms worker --burst`` starts
it (the CLI command itself, in a child process that times it), draining a queue filled
beforehand:

- ``noop``: RQ's cheapest job (``baseline_apps.noop_job``) with the same worker class, with its
  scheduler on, as ``flask polysms worker`` runs it: the ceiling of RQ on this machine;
- ``sends``: flask-polysms send jobs, one per queued message: re-check the opt-out, read the
  project and sender, call Twilio (the real ``twilio`` client against the emulator, a separate
  process, with a ``StatusCallback`` URL: ``POLYSMS_PUBLIC_URL`` is set as in production) and
  record ``sent`` and the SID.

The emulator keeps the status callbacks it would post (``--callbacks manual``): Twilio posts them
to the web servers, from its own machines, and the worker has no part in them; the emulator's
CPU per send is reported (``emulator_cpu_ms_per_send``) because it shares this machine's cores.

Both classes: ``SimpleWorker`` (the default of ``flask polysms worker``) and the forking
``Worker`` (``--fork``), the latter with fewer jobs. Rounds alternate; ratios are medians of the
rounds' ratios. Prints JSON.

``--against REV`` also drains, in the same rounds, send jobs queued by the project at another
commit (a git worktree, on a database and Redis database of its own) with that commit's worker,
and reports ``ratio_to_against`` for each worker class.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    HERE,
    PG_URL,
    QUEUE,
    REDIS_URL,
    against_env,
    checkout,
    cpu_seconds,
    emit,
    emulator,
    log,
    machine,
    median,
    prepare_against,
    reset_services,
)

ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-twilio-auth-token"
AGENT_NUMBER = "+14155550100"
# Sent to the emulator as each message's StatusCallback base; nothing is posted there.
PUBLIC_URL = "https://sms.bench.example"


def in_child(*arguments: str, env: dict[str, str] | None = None, stdin: str = "") -> object:
    """Run this file with ``arguments`` in a child process (``env``: another commit's code and
    data); returns the JSON it printed last."""
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    command = [sys.executable, __file__, "--child", *arguments]
    out = subprocess.run(command, env=env, input=stdin, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"child {arguments} failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def work(kind: str, simple: bool, env: dict[str, str] | None = None) -> dict:
    """In a child process: drain the queue with one worker; returns what it did and how fast."""
    return in_child(kind, "--simple" if simple else "--fork", env=env)


def _services():
    """``queue_message``, ``get_state`` and ``unit_of_work`` where the running code keeps them
    (0.1 kept them at the package's top level)."""
    try:
        from flask_polysms.services.sending import queue_message
        from flask_polysms.services.state import get_state
        from flask_polysms.services.units import unit_of_work
    except ImportError:
        from flask_polysms.extension import get_state
        from flask_polysms.sending import queue_message
        from flask_polysms.units import unit_of_work
    return queue_message, get_state, unit_of_work


def child(kind: str, simple: bool) -> None:
    """The worker process: ``flask polysms worker --burst`` for sends, a bare RQ worker of the
    same class (scheduler on) for no-op jobs; timed from inside."""
    from redis import Redis
    from rq import Queue, SimpleWorker, Worker

    if kind in ("fill", "count"):
        import polysms_app

        app = polysms_app.create_app()
        if kind == "fill":
            project_id, n, first_user = json.loads(sys.stdin.read())
            print(json.dumps(fill_sends(app, project_id, n, first_user)))
        else:
            print(json.dumps(count_sent(app, json.loads(sys.stdin.read()))))
        return
    queue = Queue(QUEUE, connection=Redis.from_url(REDIS_URL))
    jobs = queue.count
    if kind == "noop":
        import baseline_apps  # noqa: F401 - the job's module, loaded once (as the CLI preloads)

        worker_class = SimpleWorker if simple else Worker
        worker = worker_class([queue], connection=queue.connection)
        started = time.perf_counter()
        worker.work(burst=True, with_scheduler=True)  # RQ's default logging, as the CLI's
        elapsed = time.perf_counter() - started
    else:
        import polysms_app

        app = polysms_app.create_app()
        runner = app.test_cli_runner()
        started = time.perf_counter()
        result = runner.invoke(
            args=["polysms", "worker", "--burst", "--simple" if simple else "--fork"]
        )
        elapsed = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(f"worker failed: {result.output}\n{result.exception!r}")
    print(json.dumps({"jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed}))


def fill_noop(n: int) -> None:
    from redis import Redis
    from rq import Queue

    queue = Queue(QUEUE, connection=Redis.from_url(REDIS_URL))
    with queue.connection.pipeline() as pipe:
        for i in range(n):
            queue.enqueue("baseline_apps.noop_job", i, result_ttl=0, pipeline=pipe)
        pipe.execute()


def fill_sends(app, project_id: str, n: int, first_user: int) -> list[str]:
    """``n`` messages queued through the one send path (rows first, then their jobs)."""
    queue_message, get_state, unit_of_work = _services()

    ids = []
    with app.app_context():
        state = get_state(app)
        state.store.connect()  # as a request or a job does, before its unit of work

        def queue_all() -> None:
            for i in range(n):
                message = queue_message(
                    state,
                    project_id=project_id,
                    environment="live",
                    session=None,
                    kind="agent",
                    body="Your appointment is confirmed for tomorrow at 10.",
                    to=f"+1415{first_user + i:07d}",
                    sender=AGENT_NUMBER,
                )
                ids.append(message.id)

        try:
            unit_of_work(state, queue_all)
        finally:
            state.store.close()
    return ids


def count_sent(app, ids: list[str]) -> dict[str, int]:
    get_state = _services()[1]

    statuses: dict[str, int] = {}
    with app.app_context():
        store = get_state(app).store
        for message_id in ids:
            status = store.get_message(message_id).status
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1500, help="send jobs per SimpleWorker run")
    parser.add_argument(
        "--noop-jobs", type=int, default=3000, help="no-op jobs per SimpleWorker run"
    )
    parser.add_argument("--fork-jobs", type=int, default=300, help="jobs per forking Worker run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--against", metavar="REV", help="also run this commit's send jobs, side by side"
    )
    parser.add_argument(
        "--child", choices=["noop", "sends", "fill", "count"], help=argparse.SUPPRESS
    )
    parser.add_argument("--simple", dest="simple", action="store_true", default=True)
    parser.add_argument("--fork", dest="simple", action="store_false")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.simple)
        return

    import polysms_app

    from flask_polysms.testing import provision

    result: dict = {"benchmark": "worker", "machine": machine()}
    log("resetting the benchmark database and Redis")
    reset_services()
    with contextlib.ExitStack() as stack:
        base_url, emulator_pid = stack.enter_context(
            emulator(ACCOUNT_SID, AUTH_TOKEN, "--callbacks", "manual")
        )
        os.environ["POLYSMS_BENCH_TWILIO_BASE_URL"] = base_url
        os.environ["POLYSMS_BENCH_PUBLIC_URL"] = PUBLIC_URL
        app = polysms_app.create_app()
        tenant = provision(
            app,
            numbers=(AGENT_NUMBER,),
            twilio_account_sid=ACCOUNT_SID,
            twilio_auth_token=AUTH_TOKEN,
        )
        twilio = {"twilio_account_sid": ACCOUNT_SID, "twilio_auth_token": AUTH_TOKEN}
        sides = {"sends": (tenant.project_id, None)}
        if args.against:
            code = stack.enter_context(checkout(args.against))
            against = prepare_against(code, numbers=[AGENT_NUMBER], **twilio)
            sides["against_sends"] = (against["project_id"], against_env(code))
        users = iter(range(2_000_000, 9_000_000, 100_000))
        runs: dict[str, list[dict]] = {}
        plan = [
            ("simple", True, args.noop_jobs, args.messages),
            ("fork", False, args.fork_jobs, args.fork_jobs),
        ]

        # Warm-up: imports, the pool's first connection, the emulator's first client.
        def fill(side: str, n: int) -> list[str]:
            project_id, env = sides[side]
            if env is None:
                return fill_sends(app, project_id, n, next(users))
            return in_child("fill", env=env, stdin=json.dumps([project_id, n, next(users)]))

        def statuses(side: str, ids: list[str]) -> dict[str, int]:
            env = sides[side][1]
            if env is None:
                return count_sent(app, ids)
            return in_child("count", env=env, stdin=json.dumps(ids))

        for side, (_, env) in sides.items():
            fill(side, 50)
            work("sends", True, env)
        for label, simple, noop_jobs, sends in plan:
            rounds = args.rounds if simple else 1
            for round_no in range(rounds):
                fill_noop(noop_jobs)
                noop = work("noop", simple)
                runs.setdefault(f"{label}_noop", []).append(noop)
                order = list(sides.items())
                for side, (_, env) in order[::-1] if round_no % 2 else order:  # each goes first
                    ids = fill(side, sends)
                    emulator_cpu = cpu_seconds(emulator_pid)
                    done = work("sends", simple, env)
                    emulator_cpu = cpu_seconds(emulator_pid) - emulator_cpu
                    done["emulator_cpu_ms_per_send"] = round(emulator_cpu / sends * 1000, 2)
                    done["statuses"] = statuses(side, ids)
                    log(
                        f"{label} round {round_no + 1}: no-op {noop['jobs_per_s']:.1f} jobs/s, "
                        f"{side} {done['jobs_per_s']:.1f} messages/s {done['statuses']}"
                    )
                    runs.setdefault(f"{label}_{side}", []).append(done)

    def summary(label: str) -> dict:
        noop = runs[f"{label}_noop"]
        sends = runs[f"{label}_sends"]
        ratios = [s["jobs_per_s"] / n["jobs_per_s"] for s, n in zip(sends, noop, strict=True)]
        figures = {
            "noop_jobs_per_s": round(median([r["jobs_per_s"] for r in noop]), 1),
            "sends_per_s": round(median([r["jobs_per_s"] for r in sends]), 1),
            "emulator_cpu_ms_per_send": median([r["emulator_cpu_ms_per_send"] for r in sends]),
            "ratio_to_noop": round(median(ratios), 3),
        }
        if args.against:
            other = runs[f"{label}_against_sends"]
            pairs = zip(sends, other, strict=True)
            figures["against"] = {
                "revision": args.against,
                "sends_per_s": round(median([r["jobs_per_s"] for r in other]), 1),
                "ratio_to_against": round(
                    median([a["jobs_per_s"] / b["jobs_per_s"] for a, b in pairs]), 3
                ),
            }
        return figures

    simple, fork = summary("simple"), summary("fork")
    result.update(
        {
            "command": "python benchmarks/bench_worker.py " + " ".join(sys.argv[1:]),
            "storage": PG_URL,
            "settings": {
                "messages": args.messages,
                "noop_jobs": args.noop_jobs,
                "fork_jobs": args.fork_jobs,
                "rounds": args.rounds,
            },
            "simple_worker": simple,
            "forking_worker": fork,
            "simple_over_fork_sends": round(simple["sends_per_s"] / fork["sends_per_s"], 2),
            "runs": runs,
            "targets": {"sends_at_least_0.6_of_noop": simple["ratio_to_noop"] >= 0.6},
        }
    )
    emit(result)


if __name__ == "__main__":
    main()
