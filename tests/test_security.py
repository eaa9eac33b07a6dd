"""Security: tenant isolation, API keys, secrets, webhook signatures across projects.

- Isolation matrix: every authenticated route, called by one project with another project's ids,
  keys and connector, answers 403/404 (or its own, unrelated data) and never the other's data,
  and changes nothing of it. The matrix is checked to cover every route the API serves.
- API keys: looked up by their SHA-256 digest only (the raw key never reaches the Store, so no
  comparison of a secret happens in Python); a revoked key is refused at the very next request,
  also by another app process on the same database.
- Webhook signatures are compared by twilio's constant-time ``compare``.
- No secret (API key, Auth Token, its encrypted form, the Basic credentials, the app's secret key)
  appears in any response or any captured log line, through a run of every flow.
- A webhook signed by one project cannot act on another project's number or message.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import logging
import re
import time
from typing import Any

import pytest
from flask import Flask
from store_backends import storage_url

from flask_polysms import PolySMS
from flask_polysms.services.provisioning import create_api_key
from flask_polysms.services.state import get_state
from flask_polysms.testing import TwilioEmulator, sign_twilio_request

A_NUMBER = "+14155552671"
A2_NUMBER = "+14155552672"
B_NUMBER = "+14155552673"
A_USER = "+14155552674"
B_USER = "+14155552675"
B_SECRET_TEXT = "B's private greeting 7f3a"
B_TEMPLATE_TITLE = "b-secret-template"
B_TEMPLATE_BODY = "B's template body 91c2"
# Nothing listens there (port 9, discard): B's deliveries fail at once, without the network.
B_WEBHOOK_URL = "https://127.0.0.1:9/b-private-hook-5d1e"
A_WEBHOOK_URL = "https://127.0.0.1:9/a-hook"


@pytest.fixture(params=["memory", pytest.param("postgresql", marks=pytest.mark.services)])
def storage(request, tmp_path) -> dict[str, str]:
    if request.param == "memory":
        return {}
    return {"POLYSMS_STORAGE_URL": storage_url(request, "postgresql", tmp_path)}


class Tenants:
    """Project A (the caller), project A2 (same account as A), project B (another account)."""

    def __init__(self, make_sms, storage: dict[str, str]) -> None:
        self.sms = make_sms(
            numbers=(A_NUMBER,),
            POLYSMS_DASHBOARD=True,
            # The matrix sends a few hundred requests a second; the budget has its own tests.
            POLYSMS_READ_RATE_LIMIT="100000 per second",
            **storage,
        )
        self.a = self.sms.tenant
        self.a2 = self.sms.provision(numbers=(A2_NUMBER,), account_id=self.a.account_id)
        self.b = self.sms.provision(numbers=(B_NUMBER,))
        client = self.sms.client
        b_conv = self.sms.send_ok(B_USER, B_SECRET_TEXT, tenant=self.b)
        self.b_conversation_id = b_conv["conversation_id"]
        b_view = client.get(f"/v1/conversations/{self.b_conversation_id}", headers=self.b.headers)
        self.b_message_id = b_view.get_json()["messages"][0]["id"]
        response = client.post(
            "/v1/sms-templates",
            json={
                "title": B_TEMPLATE_TITLE,
                "body": B_TEMPLATE_BODY,
                "env_phone_numbers": {"live": B_NUMBER},
            },
            headers=self.b.headers,
        )
        assert response.status_code == 201
        self.b_template_id = response.get_json()["id"]
        self.b_sid = self.sms.outbox[-1]["sid"]
        opt_out = client.post(
            "/v1/opt-outs", json={"user_number": B_USER, "sender": B_NUMBER}, headers=self.b.headers
        )
        assert opt_out.status_code == 201
        webhook = client.post(
            "/v1/webhooks",
            json={"url": B_WEBHOOK_URL, "events": ["message.received"]},
            headers=self.b.headers,
        )
        assert webhook.status_code == 201
        self.b_webhook_id = webhook.get_json()["id"]
        self.b_webhook_secret = webhook.get_json()["secret"]
        # A has data of its own, so "empty" can never pass for "isolated".
        self.a_conversation_id = self.sms.send_ok(A_USER, "A's greeting")["conversation_id"]

    def b_secrets(self) -> list[str]:
        return [
            self.b_conversation_id,
            self.b_message_id,
            self.b_template_id,
            self.b_webhook_id,
            self.b_webhook_secret,
            B_WEBHOOK_URL,
            B_SECRET_TEXT,
            B_TEMPLATE_TITLE,
            B_TEMPLATE_BODY,
            B_USER,
            self.b_sid,
            self.b.connector_id,
            self.b.project_id,
            self.b.account_id,
        ]

    def b_view(self) -> str:
        """Everything B can see through its own key: compared before and after an attack."""
        client, headers = self.sms.client, self.b.headers
        return json.dumps(
            {
                "conversations": self.sms.conversations(tenant=self.b),
                "templates": client.get("/v1/sms-templates", headers=headers).get_json(),
                "senders": client.get("/v1/senders", headers=headers).get_json(),
                "compliance": client.get(
                    f"/v1/senders/{B_NUMBER}/compliance", headers=headers
                ).get_json(),
                "metrics": self.sms.metrics(tenant=self.b),
                "project": client.get("/v1/project", headers=headers).get_json(),
                "opt_outs": client.get("/v1/opt-outs", headers=headers).get_json(),
                "opt_out_history": client.get(
                    "/v1/opt-outs/history", query_string={"user_number": B_USER}, headers=headers
                ).get_json(),
                "webhooks": client.get("/v1/webhooks", headers=headers).get_json(),
                "deliveries": client.get(
                    f"/v1/webhooks/{self.b_webhook_id}/deliveries", headers=headers
                ).get_json(),
            },
            sort_keys=True,
        )


@pytest.fixture(params=["context per request", "one app context pushed"])
def tenants(request, make_sms, storage) -> Tenants:
    """The three projects; the matrix runs twice: with a context per request, and inside one app
    context pushed for the whole test (pytest-flask and some hosts do that), where a caller cached
    on ``g`` would answer every later request."""
    built = Tenants(make_sms, storage)
    if request.param == "context per request":
        yield built
        return
    with built.sms.app.app_context():
        # A successful request first: what it authenticated must not outlive it.
        assert built.sms.client.get("/v1/senders", headers=built.a.headers).status_code == 200
        yield built


# Every authenticated route, with B's ids where it takes one: (endpoint, method, path, body).
def routes(t: Tenants) -> list[tuple[str, str, str, Any]]:
    tpl = t.b_template_id
    return [
        ("polysms_outbound.send_outbound", "POST", "/v1/outbound-sms",
         {"user_number": B_USER, "message": "hijack", "agent_number": B_NUMBER}),
        ("polysms_conversations.get_conversation", "GET",
         f"/v1/conversations/{t.b_conversation_id}", None),
        ("polysms_conversations.list_conversations", "GET",
         f"/v1/conversations?user_number=%2B{B_USER[1:]}", None),
        ("polysms_metrics.get_metrics", "GET", "/v1/sms/metrics", None),
        ("polysms_senders.list_senders", "GET", "/v1/senders", None),
        ("polysms_senders.update_sender", "PATCH", f"/v1/senders/{B_NUMBER}",
         {"registration": "not_registered"}),
        ("polysms_senders.get_compliance", "GET", f"/v1/senders/{B_NUMBER}/compliance", None),
        ("polysms_templates.create_template", "POST", "/v1/sms-templates",
         {"title": "steal", "body": "x", "env_phone_numbers": {"live": B_NUMBER}}),
        ("polysms_templates.list_templates", "GET", "/v1/sms-templates", None),
        ("polysms_templates.get_template", "GET", f"/v1/sms-templates/{tpl}", None),
        ("polysms_templates.update_template", "PATCH", f"/v1/sms-templates/{tpl}",
         {"title": "pwned"}),
        ("polysms_templates.delete_template", "DELETE", f"/v1/sms-templates/{tpl}", None),
        ("polysms_templates.duplicate_template", "POST", f"/v1/sms-templates/{tpl}/duplicate",
         None),
        ("polysms_templates.preview_template", "POST", f"/v1/sms-templates/{tpl}/preview", {}),
        ("polysms_project.get_project", "GET", "/v1/project", None),
        ("polysms_project.update_project", "PATCH", "/v1/project", {"keyword_replies": "twilio"}),
        ("polysms_opt_outs.list_opt_outs", "GET", f"/v1/opt-outs?user_number=%2B{B_USER[1:]}",
         None),
        ("polysms_opt_outs.create_opt_out", "POST", "/v1/opt-outs",
         {"user_number": A_USER, "sender": B_NUMBER}),
        ("polysms_opt_outs.delete_opt_out", "DELETE",
         f"/v1/opt-outs?user_number=%2B{B_USER[1:]}&sender=%2B{B_NUMBER[1:]}", None),
        ("polysms_opt_outs.opt_out_history", "GET",
         f"/v1/opt-outs/history?user_number=%2B{B_USER[1:]}", None),
        ("polysms_operators.hand_off", "POST",
         f"/v1/conversations/{t.b_conversation_id}/handoff", {"reason": "hijack"}),
        ("polysms_operators.send_message", "POST",
         f"/v1/conversations/{t.b_conversation_id}/messages", {"message": "hijack"}),
        ("polysms_operators.resume", "POST",
         f"/v1/conversations/{t.b_conversation_id}/resume", None),
        ("polysms_operators.end", "POST", f"/v1/conversations/{t.b_conversation_id}/end", None),
        ("polysms_messages.get_message", "GET", f"/v1/messages/{t.b_message_id}", None),
        ("polysms_messages.cancel_message", "POST", f"/v1/messages/{t.b_message_id}/cancel", None),
        ("polysms_event_webhooks.create_webhook", "POST", "/v1/webhooks",
         {"url": A_WEBHOOK_URL, "events": ["opt_out.removed"]}),
        ("polysms_event_webhooks.list_webhooks", "GET", "/v1/webhooks", None),
        ("polysms_event_webhooks.delete_webhook", "DELETE", f"/v1/webhooks/{t.b_webhook_id}",
         None),
        ("polysms_event_webhooks.list_deliveries", "GET",
         f"/v1/webhooks/{t.b_webhook_id}/deliveries", None),
    ]  # fmt: skip


# What project A gets for each route called with B's ids: a 4xx, or a 200 of A's own data.
EXPECTED_FOR_B_IDS = {
    "polysms_outbound.send_outbound": 400,  # B's number is not provisioned for A
    "polysms_conversations.get_conversation": 404,
    "polysms_conversations.list_conversations": 200,
    "polysms_metrics.get_metrics": 200,
    "polysms_senders.list_senders": 200,
    "polysms_senders.update_sender": 404,
    "polysms_senders.get_compliance": 404,
    "polysms_templates.create_template": 400,  # B's number is not A's sender
    "polysms_templates.list_templates": 200,
    "polysms_templates.get_template": 404,
    "polysms_templates.update_template": 404,
    "polysms_templates.delete_template": 404,
    "polysms_templates.duplicate_template": 404,
    "polysms_templates.preview_template": 404,
    "polysms_project.get_project": 200,  # A's own settings
    "polysms_project.update_project": 200,  # A's own settings
    "polysms_opt_outs.list_opt_outs": 200,  # empty: B's opt-outs are not A's
    "polysms_opt_outs.create_opt_out": 400,  # B's number is not A's sender
    "polysms_opt_outs.delete_opt_out": 404,  # as if B's pair were not opted out
    "polysms_opt_outs.opt_out_history": 200,  # empty
    "polysms_operators.hand_off": 404,
    "polysms_operators.send_message": 404,
    "polysms_operators.resume": 404,
    "polysms_operators.end": 404,
    "polysms_messages.get_message": 404,
    "polysms_messages.cancel_message": 404,
    "polysms_event_webhooks.create_webhook": 201,  # A's own subscription
    "polysms_event_webhooks.list_webhooks": 200,  # A's own subscriptions
    "polysms_event_webhooks.delete_webhook": 404,
    "polysms_event_webhooks.list_deliveries": 404,
}


def _call(t: Tenants, method: str, path: str, body: Any, headers: dict[str, str]):
    return t.sms.client.open(path, method=method, json=body, headers=headers)


def _assert_no_b_data(t: Tenants, response, where: str) -> None:
    text = response.get_data(as_text=True) + json.dumps(dict(response.headers))
    for secret in t.b_secrets():
        assert secret not in text, f"{where}: B's {secret!r} in the response"


def test_the_matrix_covers_every_authenticated_route(tenants):
    served = {
        rule.endpoint
        for rule in tenants.sms.app.url_map.iter_rules()
        if rule.endpoint.startswith("polysms_") and not rule.endpoint.startswith("polysms_twilio")
        and not rule.endpoint.startswith("polysms_dashboard")
        and not rule.endpoint.startswith("polysms_docs")  # the public reference page
        and not rule.endpoint.startswith("polysms_health")  # the unauthenticated probes
    }  # fmt: skip
    assert {endpoint for endpoint, *_ in routes(tenants)} == served
    assert set(EXPECTED_FOR_B_IDS) == served


def test_another_projects_ids_answer_404_or_own_data_never_theirs(tenants):
    before = tenants.b_view()
    for endpoint, method, path, body in routes(tenants):
        for caller in (tenants.a, tenants.a2):  # another account, and the same account
            response = _call(tenants, method, path, body, caller.headers)
            expected = EXPECTED_FOR_B_IDS[endpoint]
            assert response.status_code == expected, (endpoint, response.get_json())
            if expected >= 400:
                assert set(response.get_json()) <= {"detail", "errors"}
            _assert_no_b_data(tenants, response, endpoint)
    assert tenants.b_view() == before


def test_bad_or_missing_credentials_never_reach_anothers_data(tenants):
    before = tenants.b_view()
    for endpoint, method, path, body in routes(tenants):
        crossed = [
            ({**tenants.a.headers, "X-TOKEN-ID": tenants.b.connector_id}, 403),
            ({**tenants.b.headers, "X-TOKEN-ID": tenants.a.connector_id}, 403),
            ({**tenants.a.headers, "X-TOKEN-ID": "con_" + "0" * 32}, 404),
            ({**tenants.a.headers, "X-PolyAi-Auth-Token": "pk_" + "x" * 43}, 401),
            ({"X-TOKEN-ID": tenants.b.connector_id}, 401),
            ({"X-PolyAi-Auth-Token": tenants.a.api_key}, 400),  # no X-TOKEN-ID
            ({}, 401),
        ]
        for headers, expected in crossed:
            # A's valid request just before: nothing it authenticated may answer the next one.
            assert _call(tenants, "GET", "/v1/senders", None, tenants.a.headers).status_code == 200
            response = _call(tenants, method, path, body, headers)
            assert response.status_code == expected, (endpoint, headers, response.get_json())
            assert set(response.get_json()) == {"detail"}
            _assert_no_b_data(tenants, response, endpoint)
    assert tenants.b_view() == before


def test_the_same_accounts_other_connector_sees_only_its_own_project(tenants):
    """One account, two projects: the connector names the project, the key only the account."""
    client = tenants.sms.client
    a_conv = f"/v1/conversations/{tenants.a_conversation_id}"
    assert client.get(a_conv, headers=tenants.a.headers).status_code == 200
    assert client.get(a_conv, headers=tenants.a2.headers).status_code == 404
    listed = client.get("/v1/conversations", headers=tenants.a2.headers).get_json()
    assert listed["conversations"] == []
    senders = client.get("/v1/senders", headers=tenants.a2.headers).get_json()["senders"]
    assert [s["address"] for s in senders] == [A2_NUMBER]


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def test_the_dashboard_shows_another_projects_records_as_absent(tenants):
    client = tenants.sms.app.test_client()
    token = CSRF.search(client.get("/dashboard/sign-in").get_data(as_text=True)).group(1)
    signed = client.post(
        "/dashboard/sign-in",
        data={
            "api_key": tenants.a.api_key,
            "connector_id": tenants.a.connector_id,
            "csrf_token": token,
        },
    )
    assert signed.status_code == 302
    for path in (
        f"/dashboard/conversations/{tenants.b_conversation_id}",
        f"/dashboard/templates/{tenants.b_template_id}",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        _assert_no_b_data(tenants, response, path)
    for path in ("/dashboard/", "/dashboard/conversations", "/dashboard/templates"):
        response = client.get(path)
        assert response.status_code == 200, path
        _assert_no_b_data(tenants, response, path)


# -- webhooks across projects ---------------------------------------------------------------------


def test_a_webhook_signed_for_one_project_is_refused_on_anothers_number(tenants):
    sms = tenants.sms
    before = tenants.b_view()
    # A's own, valid request...
    params = sms.inbound_params(A_USER, "STOP", to=A_NUMBER)
    signature = sign_twilio_request(
        sms.webhook_url("/v1/twilio/sms"), params, tenants.a.twilio_auth_token
    )
    # ...replayed with B's number: the signature no longer matches the parameters.
    replayed = {**params, "To": B_NUMBER}
    refused = [sms.post_signed("/v1/twilio/sms", replayed, signature=signature)]
    # ...re-signed by A for B's number: checked with B's Auth Token, so refused too.
    refused.append(sms.post_signed("/v1/twilio/sms", replayed, token=tenants.a.twilio_auth_token))
    # A status callback for B's message, signed by A (and naming A's number as the sender).
    status = {
        "MessageSid": tenants.b_sid,
        "MessageStatus": "failed",
        "ErrorCode": "30008",
        "From": A_NUMBER,
        "To": B_USER,
    }
    refused.append(sms.post_signed("/v1/twilio/status", status, token=tenants.a.twilio_auth_token))
    for response in refused:
        assert response.status_code == 403
        _assert_no_b_data(tenants, response, "webhook")
    assert tenants.b_view() == before
    # The same STOP, signed by B for B's number, is B's to act on.
    response = sms.post_signed("/v1/twilio/sms", replayed, token=tenants.b.twilio_auth_token)
    assert response.status_code == 200
    assert tenants.b_view() != before


# -- API keys -------------------------------------------------------------------------------------


class RecordingStore:
    """A proxy that records every argument handed to the Store."""

    def __init__(self, store) -> None:
        self._store = store
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return attribute(*args, **kwargs)

        return call


def test_api_keys_are_looked_up_by_digest_and_never_compared_in_python(tenants, monkeypatch):
    state = get_state(tenants.sms.app)
    recording = RecordingStore(state.store)
    monkeypatch.setattr(state, "store", recording)
    key = tenants.a.api_key
    response = tenants.sms.client.get("/v1/conversations", headers=tenants.a.headers)
    assert response.status_code == 200
    digest = hashlib.sha256(key.encode()).hexdigest()
    lookups = [
        name for name, args, kwargs in recording.calls if digest in (*args, *kwargs.values())
    ]
    assert len(lookups) == 1, recording.calls  # one lookup, by the digest
    for _, args, kwargs in recording.calls:
        assert key not in repr((args, kwargs))  # the raw key never reaches the Store


def test_webhook_signatures_are_compared_in_constant_time(tenants, monkeypatch):
    import twilio.request_validator as validator

    compared: list[tuple[str, str]] = []
    constant_time = validator.compare

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(validator, "compare", spy)
    tenants.sms.inbound_ok(A_USER, "hello")
    assert compared and all(len(a) == len(b) for a, b in compared)
    # twilio's compare walks every character, equal or not (no early exit).
    assert "for c1, c2 in zip" in inspect.getsource(constant_time)


def test_a_revoked_key_is_refused_at_once_also_by_another_process(make_sms, storage):
    sms = make_sms(numbers=(A_NUMBER,), **storage)
    with sms.app.app_context():
        key_id, key = create_api_key(get_state(sms.app), sms.tenant.account_id)
    headers = {**sms.tenant.headers, "X-PolyAi-Auth-Token": key}
    # A second app on the same store stands for another web process (PostgreSQL); with the
    # memory store it is the same process, the check is then the same-process one.
    other = sms.client
    if storage:
        app2 = Flask("polysms_other_process")
        app2.testing = True
        app2.config.update(SECRET_KEY="test-secret-key", POLYSMS_GATEWAY="outbox", **storage)
        PolySMS(app2)
        other = app2.test_client()
    assert other.get("/v1/conversations", headers=headers).status_code == 200
    result = sms.app.test_cli_runner().invoke(args=["polysms", "revoke-api-key", key_id])
    assert result.exit_code == 0, result.output
    response = other.get("/v1/conversations", headers=headers)
    assert response.status_code == 401
    assert response.get_json() == {"detail": "invalid X-PolyAi-Auth-Token"}
    assert sms.client.get("/v1/conversations", headers=headers).status_code == 401
    # The account's other key still works.
    assert other.get("/v1/conversations", headers=sms.tenant.headers).status_code == 200


# -- no secret in any response or log line --------------------------------------------------------

EMULATOR_SID = "AC" + "5e" * 16
EMULATOR_TOKEN = "s3cr3t-auth-token-do-not-log-0042"


def test_no_secret_in_any_response_or_log_line(make_sms, caplog, live_server):
    """Every flow, with every logger at DEBUG: no API key, Auth Token (plain, encrypted or as
    Basic credentials) or secret key in a response (body or header) or a log line."""
    caplog.set_level(logging.DEBUG)
    base_url, bind = live_server
    emulator = TwilioEmulator(callbacks="auto", callback_delay=0.01).start()
    try:
        emulator.add_account(EMULATOR_SID, EMULATOR_TOKEN)
        sms = make_sms(
            numbers=(A_NUMBER,),
            POLYSMS_GATEWAY="twilio",
            POLYSMS_TWILIO_BASE_URL=emulator.base_url,
            POLYSMS_PUBLIC_URL=base_url,
            POLYSMS_SECRET_KEY="app-secret-key-never-logged-77",
            POLYSMS_RETRY_BASE_DELAY=0.01,
            twilio_account_sid=EMULATOR_SID,
            twilio_auth_token=EMULATOR_TOKEN,
            agent=lambda conv, text: f"echo {text}",
        )
        bind(sms.app)
        responses = _every_flow(sms, emulator)
    finally:
        emulator.stop()
    with sms.app.app_context():
        project = get_state(sms.app).store.get_project(sms.tenant.project_id)
    basic = base64.b64encode(f"{EMULATOR_SID}:{EMULATOR_TOKEN}".encode()).decode()
    secrets = {
        "API key": sms.tenant.api_key,
        "API key digest": hashlib.sha256(sms.tenant.api_key.encode()).hexdigest(),
        "Auth Token": EMULATOR_TOKEN,
        "encrypted Auth Token": project.twilio_auth_token_encrypted,
        "Basic credentials": basic,
        "secret key": "app-secret-key-never-logged-77",
    }
    seen = "\n".join(
        r.get_data(as_text=True) + "\n" + json.dumps(dict(r.headers)) for r in responses
    )
    logs = "\n".join(
        f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert len(responses) > 20 and len(caplog.records) > 20  # the flows did run and log
    for name, secret in secrets.items():
        assert secret not in seen, f"the {name} is in a response"
        assert secret not in logs, f"the {name} is in a log line"


def _every_flow(sms, emulator: TwilioEmulator) -> list:
    """Outbound, delivery callbacks, inbound with the agent, STOP/START/HELP, templates, senders,
    metrics, errors (bad key, bad signature, Twilio refusing), the docs."""
    client, headers = sms.client, sms.tenant.headers
    out: list = []

    def keep(response):
        out.append(response)
        return response

    conv = keep(sms.send(A_USER, "hello there")).get_json()
    emulator.wait_for_callbacks(2)
    for text in ("hi", "STOP", "START", "HELP", "thanks"):
        keep(sms.inbound(A_USER, text))
    keep(client.get(f"/v1/conversations/{conv['conversation_id']}", headers=headers))
    keep(client.get("/v1/conversations", headers=headers))
    keep(client.get("/v1/sms/metrics", headers=headers))
    keep(client.get("/v1/senders", headers=headers))
    keep(client.get(f"/v1/senders/{A_NUMBER}/compliance", headers=headers))
    template = keep(
        client.post(
            "/v1/sms-templates",
            json={
                "title": "t",
                "body": "Hi {{entity:name}}",
                "env_phone_numbers": {"live": A_NUMBER},
            },
            headers=headers,
        )
    ).get_json()
    keep(client.post(f"/v1/sms-templates/{template['id']}/preview", json={}, headers=headers))
    keep(client.post(f"/v1/sms-templates/{template['id']}/duplicate", headers=headers))
    keep(client.get("/v1/sms-templates", headers=headers))
    keep(client.get("/v1/openapi.json"))
    # Errors: a bad key, a bad connector, a forged signature, Twilio refusing the sends.
    keep(client.get("/v1/conversations", headers={**headers, "X-PolyAi-Auth-Token": "pk_bad"}))
    keep(client.get("/v1/conversations", headers={**headers, "X-TOKEN-ID": "con_nope"}))
    keep(sms.post_signed("/v1/twilio/sms", sms.inbound_params(A_USER, "x"), signature="forged"))
    emulator.fail_next(1, 21211)
    keep(sms.send(A_USER, "to a number Twilio refuses"))
    emulator.fail_next(5, 20429)
    keep(sms.send(A_USER, "throttled until it fails"))
    for _ in range(5):  # the retries, each after its (short) backoff
        time.sleep(0.2)
        sms.run_due_timers()
    keep(client.get("/v1/conversations", headers=headers))
    return out
