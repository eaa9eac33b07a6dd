"""The outbound API (DESIGN §3.1), the conversations it opens (§3.2) and the API's common rules:
authentication, tenant isolation, one error shape, the OpenAPI document."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from flask_polysms.crypto import hash_api_key
from flask_polysms.services import provisioning
from flask_polysms.services.operators import end_session
from flask_polysms.services.state import get_state
from flask_polysms.services.tenancy import AUTH_HEADER, CONNECTOR_HEADER, revoke_api_key

AGENT_NUMBERS = ("+14155552671", "+14155552672", "+14155552673")
USER_NUMBERS = ("+14155552674", "+14155552675", "+14155552676", "+14155552677")
USER = USER_NUMBERS[0]


def assert_error(response, status: int, *, fields: tuple[str, ...] = ()) -> dict:
    """The one error shape: ``{"detail": str}`` plus ``errors: {field: [str]}`` when fields are
    at fault, nothing else."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) <= {"detail", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if "errors" in body:
        assert isinstance(body["errors"], dict) and body["errors"]
        for name, messages in body["errors"].items():
            assert isinstance(name, str)
            assert isinstance(messages, list) and messages
            assert all(isinstance(m, str) and m for m in messages)
    for name in fields:
        assert name in body.get("errors", {}), body
    return body


@pytest.fixture
def sms(make_sms):
    return make_sms(numbers=AGENT_NUMBERS)


# -- 202 -------------------------------------------------------------------------------------------


def test_accepted_answers_202_with_the_conversation_and_its_location(sms):
    response = sms.send(USER, "Your table is booked for 8pm.")

    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"conversation_id", "agent_number", "user_number", "status"}
    assert body["user_number"] == USER
    assert body["agent_number"] in AGENT_NUMBERS
    assert body["status"] == "sent"  # the manual scheduler ran the send job inline
    assert response.headers["Location"] == f"/v1/conversations/{body['conversation_id']}"

    followed = sms.client.get(response.headers["Location"], headers=sms.tenant.headers)
    assert followed.status_code == 200
    assert followed.get_json()["id"] == body["conversation_id"]


def test_location_keeps_the_url_prefix_and_the_apps_mount_point(make_sms):
    sms = make_sms(numbers=AGENT_NUMBERS, POLYSMS_URL_PREFIX="/sms")
    mounted = {"SCRIPT_NAME": "/shop"}  # the app served under /shop (a WSGI mount)
    response = sms.client.post(
        "/sms/v1/outbound-sms",
        json={"user_number": USER, "message": "Hello"},
        headers=sms.tenant.headers,
        environ_overrides=mounted,
    )

    assert response.status_code == 202, response.get_json()
    conversation_id = response.get_json()["conversation_id"]
    assert response.headers["Location"] == f"/shop/sms/v1/conversations/{conversation_id}"
    path = response.headers["Location"].removeprefix("/shop")
    followed = sms.client.get(path, headers=sms.tenant.headers, environ_overrides=mounted)
    assert followed.status_code == 200
    assert followed.get_json()["id"] == conversation_id


def test_the_message_is_the_greeting_of_a_new_session(sms):
    body = sms.send_ok(USER, "Your table is booked for 8pm.")

    conversation = sms.conversation(body["conversation_id"])
    assert conversation["channel"] == "sms"
    assert conversation["environment"] == "live"
    assert conversation["user_number"] == USER
    assert conversation["agent_number"] == body["agent_number"]
    assert conversation["state"] == "active"
    assert conversation["engaged"] is False
    assert conversation["closed_at"] is None and conversation["end_reason"] is None
    [greeting] = conversation["messages"]
    assert greeting["direction"] == "outbound"
    assert greeting["kind"] == "greeting"
    assert greeting["body"] == "Your table is booked for 8pm."
    assert greeting["status"] == "sent"
    assert greeting["segments"] == 1
    [handed] = sms.outbox
    assert handed["to"] == USER and handed["from"] == body["agent_number"]
    assert handed["body"] == "Your table is booked for 8pm."
    assert greeting["twilio_sid"] == handed["sid"]
    [send] = conversation["metadata"]["sms_sends"]
    assert send["template"] is None
    assert (send["to"], send["from"]) == (USER, body["agent_number"])
    assert send["status"] == "sent" and send["twilio_sid"] == handed["sid"]
    assert send["time"]


def test_each_request_opens_its_own_session(sms):
    first = sms.send_ok(USER, "one")
    second = sms.send_ok(USER, "two")

    assert first["conversation_id"] != second["conversation_id"]
    assert [m["body"] for m in sms.conversation(second["conversation_id"])["messages"]] == ["two"]


def test_a_message_of_1600_characters_is_accepted(sms):
    body = sms.send_ok(USER, "a" * 1600)

    [greeting] = sms.conversation(body["conversation_id"])["messages"]
    assert len(greeting["body"]) == 1600
    assert greeting["segments"] == 11  # 1600 GSM-7 characters in 153-character parts


def test_an_explicit_agent_number_is_used(sms):
    body = sms.send_ok(USER, agent_number=AGENT_NUMBERS[2])

    assert body["agent_number"] == AGENT_NUMBERS[2]
    assert sms.outbox[0]["from"] == AGENT_NUMBERS[2]


# -- 400 -------------------------------------------------------------------------------------------


def test_invalid_json_is_400(sms):
    response = sms.client.post(
        "/v1/outbound-sms",
        data='{"user_number": "+14155552674", "message": ',
        content_type="application/json",
        headers=sms.tenant.headers,
    )

    assert_error(response, 400)
    assert sms.conversations() == []


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "null", "42"])
def test_a_body_that_is_not_an_object_is_400(sms, payload):
    response = sms.client.post(
        "/v1/outbound-sms",
        data=payload,
        content_type="application/json",
        headers=sms.tenant.headers,
    )

    assert_error(response, 400)
    assert sms.conversations() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "hi"}, "user_number"),
        ({"user_number": USER}, "message"),
        ({"user_number": 14155552674, "message": "hi"}, "user_number"),
        ({"user_number": USER, "message": 42}, "message"),
        ({"user_number": USER, "message": ""}, "message"),
        ({"user_number": USER, "message": "a" * 1601}, "message"),
        ({"user_number": USER, "message": "hi", "priority": "high"}, "priority"),
    ],
    ids=[
        "no-user-number",
        "no-message",
        "number-not-a-string",
        "message-not-a-string",
        "empty-message",
        "message-1601",
        "unknown-field",
    ],
)
def test_a_bad_body_is_400_naming_the_field(sms, body, field):
    response = sms.client.post("/v1/outbound-sms", json=body, headers=sms.tenant.headers)

    assert_error(response, 400, fields=(field,))
    assert sms.conversations() == []
    assert sms.outbox == []


@pytest.mark.parametrize(
    "number",
    [
        "+1 (415) 555-2674",
        "+1 415 555 2674",
        "+1-415-555-2674",
        "14155552674",
        "004414155552674",
        "+1415555267",  # too short for the US plan
        "+14155552674 ",
        "+1415555267४",  # a Devanagari digit
        "+10005552674",  # the pattern fits, the number does not exist
        "",
    ],
)
@pytest.mark.parametrize("field", ["user_number", "agent_number"])
def test_numbers_must_be_strict_e164(sms, number, field):
    body = {"user_number": USER, "message": "hi", field: number}

    response = sms.client.post("/v1/outbound-sms", json=body, headers=sms.tenant.headers)

    assert_error(response, 400, fields=(field,))
    assert sms.outbox == []


def test_agent_number_not_provisioned_at_all_is_400(sms):
    response = sms.send(USER, agent_number="+14155552679")

    assert_error(response, 400, fields=("agent_number",))
    assert sms.conversations() == [] and sms.outbox == []


def test_agent_number_of_another_environment_is_400(sms):
    with sms.app.app_context():
        provisioning.add_sender(sms.state, sms.tenant.project_id, "+14155552678", "sandbox")

    response = sms.send(USER, agent_number="+14155552678")

    assert_error(response, 400, fields=("agent_number",))
    assert sms.conversations() == [] and sms.outbox == []


def test_agent_number_of_another_project_is_400(sms):
    other = sms.provision(numbers=("+14155552678",))

    response = sms.send(USER, agent_number=other.numbers[0])

    assert_error(response, 400, fields=("agent_number",))
    assert sms.conversations() == [] and sms.outbox == []
    assert sms.conversations(tenant=other) == []


# -- 401 / 403 / 404 -------------------------------------------------------------------------------


def test_missing_api_key_is_401(sms):
    headers = {CONNECTOR_HEADER: sms.tenant.connector_id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 401)
    assert sms.outbox == []


def test_invalid_api_key_is_401(sms):
    headers = {**sms.tenant.headers, AUTH_HEADER: sms.tenant.api_key + "x"}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 401)
    assert sms.outbox == []


def test_revoked_api_key_is_401_at_once(sms):
    sms.send_ok(USER)
    with sms.app.app_context():
        key = sms.store.get_api_key_by_hash(hash_api_key(sms.tenant.api_key))
        assert revoke_api_key(sms.store, key.id)

    response = sms.send(USER)

    assert_error(response, 401)
    assert len(sms.outbox) == 1
    # Reading is refused too.
    assert_error(sms.client.get("/v1/conversations", headers=sms.tenant.headers), 401)


def test_a_key_of_another_account_is_403(sms):
    other = sms.provision(numbers=("+14155552678",))
    headers = {AUTH_HEADER: other.api_key, CONNECTOR_HEADER: sms.tenant.connector_id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 403)
    assert sms.outbox == [] and sms.conversations() == []


def test_a_key_of_the_same_account_works_for_its_other_projects(sms):
    sibling = sms.provision(numbers=("+14155552678",), account_id=sms.tenant.account_id)
    headers = {AUTH_HEADER: sms.tenant.api_key, CONNECTOR_HEADER: sibling.connector_id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert response.status_code == 202
    assert response.get_json()["agent_number"] == "+14155552678"


def test_unknown_connector_is_404(sms):
    headers = {**sms.tenant.headers, CONNECTOR_HEADER: "con_does_not_exist"}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 404)
    assert sms.outbox == []


def test_no_numbers_for_the_connectors_environment_is_404(sms):
    # The project has live numbers, but this connector is for sandbox.
    with sms.app.app_context():
        connector = provisioning.create_connector(sms.state, sms.tenant.project_id, "dev")
    headers = {**sms.tenant.headers, CONNECTOR_HEADER: connector.id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert_error(response, 404)
    assert sms.outbox == [] and sms.conversations() == []


def test_a_dev_connector_sends_from_the_sandbox_numbers(sms):
    with sms.app.app_context():
        provisioning.add_sender(sms.state, sms.tenant.project_id, "+14155552678", "sandbox")
        connector = provisioning.create_connector(sms.state, sms.tenant.project_id, "dev")
    headers = {**sms.tenant.headers, CONNECTOR_HEADER: connector.id}

    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=headers
    )

    assert response.status_code == 202
    assert response.get_json()["agent_number"] == "+14155552678"
    conversation = sms.conversation(
        response.get_json()["conversation_id"], tenant=SimpleNamespace(headers=headers)
    )
    assert conversation["environment"] == "sandbox"


# -- 413 / 429 -------------------------------------------------------------------------------------


def test_a_body_over_64_kb_is_413(sms):
    payload = json.dumps({"user_number": USER, "message": "a" * (64 * 1024)})

    response = sms.client.post(
        "/v1/outbound-sms",
        data=payload,
        content_type="application/json",
        headers=sms.tenant.headers,
    )

    assert_error(response, 413)
    assert sms.outbox == [] and sms.conversations() == []


def test_a_body_just_under_64_kb_is_not_413(sms):
    # Padding in an unknown field: rejected as 400, so the size limit is not what answers.
    padding = "a" * (64 * 1024 - 200)
    payload = json.dumps({"user_number": USER, "message": "hi", "pad": padding})
    assert len(payload) < 64 * 1024

    response = sms.client.post(
        "/v1/outbound-sms",
        data=payload,
        content_type="application/json",
        headers=sms.tenant.headers,
    )

    assert_error(response, 400, fields=("pad",))


def test_the_rate_limit_is_per_project_and_answers_429_with_retry_after(make_sms):
    sms = make_sms(numbers=AGENT_NUMBERS[:1], POLYSMS_RATE_LIMIT="3 per minute")
    other = sms.provision(numbers=("+14155552678",))

    for _ in range(3):
        sms.send_ok(USER)
    limited = sms.send(USER)

    body = assert_error(limited, 429)
    assert "rate limit" in body["detail"]
    retry_after = limited.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit()
    assert 0 < int(retry_after) <= 60
    assert len(sms.outbox) == 3
    assert len(sms.conversations()) == 3
    # Another project on the same app is not limited by this one's traffic.
    for _ in range(3):
        assert sms.send(USER, tenant=other).status_code == 202
    assert sms.send(USER, tenant=other).status_code == 429


def test_the_rate_limit_is_not_keyed_on_the_api_key(make_sms):
    sms = make_sms(numbers=AGENT_NUMBERS[:1], POLYSMS_RATE_LIMIT="2 per minute")
    with sms.app.app_context():
        _, second_key = provisioning.create_api_key(sms.state, sms.tenant.account_id)
    second = {**sms.tenant.headers, AUTH_HEADER: second_key}

    sms.send_ok(USER)
    sms.send_ok(USER)

    # A second key of the same account does not get the project a fresh allowance.
    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=second
    )
    assert_error(response, 429)


# -- number selection ------------------------------------------------------------------------------


@pytest.mark.parametrize("number", AGENT_NUMBERS)
def test_the_number_already_talking_to_the_user_is_reused(sms, number):
    sms.send_ok(USER, "first", agent_number=number)

    again = sms.send_ok(USER, "second")

    assert again["agent_number"] == number
    assert sms.outbox[-1]["from"] == number


def test_a_number_the_user_wrote_to_first_is_reused(sms):
    sms.inbound_ok(USER, "Hi, is this the restaurant?", to=AGENT_NUMBERS[1])

    body = sms.send_ok(USER, "Yes it is")

    assert body["agent_number"] == AGENT_NUMBERS[1]


def test_new_users_are_spread_over_the_numbers_deterministically(make_sms):
    sms = make_sms(numbers=AGENT_NUMBERS, POLYSMS_RATE_LIMIT="1000 per second")
    users = [f"+1415555{n:04d}" for n in range(2680, 2710)]
    chosen = {user: sms.send_ok(user)["agent_number"] for user in users}

    # Every number carries some of the users.
    assert set(chosen.values()) == set(AGENT_NUMBERS)
    # The choice depends on nothing but the user and the numbers: another app agrees.
    other = make_sms(numbers=AGENT_NUMBERS, POLYSMS_RATE_LIMIT="1000 per second")
    assert {user: other.send_ok(user)["agent_number"] for user in users} == chosen


def test_selection_only_considers_the_environments_numbers(sms):
    # The user talked to a sandbox number of this project: a live connector cannot use it.
    with sms.app.app_context():
        provisioning.add_sender(sms.state, sms.tenant.project_id, "+14155552678", "sandbox")
        connector = provisioning.create_connector(sms.state, sms.tenant.project_id, "sandbox")
    sandbox = {**sms.tenant.headers, CONNECTOR_HEADER: connector.id}
    response = sms.client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "hi"}, headers=sandbox
    )
    assert response.get_json()["agent_number"] == "+14155552678"

    assert sms.send_ok(USER)["agent_number"] in AGENT_NUMBERS


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


# -- the OpenAPI document, error shapes everywhere -------------------------------------------------


def _v1_paths(app) -> set[str]:
    paths = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/") or rule.endpoint.split(".")[0].endswith("docs"):
            continue
        paths.add(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule))
    return paths


def test_openapi_document_lists_every_v1_path(sms):
    response = sms.client.get("/v1/openapi.json")

    assert response.status_code == 200
    document = json.loads(response.get_data(as_text=True))
    assert document["openapi"].startswith("3.")
    documented = set(document["paths"])
    served = _v1_paths(sms.app)
    assert {
        "/v1/outbound-sms",
        "/v1/conversations",
        "/v1/conversations/{conversation_id}",
        "/v1/sms/metrics",
        "/v1/twilio/sms",
        "/v1/twilio/status",
    } <= served
    assert served <= documented
    post = document["paths"]["/v1/outbound-sms"]["post"]
    assert {"202", "400", "401", "403", "404", "413", "429"} <= set(post["responses"])


def test_docs_page_is_html_that_loads_nothing_from_another_host(sms):
    response = sms.client.get("/v1/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "/v1/openapi.json" in page
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(loaded) == 5  # favicon, stylesheet, three scripts
    for url in loaded:
        assert url.startswith("/v1/docs/"), url
        with sms.client.get(url) as asset:  # a file response: closed when read
            assert asset.status_code == 200, url


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/outbound-sms"),
        ("delete", "/v1/conversations"),
        ("get", "/v1/twilio/sms"),
    ],
)
def test_a_wrong_method_on_an_api_route_has_the_error_shape(sms, method, path):
    response = getattr(sms.client, method)(path, headers=sms.tenant.headers)

    assert_error(response, 405)


def test_an_unknown_v1_path_has_the_error_shape(sms):
    assert_error(sms.client.get("/v1/no-such-thing", headers=sms.tenant.headers), 404)


def test_an_unexpected_failure_has_the_error_shape_and_hides_the_cause(make_sms, monkeypatch):
    sms = make_sms(numbers=AGENT_NUMBERS[:1], PROPAGATE_EXCEPTIONS=False)

    def broken(*args, **kwargs):
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(sms.store, "get_metrics", broken)

    body = assert_error(sms.client.get("/v1/sms/metrics", headers=sms.tenant.headers), 500)
    assert "hunter2" not in body["detail"]


def test_the_host_apps_own_404_pages_are_left_alone(sms):
    response = sms.client.get("/not-the-api")

    assert response.status_code == 404
    assert response.mimetype == "text/html"


def test_the_host_apps_own_error_handlers_keep_working():
    from flask import Flask

    from flask_polysms import PolySMS

    app = Flask("host_with_handlers")
    app.testing = True
    app.config.update(SECRET_KEY="k", PROPAGATE_EXCEPTIONS=False)

    @app.errorhandler(404)
    def not_found(error):
        return "host 404", 404

    @app.errorhandler(500)
    def crashed(error):
        return "host 500", 500

    @app.get("/crash")
    def crash():
        raise RuntimeError("host bug")

    PolySMS(app)
    client = app.test_client()

    assert client.get("/nowhere").get_data(as_text=True) == "host 404"
    assert client.get("/crash").get_data(as_text=True) == "host 500"
    # The API's own paths still answer in the API's shape.
    assert_error(client.get("/v1/nowhere"), 404)


@pytest.mark.parametrize(
    "path", ["/v1/conversations", "/v1/conversations/conv_x", "/v1/sms/metrics"]
)
def test_every_authenticated_route_answers_401_403_404_in_the_error_shape(sms, path):
    other = sms.provision(numbers=("+14155552678",))

    assert_error(sms.client.get(path), 401)
    assert_error(sms.client.get(path, headers={AUTH_HEADER: "nope"}), 401)
    foreign = {AUTH_HEADER: other.api_key, CONNECTOR_HEADER: sms.tenant.connector_id}
    assert_error(sms.client.get(path, headers=foreign), 403)
    unknown = {**sms.tenant.headers, CONNECTOR_HEADER: "con_nope"}
    assert_error(sms.client.get(path, headers=unknown), 404)


def test_the_state_is_untouched_by_rejected_requests(sms):
    # A sweep of rejected requests of every kind leaves no session, message or counter behind.
    bad = [
        {"user_number": "14155552674", "message": "hi"},
        {"user_number": USER, "message": ""},
        {"user_number": USER, "message": "hi", "agent_number": "+14155552679"},
        {"user_number": USER, "message": "hi", "extra": 1},
    ]
    for body in bad:
        assert (
            sms.client.post("/v1/outbound-sms", json=body, headers=sms.tenant.headers).status_code
            == 400
        )

    with sms.app.app_context():
        assert get_state(sms.app).store.list_sessions(sms.tenant.project_id)[0] == []
    metrics = sms.metrics()
    assert metrics["conversations"] == 0 and metrics["sent"] == 0
    assert metrics["api_failures"] == 0
