"""Shared by the operator and signal tests: the numbers, an agent that records what it is given,
the harness on every backend (memory, SQLite, PostgreSQL, MariaDB), a signal recorder, and the
helpers that call the operator routes and run the due timers."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import store_backends
from signal_recorder import Recorder
from store_backends import BACKENDS

from flask_polysms.services.state import get_state

AGENT = "+14155552671"
USER = "+14155552674"
START = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


class Agent:
    """Records each text it is given; ``action(conv, text)`` answers when set, else "Got it"."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.action = None

    def __call__(self, conv, text):
        self.texts.append(text)
        if self.action is not None:
            return self.action(conv, text)
        return "Got it"


@pytest.fixture(name="storage_url", params=BACKENDS)
def storage_url_fixture(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


@pytest.fixture(name="agent")
def agent_fixture() -> Agent:
    return Agent()


@pytest.fixture(name="sms")
def sms_fixture(make_sms, storage_url, agent):
    harness = make_sms(agent=agent, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url)
    yield harness
    get_state(harness.app).store.disconnect()


@pytest.fixture(name="recorder")
def recorder_fixture(sms):
    recorder = Recorder(sms.app)
    yield recorder
    recorder.disconnect()


def post(sms, conversation_id: str, action: str, body=None, tenant=None, headers=None):
    return sms.client.post(
        f"/v1/conversations/{conversation_id}/{action}",
        json=body,
        headers={**(tenant or sms.tenant).headers, **(headers or {})},
    )


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def fire(sms) -> int:
    return sms.run_due_timers()
