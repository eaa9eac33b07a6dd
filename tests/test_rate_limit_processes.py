"""The outbound rate limit is per project across server processes when it is kept in Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flask_polysms.testing import provision

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/outbound-sms",
        data=json.dumps({"user_number": "+14155552672", "message": "hi"}).encode(),
        headers={**headers, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def servers(env: dict[str, str], count: int):
    ports = [free_port() for _ in range(count)]
    cmd = [sys.executable, "-m", "flask", "--app", str(HERE / "ratelimit_app.py"), "run"]
    procs = [
        subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    deadline = time.monotonic() + 30
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
    return ports, procs


def load_factory():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ratelimit_app", HERE / "ratelimit_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create_app


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "memory"])
def test_two_server_processes_share_the_project_limit_through_redis(
    tmp_path, redis_conn, redis_url, monkeypatch, shared
):
    """4 per minute per project: with Redis storage two processes together allow 4 requests of a
    project (the 5th is a 429, another project is untouched); with memory:// each process counts
    on its own, so they allow 8 — the control that shows the test can tell the difference."""
    env = {
        **os.environ,
        "RL_TEST_STORAGE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "RL_TEST_LIMIT_STORAGE_URL": redis_url if shared else "memory://",
    }
    for name in ("RL_TEST_STORAGE_URL", "RL_TEST_LIMIT_STORAGE_URL"):
        monkeypatch.setenv(name, env[name])
    app = load_factory()()
    first = provision(app, numbers=("+14155552671",))
    second = provision(app, numbers=("+14155552673",), project_name="other")
    ports, procs = servers(env, 2)
    try:
        statuses = [post(ports[i % 2], first.headers) for i in range(8)]
        other = post(ports[0], second.headers)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    if shared:
        assert statuses == [202] * 4 + [429] * 4
    else:
        assert statuses == [202] * 8
    assert other == 202
