"""The README's production section works as written, from a clean checkout.

Its commands are read from README.md itself (so a missing step fails here), with only the hosts
swapped for this machine's: the exports and ``init-db`` run in bash, the emulator runs as the
staging section says, the Procfile's web (gunicorn), worker and sweep lines run as processes, a
tenant is made with the README's CLI commands, and a message sent with the README's curl request
reaches the emulator and comes back ``delivered``.
"""

from __future__ import annotations

import configparser
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

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ACCOUNT_SID = "AC" + "7e" * 16
AUTH_TOKEN = "readme-production-token-0123456"
AGENT = "+14155552671"
USER = "+14155552672"

pytestmark = [pytest.mark.slow]


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(section: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", section, flags=re.S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


def _extras() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return set(parser["options.extras_require"])


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A clean clone of the committed tree (what a newcomer or CI has)."""
    target = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    return target


def test_the_production_section_works_as_written(
    checkout, fresh_postgres_url, redis_url, redis_conn, tmp_path
):
    pytest.importorskip("gunicorn")
    production = _section("Production")
    blocks = _blocks(production)
    setup = next(b for b in blocks if "export POLYSMS_PUBLIC_URL" in b)
    procfile = next(b for b in blocks if b.startswith("web:"))
    staging = next(b for b in blocks if "flask_polysms.emulator" in b)
    templates = next(b for b in blocks if "create-template" in b)

    # The install line names extras that exist, and gunicorn.
    [install] = [line for line in setup.splitlines() if line.startswith("pip install")]
    extras = set(re.search(r"\[([a-z,]+)\]", install).group(1).split(","))
    assert extras <= _extras() and {"postgres", "rq"} <= extras
    assert "gunicorn" in install

    web_port, emulator_port = _free_port(), _free_port()
    public_url = f"http://127.0.0.1:{web_port}"
    script = "\n".join(line for line in setup.splitlines() if not line.startswith("pip install"))
    script = (
        script.replace("https://sms.example.com", public_url)
        .replace("postgresql://polysms@db/polysms", fresh_postgres_url)
        .replace("redis://redis:6379/0", redis_url)
    )
    assert fresh_postgres_url in script and redis_url in script  # the README still names them
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLYSMS_", "FLASK_", "PYTEST"))
    }
    base_env.update(PATH=f"{Path(sys.executable).parent}:{base_env.get('PATH', '')}")
    base_env["EXAMPLE_APP_INSTANCE"] = str(tmp_path / "instance")
    done = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}\nenv -0"],
        cwd=checkout,
        env=base_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    env = dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
    for name in ("SECRET_KEY", "POLYSMS_ENCRYPTION_KEYS", "POLYSMS_PUBLIC_URL"):
        assert env.get(name), f"the README's production block does not export {name}"
    # The staging section's emulator, and the app pointed at it as that section says.
    emulator_line = staging.split("emulator:", 1)[1].strip()
    emulator_cmd = shlex.split(
        emulator_line.replace("0.0.0.0", "127.0.0.1")
        .replace("8999", str(emulator_port))
        .replace("ACxxxxxxxx:TOKEN", f"{ACCOUNT_SID}:{AUTH_TOKEN}")
    )
    env["POLYSMS_TWILIO_BASE_URL"] = f"http://127.0.0.1:{emulator_port}"

    def cli(*args: str) -> str:
        result = subprocess.run(
            ["flask", "--app", "example_app", "polysms", *args],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout.strip()

    processes: list[subprocess.Popen] = []

    def start(command: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(
            command,
            cwd=checkout,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        processes.append(process)
        return process

    lines = dict(line.split(":", 1) for line in procfile.strip().splitlines())
    try:
        start(emulator_cmd)
        web = lines["web"].strip().replace("0.0.0.0:8000", f"127.0.0.1:{web_port}")
        start(shlex.split(web))
        start(shlex.split(lines["worker"].strip()))
        _wait_http(f"{public_url}/healthz")

        # A tenant, with the README's CLI commands (ids taken from what they print).
        account = cli("create-account", "Acme").split()[-1]
        project = cli("create-project", account, "Reminders").split()[-1]
        cli("connect-twilio", project, ACCOUNT_SID, "--auth-token", AUTH_TOKEN)
        cli("add-number", project, AGENT, "--environment", "live")
        connector = cli("create-connector", project, "--environment", "live").split()[-1]
        api_key = cli("create-api-key", account).split()[-1]
        # The README's template commands, for this project.
        made = subprocess.run(
            ["bash", "-c", f"set -euo pipefail\n{templates.replace('PROJECT_ID', project)}"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr

        request = urllib.request.Request(
            f"{public_url}/v1/outbound-sms",
            data=json.dumps({"user_number": USER, "message": "From the README"}).encode(),
            headers={
                "X-PolyAi-Auth-Token": api_key,
                "X-TOKEN-ID": connector,
                "Content-Type": "application/json",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            conversation_id = json.loads(response.read())["conversation_id"]

        # The sweep line's command, once, as cron would run it.
        sweep = re.search(r"(flask --app example_app polysms sweep)", lines["sweep"]).group(1)
        subprocess.run(shlex.split(sweep), cwd=checkout, env=env, check=True, timeout=60)

        def status() -> str:
            req = urllib.request.Request(
                f"{public_url}/v1/conversations/{conversation_id}",
                headers={"X-PolyAi-Auth-Token": api_key, "X-TOKEN-ID": connector},
            )
            with urllib.request.urlopen(req, timeout=10) as answer:
                return json.loads(answer.read())["messages"][0]["status"]

        deadline = time.monotonic() + 60
        while status() != "delivered" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert status() == "delivered"
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
