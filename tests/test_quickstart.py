"""The README's quick start, followed as written in a fresh venv: run the example app, run the
printed curl, see 202 and the message arrive at the (embedded) Twilio emulator. Then the example
app on a port of its own, with the CLI beside it."""

from __future__ import annotations

import base64
import contextlib
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


@contextlib.contextmanager
def serving(command: list[str], env: dict, log_path: Path, *, wait_s: float):
    """Start ``command`` (a development server) in its own process group, logging to
    ``log_path``; yields the log once it says "Running on"; stopped (the whole group) after."""
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output = ""
            deadline = time.monotonic() + wait_s
            while "Running on" not in output:
                assert server.poll() is None, output
                assert time.monotonic() < deadline, output
                time.sleep(0.2)
                output = log_path.read_text()
            yield output
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def printed_curl(output: str) -> str:
    """The curl command the demo banner prints."""
    return next(line.strip() for line in output.splitlines() if line.strip().startswith("curl "))


def test_readme_quick_start_has_exactly_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "flask --app example_app run" in commands[0]
    # Running the example needs the package alone: the test extra (browsers, fuzzers) is for tests.
    assert "[test]" not in commands[0] and "pip install -e ." in commands[0]
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
    with serving(["bash", "-c", run_command], env, tmp_path / "app.log", wait_s=600) as output:
        curl = printed_curl(output)
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


def newcomer_env(tmp_path: Path) -> dict:
    """A shell with nothing configured but a temporary instance folder."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("POLYSMS_", "TWILIO_", "FLASK_", "WERKZEUG_", "EXAMPLE_APP_"))
    }
    env["EXAMPLE_APP_INSTANCE"] = str(tmp_path / "instance")
    return env


def api(base_url: str, path: str, headers: dict, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        base_url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.load(response)


def wait_for_status(base_url: str, headers: dict, conversation_id: str, status: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        _, conversation = api(base_url, f"/v1/conversations/{conversation_id}", headers)
        message = conversation["messages"][0]
        if message["status"] == status or time.monotonic() > deadline:
            return message
        time.sleep(0.2)


@pytest.mark.slow
def test_example_app_on_its_own_port_with_the_cli_beside_it(tmp_path):
    """`flask run --port N` (no FLASK_RUN_PORT): the banner, the callbacks and `flask polysms demo`
    all use port N; other commands print no banner; a tenant made with the CLI sends."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = newcomer_env(tmp_path)
    flask = str(Path(sys.executable).with_name("flask"))

    def flask_command(*args: str) -> str:
        done = subprocess.run(
            [flask, "--app", "example_app", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "flask-polysms demo (embedded" not in done.stdout + done.stderr  # no banner
        return done.stdout.strip()

    command = [flask, "--app", "example_app", "run", "--port", str(port)]
    with serving(command, env, tmp_path / "app.log", wait_s=120) as output:
        assert output.count("flask-polysms demo (embedded") == 1
        curl = printed_curl(output)
        assert curl.startswith(f"curl -X POST {base_url}/v1/outbound-sms "), output

        # The same curl again, from the CLI, while the server runs.
        demo = flask_command("polysms", "demo")
        assert demo.splitlines()[-1] == curl
        words = shlex.split(curl)
        headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
        status, accepted = api(base_url, "/v1/outbound-sms", headers, json.loads(words[-1]))
        assert status == 202
        # Delivered: the emulator's status callback found the server on port N.
        message = wait_for_status(base_url, headers, accepted["conversation_id"], "delivered")
        assert message["status"] == "delivered", message

        # A tenant made with the CLI, in other processes, sends through the running server.
        account = flask_command("polysms", "create-account", "Acme")
        assert re.fullmatch(r"acc_\w+", account)
        project = flask_command("polysms", "create-project", account, "Reminders")
        flask_command(
            "polysms", "connect-twilio", project, "AC" + "7c" * 16, "--auth-token", "t" * 32
        )
        flask_command("polysms", "add-number", project, "+14155550123")
        connector = flask_command("polysms", "create-connector", project)
        _, key = flask_command("polysms", "create-api-key", account).split()
        headers = {"X-PolyAi-Auth-Token": key, "X-TOKEN-ID": connector}
        body = {"user_number": "+14155552672", "message": "Your table is ready"}
        status, accepted = api(base_url, "/v1/outbound-sms", headers, body)
        assert status == 202
        message = wait_for_status(base_url, headers, accepted["conversation_id"], "delivered")
        assert message["status"] == "delivered", message
