"""A newcomer's first ten minutes, in a real browser against the real development server.

``flask --app example_app run --port N`` on a free port (a temporary instance folder, nothing else
configured), the banner's curl run as printed, then headless Chromium: sign in to the dashboard
with the banner's key and connector, see the reminder delivered (the emulator's status callback
found the server on port N), reply from the phone simulator, and see the agent's answer arrive.

Screenshots go to ``test-output/screenshots/newcomer-*.png``. Without Chromium (or Playwright) the
test skips with the reason; under ``CI=true`` it fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-output" / "screenshots"
START_TIMEOUT = 60.0
CONFIRMED = "Your appointment at Sunrise Clinic is confirmed for tomorrow at 10:00. See you then!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``flask --app example_app run --port N`` as a newcomer starts it, and what it printed."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "server.log"
        self.instance = tmp_path / "instance"
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("POLYSMS_", "TWILIO_", "FLASK_", "WERKZEUG_", "EXAMPLE_APP_"))
        }
        env["EXAMPLE_APP_INSTANCE"] = str(self.instance)
        flask = Path(sys.executable).with_name("flask")
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [str(flask), "--app", "example_app", "run", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_until_serving(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while "Running on" not in self.output():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.2)
        return self.output()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self._log.close()


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    running = Server(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"newcomer-{name}.png"), full_page=True)


def reload_until(page, ready: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Reload until ``ready()``: the thread scheduler and the emulator work in the background."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.3)
        page.reload()


def banner_value(output: str, label: str) -> str:
    return re.search(rf"^\s*{label}:\s+(\S+)", output, re.M).group(1)


def test_the_newcomer_path(server, page):
    from playwright.sync_api import expect

    output = server.wait_until_serving()
    base_url = f"http://127.0.0.1:{server.port}"

    # The banner names the port the server was started on, and its curl works as printed.
    curl = next(line.strip() for line in output.splitlines() if line.strip().startswith("curl "))
    assert curl.startswith(f"curl -X POST {base_url}/v1/outbound-sms "), output
    result = subprocess.run(
        [*shlex.split(curl), "-s", "-o", "-", "-w", "\n%{http_code}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "202", result.stdout
    accepted = json.loads(body)
    user = accepted["user_number"]

    # Sign in with what the banner printed.
    page.goto(banner_value(output, "Dashboard"))
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in"))
    page.fill("input[name=api_key]", banner_value(output, "API key"))
    page.fill("input[name=connector_id]", banner_value(output, "Connector"))
    page.click("#sign-in-form button[type=submit]")
    expect(page).to_have_url(f"{base_url}/dashboard/")

    # The reminder, delivered: Twilio's (the emulator's) callbacks came back to port N.
    page.goto(f"{base_url}/dashboard/conversations/{accepted['conversation_id']}")
    expect(page.locator("#message-list")).to_contain_text("Sunrise Clinic")
    statuses = page.locator("#message-list [data-status]")
    reload_until(page, lambda: statuses.all_inner_texts() == ["delivered"], "delivery")
    shot(page, "1-delivered")

    # The user's phone: the reminder is there; the user confirms.
    page.click(f"text=Open {user}'s phone in the simulator")
    thread = page.locator("#phone-thread")
    expect(thread).to_contain_text("Reply 1 to confirm")
    page.fill("#reply-form input[name=body]", "1")
    page.click("#reply-button")
    expect(page.locator(".flash-ok")).to_contain_text("Sent '1'")
    expect(page.locator("#phone-thread .bubble.sent")).to_have_text(re.compile(r"\b1\b"))
    received = page.locator("#phone-thread .bubble.received .text")
    reload_until(page, lambda: CONFIRMED in received.all_inner_texts(), "the agent's answer")
    shot(page, "2-answered")

    # And in the conversation: the user's 1 and the agent's confirmation, sent.
    page.goto(f"{base_url}/dashboard/conversations/{accepted['conversation_id']}")
    rows = page.locator("#message-list tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(1)).to_contain_text("1")
    expect(rows.nth(2)).to_contain_text(CONFIRMED)
    shot(page, "3-conversation")
    assert page.problems == []
    assert "Traceback" not in server.output()
