"""Outbound API under gunicorn (2 sync workers) with RQ on Redis, beside its hand-written baseline.

    python benchmarks/bench_outbound.py [--seconds 5] [--rounds 5] [--connections 8] [--against REV]

Three servers run side by side: a bare Flask "hello", the hand-written baseline
(``baseline_apps.outbound_app``: two rows in one transaction, one RQ job) and flask-polysms
(``polysms_app``: authentication, rate limit, sender choice, session, greeting, send job and
wake-up timer). wrk measures each one's peak in alternating rounds; the ratio reported is the
median of the rounds' ratios, so that load from other processes, which comes and goes, weighs on
both sides alike. Then a paced open-loop load at half of each one's peak measures latency.
Prints JSON.

``--against REV`` serves a fourth server, the project at another commit (a git worktree, on a
database of its own whose schema its own code made), in the same rounds, and reports
``ratio_to_against``: a change's gain, which the ratio to the baseline cannot show from one run to
the next when the machine's speed moves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tracing  # noqa: E402
from harness import (  # noqa: E402
    against_env,
    checkout,
    emit,
    gunicorn,
    log,
    lua_string,
    machine,
    median,
    paced,
    prepare_against,
    ratio,
    ratio_of_rounds,
    reset_services,
    served_cpu_seconds,
    wrk,
)

AGENT_NUMBERS = ("+14155550100", "+14155550101")
MESSAGE = "Your appointment is tomorrow at 10."


def outbound_lua(headers: dict[str, str], first_number: int) -> str:
    lua_headers = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items())
    return f"""
local counter = 0
local headers = {{ {lua_headers} }}
request = function()
  counter = counter + 1
  local body = '{{"user_number": "+1415' .. string.format("%07d", {first_number} + counter)
    .. '", "message": "{MESSAGE}"}}'
  return wrk.format("POST", "/v1/outbound-sms", headers, body)
end
"""


HELLO_LUA = 'request = function() return wrk.format("GET", "/hello") end'


def _cpu_ratio(runs: dict[str, list[dict]], ours: str, other: str) -> float:
    """Median over the rounds of our CPU per request divided by the other side's."""
    pairs = zip(runs[ours], runs[other], strict=True)
    return round(median([a["cpu_ms_per_request"] / b["cpu_ms_per_request"] for a, b in pairs]), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--paced-seconds", type=float, default=8.0)
    parser.add_argument(
        "--against", metavar="REV", help="also serve this commit of the project, side by side"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="time every request inside the server too (benchmarks/tracing.py) and say where "
        "the half-peak tail went",
    )
    args = parser.parse_args()

    import polysms_app

    from flask_polysms.testing import provision

    result: dict = {"benchmark": "outbound", "machine": machine()}
    log("resetting the benchmark database and Redis")
    reset_services()
    app = polysms_app.create_app()
    tenant = provision(app, numbers=AGENT_NUMBERS)
    headers = {"Content-Type": "application/json"}
    tenant_headers = {name: {**tenant.headers, **headers} for name in ("baseline", "polysms")}
    numbers = iter(range(2_000_000, 9_000_000, 200_000))  # distinct users in every run

    def lua_for(name: str) -> str:
        if name == "hello":
            return HELLO_LUA
        return outbound_lua(tenant_headers[name], next(numbers))

    trace_folder = tempfile.mkdtemp(prefix="polysms-trace-") if args.trace else None
    traced = {"POLYSMS_BENCH_TRACE": trace_folder} if trace_folder else None
    with contextlib.ExitStack() as servers:
        serve = servers.enter_context
        ports = {
            "hello": serve(gunicorn("baseline_apps:hello_app()")),
            "baseline": serve(gunicorn("baseline_apps:outbound_app()")),
            "polysms": serve(gunicorn("polysms_app:create_app()", env=traced)),
        }
        if args.against:
            code = serve(checkout(args.against))
            against = prepare_against(code, numbers=list(AGENT_NUMBERS))
            tenant_headers["against"] = {**against["headers"], **headers}
            ports["against"] = serve(gunicorn("polysms_app:create_app()", env=against_env(code)))
        for name, port in ports.items():  # warm-up: imports, connections, caches
            wrk(f"http://127.0.0.1:{port}", lua_for(name), connections=4, seconds=2)
        runs: dict[str, list[dict]] = {name: [] for name in ports}
        for round_no in range(args.rounds):
            for name, port in ports.items():
                cpu_before = served_cpu_seconds(port)
                run = wrk(
                    f"http://127.0.0.1:{port}",
                    lua_for(name),
                    connections=args.connections,
                    seconds=args.seconds,
                )
                cpu = served_cpu_seconds(port) - cpu_before
                run["cpu_ms_per_request"] = round(cpu * 1000 / max(1, run["requests"]), 3)
                log(
                    f"round {round_no + 1} {name}: {run['requests_per_s']} req/s, "
                    f"{run['cpu_ms_per_request']} CPU ms per request"
                )
                runs[name].append(run)
        peak = {name: median([r["requests_per_s"] for r in rs]) for name, rs in runs.items()}

        counter = iter(range(9_000_000, 9_999_999))

        def build(i: int):
            body = json.dumps({"user_number": f"+1415{next(counter):07d}", "message": MESSAGE})
            return "POST", "/v1/outbound-sms", body.encode(), tenant_headers["polysms"]

        half = {}
        for name in ("baseline", "polysms"):
            log(f"paced load at half of {name}'s peak ({peak[name] / 2:.0f} req/s)")
            began = time.time()
            half[name] = paced(ports[name], build, rate=peak[name] / 2, seconds=args.paced_seconds)
            if name == "polysms" and trace_folder:
                half[name]["inside_the_server"] = tracing.summary(trace_folder, since=began)

    errors = {
        name: sum(r["non_2xx"] + r["connect_errors"] + r["timeouts"] for r in rs)
        for name, rs in runs.items()
    }
    result.update(
        {
            "command": "python benchmarks/bench_outbound.py " + " ".join(sys.argv[1:]),
            "settings": {
                "gunicorn_workers": 2,
                "wrk_connections": args.connections,
                "seconds_per_run": args.seconds,
                "rounds": args.rounds,
            },
            "peak_requests_per_s": peak,
            "ratio_to_baseline": ratio_of_rounds(runs, "polysms", "baseline"),
            "ratio_of_medians": ratio(peak["polysms"], peak["baseline"]),
            "ratio_to_hello": ratio_of_rounds(runs, "polysms", "hello"),
            "baseline_ratio_to_hello": ratio_of_rounds(runs, "baseline", "hello"),
            # The Python side's CPU per request (gunicorn workers): steadier than req/s on a
            # busy machine.
            "cpu_ms_per_request": {
                name: median([r["cpu_ms_per_request"] for r in rs]) for name, rs in runs.items()
            },
            "peak_latency_ms": {
                name: {
                    "p50": median([r["p50_ms"] for r in rs]),
                    "p99": median([r["p99_ms"] for r in rs]),
                }
                for name, rs in runs.items()
            },
            "half_peak_open_loop": half,
            **(
                {
                    "against": {
                        "revision": args.against,
                        "peak_requests_per_s": peak["against"],
                        "ratio_to_against": ratio_of_rounds(runs, "polysms", "against"),
                        "against_ratio_to_baseline": ratio_of_rounds(runs, "against", "baseline"),
                        "cpu_per_request_to_against": _cpu_ratio(runs, "polysms", "against"),
                    }
                }
                if args.against
                else {}
            ),
            "errors": errors,
            "runs": runs,
            "targets": {
                "ratio_at_least_0.7": ratio_of_rounds(runs, "polysms", "baseline") >= 0.7,
                "p99_under_50ms_at_half_peak": half["polysms"]["p99_ms"] < 50,
            },
        }
    )
    emit(result)


if __name__ == "__main__":
    main()
