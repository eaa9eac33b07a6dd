"""The per-project request budget of every authenticated route (``POLYSMS_READ_RATE_LIMIT``).

Counted after authentication, keyed on the project: 429 ``{"detail"}`` with ``Retry-After`` once
the budget is spent; an unauthenticated request spends nothing; projects do not share a budget;
the outbound limit (``POLYSMS_RATE_LIMIT``) is counted apart, in the same storage.
"""

from __future__ import annotations

import logging
import re

import pytest
from redis_commands import sent_to_redis

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


# -- the outbound route: budget and outbound limit counted together -------------------------------
@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.services)])
def limit_storage(request) -> dict:
    """Where the limits count: this process's memory, or the real Redis (one script call)."""
    if request.param == "memory":
        return {}
    request.getfixturevalue("redis_conn")  # an empty Redis database, or a skip with the reason
    return {"POLYSMS_RATE_LIMIT_STORAGE_URL": request.getfixturevalue("redis_url")}


def test_a_send_refused_by_the_budget_spends_no_outbound_limit(make_sms, limit_storage):
    sms = make_sms(
        POLYSMS_READ_RATE_LIMIT="2 per minute", POLYSMS_RATE_LIMIT="2 per minute", **limit_storage
    )
    assert sms.send(USER).status_code == 202
    assert get_conversations(sms).status_code == 200
    spent(sms.send(OTHER_NUMBER))  # over the budget: the outbound limit is not counted
    assert sms.store.list_sessions(sms.tenant.project_id, user_number=OTHER_NUMBER)[0] == []

    other = sms.provision(numbers=("+14155550150",))
    assert (
        sms.client.post(
            "/v1/outbound-sms", json={"user_number": USER, "message": "Hi"}, headers=other.headers
        ).status_code
        == 202
    )  # another project: its own budget and limit


def test_a_send_over_the_outbound_limit_has_spent_its_budget(make_sms, limit_storage):
    sms = make_sms(
        POLYSMS_READ_RATE_LIMIT="3 per minute", POLYSMS_RATE_LIMIT="1 per minute", **limit_storage
    )
    assert sms.send(USER).status_code == 202
    refused = sms.send(OTHER_NUMBER)
    assert refused.status_code == 429 and "rate limit" in refused.get_json()["detail"]
    assert get_conversations(sms).status_code == 200  # the third request of the budget
    spent(get_conversations(sms))


def test_a_bad_send_answers_in_the_order_of_every_route(make_sms, limit_storage):
    """The outbound route reads its caller late (with the senders): a refused body still comes
    after a bad key (401) and after a spent budget (429), and is counted against the budget."""
    sms = make_sms(POLYSMS_READ_RATE_LIMIT="2 per minute", **limit_storage)
    bad_body = {"user_number": "not a number", "message": ""}
    wrong_key = {**sms.tenant.headers, AUTH_HEADER: "not-a-key"}

    assert sms.client.post("/v1/outbound-sms", json=bad_body, headers=wrong_key).status_code == 401
    first = sms.client.post("/v1/outbound-sms", json=bad_body, headers=sms.tenant.headers)
    assert first.status_code == 400 and set(first.get_json()["errors"]) >= {"user_number"}
    assert get_conversations(sms).status_code == 200
    spent(sms.client.post("/v1/outbound-sms", json=bad_body, headers=sms.tenant.headers))
    spent(sms.send(USER))


@pytest.mark.services
def test_a_send_counts_both_limits_in_one_redis_call(make_sms, redis_conn, redis_url, monkeypatch):
    sms = make_sms(
        POLYSMS_RATE_LIMIT_STORAGE_URL=redis_url,
        POLYSMS_READ_RATE_LIMIT="50 per minute",
        POLYSMS_RATE_LIMIT="50 per minute",
    )
    assert sms.send(USER).status_code == 202  # the script is loaded on the first use
    with sent_to_redis(monkeypatch) as sent:
        assert sms.send(OTHER_NUMBER).status_code == 202

    assert len(sent) == 1 and b"EVALSHA" in sent[0], sent
    keys = sorted(k.decode() for k in redis_conn.keys("LIMITS:*"))
    assert len(keys) == 2 and any("/requests:" in k for k in keys), keys
    assert all(int(redis_conn.get(k)) == 2 for k in keys)


def test_an_unreachable_limit_storage_lets_sends_through(make_sms, caplog):
    sms = make_sms(
        POLYSMS_RATE_LIMIT_STORAGE_URL="redis://127.0.0.1:1/0",
        POLYSMS_READ_RATE_LIMIT="1 per minute",
        POLYSMS_RATE_LIMIT="1 per minute",
    )

    with caplog.at_level(logging.WARNING, logger="flask_polysms.rate_limits"):
        answers = [sms.send(number).status_code for number in (USER, OTHER_NUMBER)]

    assert answers == [202, 202]
    assert "request budget not counted" in caplog.text and "rate limit not counted" in caplog.text
