"""Where a slow request's time goes, seen from inside the server: the benchmark app's per-request
timing, switched on with ``POLYSMS_BENCH_TRACE=<folder>`` (``--trace`` of the HTTP benchmarks).

Each gunicorn worker writes one line per request to ``<folder>/<pid>.jsonl``: when it started
(wall clock), how long the app took, the CPU time the worker spent in it, and the garbage
collector's pauses inside it (by generation). :func:`summary` reads the folder after a run and
says what the slow requests had in common, beside the latency the load generator saw: a tail
the server does not show was spent waiting for a worker (or in the load generator).
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

from harness import median, percentile

SLOW_MS = 25.0


class Traced:
    """WSGI middleware that records every request's timing (see the module's docstring)."""

    def __init__(self, app, folder: str) -> None:
        self.app = app
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = None
        self._gc_started = 0.0
        self._gc_ms = [0.0, 0.0, 0.0]
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._gc_ms[info["generation"]] += (time.perf_counter() - self._gc_started) * 1000

    def __call__(self, environ, start_response):
        if self._file is None:  # opened in the worker (after gunicorn's fork)
            self._file = (self.folder / f"{os.getpid()}.jsonl").open("a", buffering=1)
        self._gc_ms = [0.0, 0.0, 0.0]
        wall, began, cpu = time.time(), time.perf_counter(), time.process_time()
        try:
            return self.app(environ, start_response)
        finally:
            line = {
                "at": wall,
                "ms": round((time.perf_counter() - began) * 1000, 3),
                "cpu_ms": round((time.process_time() - cpu) * 1000, 3),
                "gc_ms": [round(ms, 3) for ms in self._gc_ms],
            }
            self._file.write(json.dumps(line) + "\n")


def summary(folder: str, since: float = 0.0) -> dict:
    """What the workers recorded from ``since`` (wall clock) on: the server-side latency
    percentiles, and the requests over SLOW_MS with what they spent collecting garbage and on
    the CPU."""
    lines = []
    for path in Path(folder).glob("*.jsonl"):
        for raw in path.read_text().splitlines():
            line = json.loads(raw)
            if line["at"] >= since:
                lines.append(line)
    if not lines:
        return {"requests": 0}
    took = sorted(line["ms"] for line in lines)
    slow = [line for line in lines if line["ms"] > SLOW_MS]
    collected = [line for line in lines if sum(line["gc_ms"]) > 0]
    return {
        "requests": len(lines),
        "server_p50_ms": round(percentile(took, 50), 2),
        "server_p99_ms": round(percentile(took, 99), 2),
        "server_max_ms": round(took[-1], 2),
        "requests_over_slow_ms": len(slow),
        "slow_ms": SLOW_MS,
        "slow_with_gc_pause": sum(1 for line in slow if sum(line["gc_ms"]) > 1),
        "slow_median_cpu_share": round(median([line["cpu_ms"] / line["ms"] for line in slow]), 2)
        if slow
        else None,
        "gc_pauses_by_generation": [
            sum(1 for line in lines if line["gc_ms"][g] > 0) for g in range(3)
        ],
        "gc_pause_max_ms_by_generation": [
            round(max((line["gc_ms"][g] for line in collected), default=0.0), 2) for g in range(3)
        ],
    }
