"""The README's quick start, followed as written in a fresh venv: run the example app, run the
printed curl, see 202 and the message arrive at the (embedded) Twilio emulator."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_quick_start_has_exactly_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "flask --app example_app run" in commands[0]
    assert "pytest" in commands[1]


@pytest.mark.slow
def test_quick_start_runs_and_the_printed_curl_works(tmp_path):
    run_command = quick_start_commands()[0]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POLYSMS_", "TWILIO_"))},
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "FLASK_RUN_PORT": str(port),
        "EXAMPLE_APP_INSTANCE": str(tmp_path / "instance"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    log = (tmp_path / "app.log").open("w")
    app = subprocess.Popen(
        ["bash", "-c", run_command],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output = ""
        deadline = time.monotonic() + 600
        while "Running on" not in output:
            assert app.poll() is None, output
            assert time.monotonic() < deadline, output
            time.sleep(0.5)
            output = (tmp_path / "app.log").read_text()
        curl = next(
            line.strip() for line in output.splitlines() if line.strip().startswith("curl ")
        )
        result = subprocess.run(
            [*shlex.split(curl), "-s", "-o", "-", "-w", "\n%{http_code}"],
            capture_output=True,
            text=True,
            check=True,
        )
        body, status = result.stdout.rsplit("\n", 1)
        assert status == "202", result.stdout
        accepted = json.loads(body)
        emulator = re.search(r"Twilio emulator: (\S+)", output).group(1)
        demo = json.loads((tmp_path / "instance" / "demo.json").read_text())
        sid, token = demo["twilio_account_sid"], demo["twilio_auth_token"]
        request = urllib.request.Request(
            f"{emulator}/2010-04-01/Accounts/{sid}/Messages.json",
            headers={
                "Authorization": "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()
            },
        )
        received = []
        for _ in range(100):  # the thread scheduler sends in the background
            with urllib.request.urlopen(request, timeout=5) as response:
                received = json.load(response)["messages"]
            if received:
                break
            time.sleep(0.1)
        assert [(m["to"], m["from"]) for m in received] == [
            (accepted["user_number"], accepted["agent_number"])
        ]
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        app.wait(timeout=30)
        log.close()
