"""The per-project request budget of every authenticated route (``POLYSMS_READ_RATE_LIMIT``).

Counted after authentication, keyed on the project: 429 ``{"detail"}`` with ``Retry-After`` once
the budget is spent; an unauthenticated request spends nothing; projects do not share a budget;
the outbound limit (``POLYSMS_RATE_LIMIT``) is counted apart, in the same storage.
"""

from __future__ import annotations

import logging
import re

import pytest

from flask_polysms.config import DEFAULTS, ConfigError, ConfigVars
from flask_polysms.services.state import get_state
from flask_polysms.services.tenancy import AUTH_HEADER

USER = "+14155552674"
OTHER_NUMBER = "+14155552678"


def spent(response) -> None:
    """A 429 of the request budget, in the one error shape, with a usable Retry-After."""
    assert response.status_code == 429, response.get_data(as_text=True)
    assert set(response.get_json()) == {"detail"}
    assert "request budget" in response.get_json()["detail"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def get_conversations(sms, tenant=None):
    return sms.client.get("/v1/conversations", headers=(tenant or sms.tenant).headers)


def test_the_default_budget_is_100_per_second(make_sms):
    sms = make_sms()

    assert DEFAULTS[ConfigVars.READ_RATE_LIMIT] == "100 per second"
    assert sms.app.config["POLYSMS_READ_RATE_LIMIT"] == "100 per second"
    assert sms.state.settings.read_rate_limit == "100 per second"


def test_a_bad_budget_is_refused_at_start_up(make_sms):
    with pytest.raises(ConfigError, match="POLYSMS_READ_RATE_LIMIT"):
        make_sms(POLYSMS_READ_RATE_LIMIT="plenty")


def test_reads_over_the_budget_are_429_with_retry_after(make_sms):
    sms = make_sms(POLYSMS_READ_RATE_LIMIT="3 per minute")

    answers = [get_conversations(sms) for _ in range(3)]
    over = get_conversations(sms)

    assert [r.status_code for r in answers] == [200, 200, 200]
    spent(over)


def test_one_budget_for_every_route_of_the_project(make_sms):
    sms = make_sms(POLYSMS_READ_RATE_LIMIT="4 per minute", POLYSMS_RATE_LIMIT="100 per minute")
    headers = sms.tenant.headers

    assert sms.send(USER).status_code == 202
    assert sms.client.get("/v1/sms/metrics", headers=headers).status_code == 200
    assert sms.client.get("/v1/senders", headers=headers).status_code == 200
    assert sms.client.get("/v1/sms-templates", headers=headers).status_code == 200

    spent(get_conversations(sms))
    spent(sms.send(USER))


def test_projects_do_not_share_a_budget(make_sms):
    sms = make_sms(POLYSMS_READ_RATE_LIMIT="2 per minute")
    other = sms.provision(numbers=(OTHER_NUMBER,))
    for _ in range(2):
        assert get_conversations(sms).status_code == 200
    spent(get_conversations(sms))

    assert get_conversations(sms, other).status_code == 200


def test_a_refused_caller_spends_nothing(make_sms):
    sms = make_sms(POLYSMS_READ_RATE_LIMIT="2 per minute")
    wrong_key = {**sms.tenant.headers, AUTH_HEADER: "not-a-key"}
    for _ in range(5):
        assert sms.client.get("/v1/conversations", headers=wrong_key).status_code == 401

    assert [get_conversations(sms).status_code for _ in range(2)] == [200, 200]


def test_the_outbound_limit_is_counted_apart(make_sms):
    # The same limit string for both: counted on one key, two sends would already be four hits.
    sms = make_sms(POLYSMS_READ_RATE_LIMIT="3 per minute", POLYSMS_RATE_LIMIT="3 per minute")

    assert [sms.send(USER).status_code for _ in range(2)] == [202, 202]
    assert get_conversations(sms).status_code == 200
    spent(get_conversations(sms))


def _authenticated_operations(sms) -> list[tuple[str, str]]:
    """(method, path) of every operation the OpenAPI document says needs the API key."""
    spec = sms.client.get("/v1/openapi.json").get_json()
    found = []
    for path, item in spec["paths"].items():
        shared = {p.get("name") for p in item.get("parameters", [])}
        for method, operation in item.items():
            if method == "parameters":
                continue
            names = shared | {p.get("name") for p in operation.get("parameters", [])}
            if AUTH_HEADER in names:
                found.append((method.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    return found


def test_every_authenticated_route_has_the_budget(make_sms):
    sms = make_sms(POLYSMS_READ_RATE_LIMIT="1 per minute", POLYSMS_RATE_LIMIT="100 per minute")
    operations = _authenticated_operations(sms)
    assert ("GET", "/v1/conversations") in operations and len(operations) >= 8

    for method, path in operations:
        tenant = sms.provision(numbers=())  # a fresh budget for each route
        first = sms.client.open(path, method=method, json={}, headers=tenant.headers)
        second = sms.client.open(path, method=method, json={}, headers=tenant.headers)
        assert first.status_code != 429, (method, path)
        assert second.status_code == 429, (method, path, second.get_data(as_text=True))
        spent(second)


def test_the_budget_is_shared_through_redis(make_sms, redis_conn, redis_url, tmp_path):
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    config = dict(
        POLYSMS_STORAGE_URL=store,
        POLYSMS_RATE_LIMIT_STORAGE_URL=redis_url,
        POLYSMS_READ_RATE_LIMIT="3 per minute",
    )
    first = make_sms(**config)
    second = make_sms(numbers=(), **config)  # another process would build its own objects

    assert [get_conversations(first).status_code for _ in range(2)] == [200, 200]
    assert get_conversations(second, first.tenant).status_code == 200
    spent(get_conversations(second, first.tenant))
    spent(get_conversations(first))


def test_an_unreachable_budget_storage_lets_reads_through(make_sms, caplog):
    sms = make_sms(
        POLYSMS_RATE_LIMIT_STORAGE_URL="redis://127.0.0.1:1/0",
        POLYSMS_READ_RATE_LIMIT="1 per minute",
    )

    with caplog.at_level(logging.WARNING, logger="flask_polysms.rate_limits"):
        answers = [get_conversations(sms).status_code for _ in range(3)]

    assert answers == [200, 200, 200]
    assert "request budget not counted" in caplog.text
    assert get_state(sms.app).read_limiter.fail_open
