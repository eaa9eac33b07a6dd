"""What every benchmark shares: the services' URLs, gunicorn, wrk, a paced load and JSON output.

Everything runs on this machine and talks to loopback addresses only. Request loops are bounded
in count and time. Baselines and the extension are measured in the same run, alternately, so a
busy machine slows both alike and the ratios stay meaningful.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
PG_URL = os.environ.get(
    "POLYSMS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/polysms_bench"
)
# Not the tests' database (15): the test suite flushes that one.
REDIS_URL = os.environ.get("POLYSMS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
QUEUE = "polysms-bench"
SECRET_KEY = "bench-secret"
#: The Fernet key the benchmark app encrypts Auth Tokens with (an app outside debug needs one).
ENCRYPTION_KEY = "dMNOlYNhCuKwH-ZYn7106kPfZ9WPjhBc5U2KtgI0sXw="


def log(*parts: object) -> None:
    """Progress on stderr: stdout carries the JSON result only."""
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """Print the benchmark's result as JSON on stdout."""
    print(json.dumps(result, indent=2, default=str))


def machine() -> dict:
    """What the figures were measured on."""
    import flask
    import peewee
    import redis
    import rq

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "flask": flask.__version__ if hasattr(flask, "__version__") else "",
        "peewee": peewee.__version__,
        "rq": rq.__version__ if hasattr(rq, "__version__") else rq.VERSION,
        "redis_py": redis.__version__,
    }
    try:
        from importlib.metadata import version

        info["flask"] = version("flask")
        info["gunicorn"] = version("gunicorn")
    except Exception:  # gunicorn is only needed by the HTTP benchmarks
        pass
    try:
        info["postgresql"] = subprocess.run(
            ["psql", _pg_dsn(), "-Atc", "show server_version"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from redis import Redis

        info["redis"] = Redis.from_url(REDIS_URL).info("server")["redis_version"]
    except Exception:
        pass
    return info


def _pg_dsn() -> str:
    return PG_URL.replace("postgresql+pool://", "postgresql://")


def reset_services() -> None:
    """Empty the benchmark database's polysms tables and the benchmark Redis database."""
    from redis import Redis

    from flask_polysms.backends import create_store

    store = create_store(PG_URL)
    store.drop_schema()
    store.create_schema()
    store.close()
    Redis.from_url(REDIS_URL).flushdb()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def gunicorn(app_spec: str, env: dict[str, str] | None = None, workers: int = 2) -> Iterator[int]:
    """Serve ``module:factory()`` from benchmarks/ with gunicorn's sync workers; yields the port."""
    if shutil.which("gunicorn") is None and not (Path(sys.executable).parent / "gunicorn").exists():
        raise SystemExit("gunicorn is missing: pip install -e '.[bench]'")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(HERE),
        "--log-level",
        "warning",
        "--backlog",
        "2048",
        app_spec,
    ]
    # The app's public URL is where it is served (signatures are checked over it).
    served = {"POLYSMS_BENCH_SERVED_URL": f"http://127.0.0.1:{port}"}
    process = subprocess.Popen(command, env={**os.environ, **served, **(env or {})})
    SERVERS[port] = process.pid
    try:
        wait_for_port(port)
        yield port
    finally:
        SERVERS.pop(port, None)
        _stop(process)


#: The gunicorn master serving each port (see :func:`served_cpu_seconds`).
SERVERS: dict[int, int] = {}


def served_cpu_seconds(port: int) -> float:
    """CPU time used so far by the gunicorn workers serving ``port`` (the master idles).

    Unlike requests per second, CPU time per request hardly moves with what else the machine
    runs: it prices the Python side of a request (the database and Redis servers excluded).
    """
    master = SERVERS[port]
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that ended meanwhile
        if int(fields[1]) == master:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextmanager
def checkout(revision: str) -> Iterator[str]:
    """Another commit of the project in a temporary git worktree; yields its path, which
    ``POLYSMS_BENCH_CODE`` given to :func:`gunicorn` serves instead of this checkout's code."""
    root = HERE.parent
    path = Path(tempfile.mkdtemp(prefix="polysms-against-"))
    subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    try:
        # Installed, the store backends are the package flask_polysms.backends (setup.cfg maps
        # the top-level backends/ there); a plain checkout needs the same name.
        (path / "flask_polysms" / "backends").symlink_to("../backends")
        yield str(path)
    finally:
        subprocess.run(
            ["git", "-C", str(root), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(path, ignore_errors=True)


def _next_redis_db(url: str) -> str:
    """The same Redis server's next database (``.../11`` → ``.../12``)."""
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) + 1}"


#: Where the other commit's side of a side-by-side run keeps its data: a database of its own,
#: whose schema its own code creates (a newer schema's indexes would slow the older code's
#: writes), and the next Redis database, so neither side's queue grows with the other's jobs.
AGAINST_ENV = {
    "POLYSMS_BENCH_POSTGRES_URL": PG_URL + "_against",
    "POLYSMS_BENCH_REDIS_URL": _next_redis_db(REDIS_URL),
}


def against_env(code: str) -> dict[str, str]:
    """The environment that runs ``code`` (a :func:`checkout`) on its own data."""
    return {"POLYSMS_BENCH_CODE": code, **AGAINST_ENV}


def prepare_against(code: str, **provision_args: object) -> dict:
    """In a child process running ``code``: create its database if missing, empty it and its
    Redis database, create its schema and provision a tenant (``provision_args``: those of
    ``flask_polysms.testing.provision``); returns the tenant's fields (``headers``...)."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), "prepare", json.dumps(provision_args)],
        env={**os.environ, **against_env(code)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"preparing {code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _create_database_if_missing() -> None:
    import psycopg2

    name = _pg_dsn().rsplit("/", 1)[1]
    connection = psycopg2.connect(_pg_dsn().rsplit("/", 1)[0] + "/postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def _prepare_main(provision_args: dict) -> None:
    """``prepare_against``'s child: its code is the one polysms_app imports."""
    import dataclasses

    import polysms_app

    from flask_polysms.testing import provision

    _create_database_if_missing()
    reset_services()
    tenant = provision(polysms_app.create_app(), **provision_args)
    print(json.dumps(dataclasses.asdict(tenant)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def emulator(account_sid: str, auth_token: str, *options: str) -> Iterator[tuple[str, int]]:
    """The Twilio emulator in its own process (``options``: more command-line arguments);
    yields its base URL and its pid."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flask_polysms.emulator",
            "--port",
            str(port),
            "--account",
            f"{account_sid}:{auth_token}",
            *options,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        _stop(process, signal.SIGINT)


# -- load: wrk for peak throughput ----------------------------------------------------------------
WRK_REPORT = """
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {"requests": %d, "seconds": %.6f, "connect_errors": %d, "read_errors": %d, '
    .. '"write_errors": %d, "timeouts": %d, "non_2xx": %d, '
    .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\\n',
    summary.requests, summary.duration / 1e6, errors.connect, errors.read, errors.write,
    errors.timeout, errors.status,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def wrk(url: str, lua_body: str, *, connections: int, seconds: float, threads: int = 1) -> dict:
    """Closed-loop peak load: ``connections`` connections for ``seconds``; returns the summary.

    ``lua_body`` defines wrk's ``request``/``init`` hooks; the report hook is added here.
    """
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_body + "\n" + WRK_REPORT)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(connections),
                "-d",
                f"{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    finally:
        os.unlink(script.name)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            result = json.loads(line[len("WRK_JSON ") :])
            result["requests_per_s"] = round(result["requests"] / result["seconds"], 1)
            return result
    raise RuntimeError(f"wrk printed no report:\n{out.stdout}\n{out.stderr}")


def lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for ASCII


# -- load: an open-loop paced generator for latency at a fixed rate -----------------------------
def paced(
    port: int,
    build: Callable[[int], tuple[str, str, bytes, dict[str, str]]],
    *,
    rate: float,
    seconds: float,
    concurrency: int = 64,
) -> dict:
    """Send ``rate`` requests/s for ``seconds``, each at its scheduled time (open loop).

    Latency counts from the scheduled time, so a server that falls behind shows it in the tail
    instead of slowing the generator down (no coordinated omission). ``build(i)`` returns
    (method, path, body, headers) for request ``i``.
    """
    total = int(rate * seconds)
    start = time.perf_counter() + 0.2
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    next_index = iter(range(total))

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            method, path, body, headers = build(i)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                conn.close()
            except OSError:
                status = 0
            elapsed = time.perf_counter() - scheduled
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "target_rate": round(rate, 1),
        "requests": total,
        "achieved_rate": round(total / wall, 1),
        "statuses": statuses,
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p90_ms": round(percentile(latencies, 90) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
    }


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(ours: float, baseline: float) -> float | None:
    return round(ours / baseline, 3) if baseline else None


def ratio_of_rounds(runs: dict[str, list[dict]], ours: str, baseline: str) -> float:
    """The median over rounds of ours/baseline requests per second (each round ran both)."""
    return round(
        median(
            [
                a["requests_per_s"] / b["requests_per_s"]
                for a, b in zip(runs[ours], runs[baseline], strict=True)
                if b["requests_per_s"]
            ]
        ),
        3,
    )


if __name__ == "__main__" and sys.argv[1:2] == ["prepare"]:
    sys.path.insert(0, str(HERE))
    _prepare_main(json.loads(sys.argv[2]))
