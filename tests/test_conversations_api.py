"""Reading the conversations and metrics of a project: tenant isolation, list filters, cursor
pagination and the per-project metrics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from outbound_support import (
    USER,
    USER_NUMBERS,
    assert_error,
    sms_fixture,  # noqa: F401
)

from flask_polysms.services import provisioning
from flask_polysms.services.operators import end_session
from flask_polysms.services.tenancy import CONNECTOR_HEADER

# -- tenant isolation, listing ---------------------------------------------------------------------


def test_another_project_cannot_see_a_conversation(sms):
    mine = sms.send_ok(USER)["conversation_id"]
    stranger = sms.provision(numbers=("+14155552678",))
    sibling = sms.provision(numbers=("+14155552679",), account_id=sms.tenant.account_id)
    sms.send_ok(USER, tenant=stranger)

    for tenant in (stranger, sibling):
        response = sms.client.get(f"/v1/conversations/{mine}", headers=tenant.headers)
        assert_error(response, 404)
        assert mine not in {c["id"] for c in sms.conversations(tenant=tenant)}
    assert [c["id"] for c in sms.conversations()] == [mine]
    assert_error(sms.client.get("/v1/conversations/conv_nope", headers=sms.tenant.headers), 404)


def test_list_filters_by_user_state_and_environment(sms):
    a = sms.send_ok(USER_NUMBERS[0])["conversation_id"]
    b = sms.send_ok(USER_NUMBERS[1])["conversation_id"]
    c = sms.send_ok(USER_NUMBERS[0])["conversation_id"]
    with sms.app.app_context():
        end_session(sms.state, b, "agent")
        provisioning.add_sender(sms.state, sms.tenant.project_id, "+14155552678", "sandbox")
        connector = provisioning.create_connector(sms.state, sms.tenant.project_id, "sandbox")
    sandbox = {**sms.tenant.headers, CONNECTOR_HEADER: connector.id}
    d = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER_NUMBERS[2], "message": "hi"}, headers=sandbox
    ).get_json()["conversation_id"]

    def ids(tenant=None, **query):
        return [conv["id"] for conv in sms.conversations(tenant=tenant, **query)]

    assert ids(user_number=USER_NUMBERS[0]) == [c, a]  # newest first
    assert ids(state="closed") == [b]
    assert ids(state="active", environment="live") == [c, a]
    # A connector sees its own environment only (another environment's filter is a 400).
    assert ids(SimpleNamespace(headers=sandbox), environment="sandbox") == [d]
    assert ids(environment="live") == [c, b, a]
    assert ids(environment="live", user_number=USER_NUMBERS[1], state="closed") == [b]
    assert ids(user_number=USER_NUMBERS[3]) == []


@pytest.mark.parametrize(
    "query",
    [
        {"state": "open"},
        {"environment": "prod"},
        {"user_number": "14155552674"},
        {"limit": "0"},
        {"limit": "many"},
        {"cursor": "not a cursor!"},
    ],
)
def test_bad_list_queries_are_400(sms, query):
    sms.send_ok(USER)

    response = sms.client.get("/v1/conversations", query_string=query, headers=sms.tenant.headers)

    assert_error(response, 400)


def test_cursor_pagination_walks_every_conversation_once(sms):
    created = [sms.send_ok(USER_NUMBERS[i % 4], f"m{i}")["conversation_id"] for i in range(7)]

    pages = []
    cursor = None
    while True:
        query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = sms.client.get(
            "/v1/conversations", query_string=query, headers=sms.tenant.headers
        )
        assert response.status_code == 200
        page = response.get_json()
        pages.append([conv["id"] for conv in page["conversations"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert [len(p) for p in pages] == [3, 3, 1]
    assert [cid for page in pages for cid in page] == list(reversed(created))


def test_an_exactly_full_last_page_ends_with_a_null_cursor(sms):
    for i in range(4):
        sms.send_ok(USER, f"m{i}")

    first = sms.client.get(
        "/v1/conversations", query_string={"limit": 2}, headers=sms.tenant.headers
    ).get_json()
    second = sms.client.get(
        "/v1/conversations",
        query_string={"limit": 2, "cursor": first["next_cursor"]},
        headers=sms.tenant.headers,
    ).get_json()

    assert len(first["conversations"]) == 2 and first["next_cursor"]
    assert len(second["conversations"]) == 2 and second["next_cursor"] is None


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_count_the_projects_sends_and_conversations(sms):
    sms.send_ok(USER_NUMBERS[0])
    sms.send_ok(USER_NUMBERS[1])
    other = sms.provision(numbers=("+14155552678",))
    sms.send_ok(USER, tenant=other)

    metrics = sms.metrics()

    assert metrics["sent"] == 2 and metrics["conversations"] == 2
    assert metrics["api_failures"] == 0 and metrics["suppressed"] == 0
    assert metrics["delivery_rate"] is None  # nothing has a final status yet
    assert sum(day["sent"] for day in metrics["by_day"]) == 2
    assert sms.metrics(tenant=other)["sent"] == 1
