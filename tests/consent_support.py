"""Shared by the consent tests: the numbers, an agent that records what it is given, the
harness on every backend with a second project beside it, and the helpers that send an inbound
message and read the opt-out state and history."""

from __future__ import annotations

import pytest
import store_backends
from store_backends import BACKENDS

AGENT = "+14155552671"
OTHER_AGENT = "+14155552672"
FOREIGN_AGENT = "+14155552673"
USER = "+14155552674"
OTHER_USER = "+14155552675"


@pytest.fixture(name="storage_url", params=BACKENDS)
def storage_url_fixture(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


class Agent:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, conv, text):
        self.calls.append(text)
        return f"agent: {text}"


@pytest.fixture(name="agent")
def agent_fixture() -> Agent:
    return Agent()


@pytest.fixture(name="sms")
def sms_fixture(make_sms, storage_url, agent):
    harness = make_sms(agent=agent, numbers=(AGENT, OTHER_AGENT), POLYSMS_STORAGE_URL=storage_url)
    yield harness
    harness.store.disconnect()  # pooled server connections: not left to the garbage collector


@pytest.fixture(name="other")
def other_fixture(sms):
    """Another account's project on the same app, with a number of its own."""
    return sms.provision(numbers=(FOREIGN_AGENT,))


def opted_out(sms, user: str = USER, sender: str = AGENT) -> bool:
    with sms.app.app_context():
        return sms.store.is_opted_out(user, sender)


def inbound(sms, body: str, *, user: str = USER, to: str = AGENT, **extra: str) -> None:
    params = {**sms.inbound_params(user, body, to=to), **extra}
    response = sms.post_signed("/v1/twilio/sms", params)
    assert response.status_code == 200, response.get_data(as_text=True)


def history(sms, user: str = USER, tenant=None, **query) -> list[dict]:
    events, cursor = [], None
    while True:
        params = {"user_number": user, **query, **({"cursor": cursor} if cursor else {})}
        response = sms.client.get(
            "/v1/opt-outs/history", query_string=params, headers=(tenant or sms.tenant).headers
        )
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        events.extend(page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            return events
