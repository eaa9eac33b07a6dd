"""Every benchmark with a target, one after the other, summed up in one JSON line.

``python benchmarks/run_all.py --quick`` checks a change in one command (about three minutes on a
two-core machine): the outbound and inbound HTTP benchmarks and the worker benchmark, each in
short rounds, and prints one line: every ratio to its baseline, the p99 at half of the peak, the
CPU per request, and whether each target holds. Without ``--quick`` each benchmark runs at its own
defaults (about six minutes). ``--against REV`` also serves another commit beside the outbound
benchmark's. Each benchmark's whole report goes to ``--out DIR`` when given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Per benchmark: its arguments in a quick run (few, short rounds; still medians of three).
QUICK = {
    "outbound": ["--rounds", "3", "--seconds", "2", "--paced-seconds", "4"],
    "inbound": ["--rounds", "3", "--seconds", "2", "--paced-seconds", "4"],
    "worker": ["--rounds", "3", "--messages", "300", "--noop-jobs", "600", "--fork-jobs", "60"],
}

#: The targets the issues set, checked on this run's figures.
TARGETS = {
    "outbound_ratio": 0.8,
    "inbound_ratio": 0.75,
    "worker_ratio": 0.7,
    "p99_half_peak_ms": 25.0,
}


def run(name: str, extra: list[str]) -> dict:
    """Run ``bench_<name>.py`` with ``extra`` arguments; its JSON report."""
    command = [sys.executable, str(HERE / f"bench_{name}.py"), *extra]
    print(f"== {' '.join(command[1:])}", file=sys.stderr, flush=True)
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout)


def summary(reports: dict[str, dict], seconds: float) -> dict:
    """The one-line summary of the three reports."""
    outbound, inbound, worker = reports["outbound"], reports["inbound"], reports["worker"]
    line = {
        "outbound_ratio": outbound["ratio_to_baseline"],
        "outbound_p99_half_peak_ms": outbound["half_peak_open_loop"]["polysms"]["p99_ms"],
        "outbound_baseline_p99_half_peak_ms": outbound["half_peak_open_loop"]["baseline"]["p99_ms"],
        "outbound_cpu_ms_per_request": outbound.get("cpu_ms_per_request", {}).get("polysms"),
        "inbound_ratio": inbound["ratio_to_baseline"],
        "inbound_p99_half_peak_ms": inbound["half_peak_open_loop"]["polysms"]["p99_ms"],
        "inbound_baseline_p99_half_peak_ms": inbound["half_peak_open_loop"]["baseline"]["p99_ms"],
        **{
            f"{name}_server_p99_half_peak_ms": report["half_peak_open_loop"]["polysms"][
                "inside_the_server"
            ].get("server_p99_ms")
            for name, report in (("outbound", outbound), ("inbound", inbound))
            if "inside_the_server" in report["half_peak_open_loop"]["polysms"]
        },
        "worker_ratio": worker["simple_worker"]["ratio_to_noop"],
        "forking_worker_ratio": worker["forking_worker"]["ratio_to_noop"],
    }
    if "against" in outbound:
        line["outbound_against"] = outbound["against"]
    line["targets"] = {
        "outbound_ratio_at_least_0.8": line["outbound_ratio"] >= TARGETS["outbound_ratio"],
        "inbound_ratio_at_least_0.75": line["inbound_ratio"] >= TARGETS["inbound_ratio"],
        "worker_ratio_at_least_0.7": line["worker_ratio"] >= TARGETS["worker_ratio"],
        "p99_half_peak_under_25ms": max(
            line["outbound_p99_half_peak_ms"], line["inbound_p99_half_peak_ms"]
        )
        < TARGETS["p99_half_peak_ms"],
    }
    line["load_average_at_start"] = outbound.get("machine", {}).get("load_average_at_start")
    line["seconds"] = round(seconds, 1)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (about 3 minutes)")
    parser.add_argument("--against", metavar="REV", help="outbound: also serve this commit")
    parser.add_argument("--out", type=Path, help="write each benchmark's report to this folder")
    parser.add_argument(
        "--trace", action="store_true", help="HTTP benchmarks: time each request inside the server"
    )
    args = parser.parse_args()
    started = time.monotonic()
    reports = {}
    for name in ("outbound", "inbound", "worker"):
        extra = list(QUICK[name]) if args.quick else []
        if name == "outbound" and args.against:
            extra += ["--against", args.against]
        if name != "worker" and args.trace:
            extra.append("--trace")
        reports[name] = run(name, extra)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.json").write_text(json.dumps(reports[name], indent=1))
    print(json.dumps(summary(reports, time.monotonic() - started)))


if __name__ == "__main__":
    main()
