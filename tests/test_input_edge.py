"""The input edge, on every backend (memory, SQLite, PostgreSQL, MariaDB): text no backend can
store, JSON nested too deep for a second parse, dates at the ends of the calendar, values that a
``$``-anchored pattern let through with a trailing newline, and what the ``peewee`` logger shows.

"Changes nothing" is checked through the public API, as in ``tests/test_bad_input.py``: the
tenant's conversations (with every message and status), templates, senders, metrics and what
reached the gateway are the same before and after the request.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator

import peewee as pw
import pytest
import requests
from flask import Flask, request
from store_backends import BACKENDS, storage_url

from flask_polysms.backends import create_store
from flask_polysms.crypto import hash_api_key
from flask_polysms.errors import InvalidInput
from flask_polysms.services.sender_facts import describe_address
from flask_polysms.web.api.blueprint import Parser

AGENT = "+14155552671"
USER = "+14155552674"
OTHER_USER = "+14155552675"
OUT = "/v1/outbound-sms"
TEMPLATES = "/v1/sms-templates"
CONVERSATIONS = "/v1/conversations"
SENDERS = "/v1/senders"
METRICS = "/v1/sms/metrics"
SMS_HOOK = "/v1/twilio/sms"
STATUS_HOOK = "/v1/twilio/status"
SURROGATE = "must be valid Unicode text (no lone surrogates)"


@pytest.fixture(params=BACKENDS)
def sms(request, make_sms, tmp_path):
    """A tenant with one conversation (its greeting sent, with a Twilio SID) and one template."""
    url = storage_url(request, request.param, tmp_path)
    # Limits out of the way: the deep-JSON test sends a thousand requests.
    limits = {
        "POLYSMS_RATE_LIMIT": "10000 per second",
        "POLYSMS_READ_RATE_LIMIT": "10000 per second",
    }
    harness = make_sms(numbers=(AGENT,), POLYSMS_STORAGE_URL=url, **limits)
    harness.greeting = harness.send_ok(USER, "seed")
    harness.sid = harness.outbox[0]["sid"]
    created = _json(
        harness, TEMPLATES, {"title": "t1", "body": "hi", "env_phone_numbers": {"live": AGENT}}
    )
    assert created.status_code == 201, created.get_json()
    harness.template_id = created.get_json()["id"]
    yield harness
    harness.store.disconnect()


def _json(h, path: str, body, method: str = "POST", **kw):
    """Send ``body`` (a str is sent as it is: JSON escapes such as \\ud800 stay escapes)."""
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return h.client.open(
        path,
        method=method,
        data=data,
        content_type="application/json",
        headers={**h.tenant.headers, **kw.pop("headers", {})},
        **kw,
    )


def _get(h, path: str, **headers):
    return h.client.get(path, headers={**h.tenant.headers, **headers})


def snapshot(h) -> str:
    """Everything the tenant can see, as one comparable string."""
    headers = h.tenant.headers
    return json.dumps(
        {
            "conversations": h.conversations(),
            "templates": h.client.get(TEMPLATES, headers=headers).get_json(),
            "senders": h.client.get(SENDERS, headers=headers).get_json(),
            "metrics": h.metrics(),
            "outbox": h.outbox,
        },
        sort_keys=True,
    )


def _assert_refused(h, response, field: str, message: str) -> None:
    assert response.status_code == 400, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["errors"][field] == [message], body


# -- lone surrogates ------------------------------------------------------------------------------
# (what, request, the field the errors name). JSON bodies are written by hand: "\ud800" in them is
# the JSON escape a client sends, which Python decodes to a lone surrogate.
SURROGATE_CASES: list[tuple[str, Callable, str]] = [
    (
        "outbound message",
        lambda h: _json(h, OUT, '{"user_number": "+14155552675", "message": "hi \\ud800"}'),
        "message",
    ),
    (
        "outbound message, low surrogate alone",
        lambda h: _json(h, OUT, '{"user_number": "+14155552675", "message": "\\udc00 hi"}'),
        "message",
    ),
    (
        "outbound user number",
        lambda h: _json(h, OUT, '{"user_number": "+1415555267\\udfff", "message": "hi"}'),
        "user_number",
    ),
    (
        "a JSON key",
        lambda h: _json(h, OUT, '{"user_number": "+14155552675", "message": "hi", "\\ud800": 1}'),
        "\\ud800",
    ),
    (
        "template title",
        lambda h: _json(
            h, TEMPLATES, '{"title": "\\ud800", "body": "b", "env_phone_numbers": {"live": "x"}}'
        ),
        "title",
    ),
    (
        "template sender, nested",
        lambda h: _json(
            h, TEMPLATES, '{"title": "t2", "body": "b", "env_phone_numbers": {"live": "\\ud800"}}'
        ),
        "env_phone_numbers.live",
    ),
    (
        "template patch",
        lambda h: _json(
            h, f"{TEMPLATES}/{h.template_id}", '{"body": "new \\ud800"}', method="PATCH"
        ),
        "body",
    ),
    (
        "template preview values, in a list",
        lambda h: _json(
            h, f"{TEMPLATES}/{h.template_id}/preview", '{"entities": {"a": ["\\ud800"]}}'
        ),
        "entities.a",
    ),
    (
        "sender campaign id",
        lambda h: _json(
            h,
            f"{SENDERS}/{AGENT}",
            '{"registration": "registered", "campaign_id": "C\\ud800"}',
            method="PATCH",
        ),
        "campaign_id",
    ),
    (
        "X-TOKEN-ID header",
        lambda h: _get(h, CONVERSATIONS, **{"X-TOKEN-ID": "con_\ud800"}),
        "X-TOKEN-ID",
    ),
    (
        "API key header",
        lambda h: _get(h, CONVERSATIONS, **{"X-PolyAi-Auth-Token": "key\udfff"}),
        "X-PolyAi-Auth-Token",
    ),
]


def test_lone_surrogates_are_a_400_naming_the_field_and_change_nothing(sms):
    """Text that is not Unicode scalar values (a lone surrogate, sent as a JSON escape) cannot be
    encoded for any database: SQLite and MariaDB answered 500, PostgreSQL broke its connection's
    prepared statements, memory stored it. Every route refuses it with a 400 naming the field."""
    before = snapshot(sms)
    for what, send, field in SURROGATE_CASES:
        response = send(sms)
        assert response.status_code == 400, (what, response.get_data(as_text=True)[:500])
        assert response.get_json()["errors"] == {field: [SURROGATE]}, what
        assert "lone surrogates" in response.get_json()["detail"], what
    assert snapshot(sms) == before
    # The store still serves every tenant (PostgreSQL: the pooled connection is intact).
    sms.send_ok(OTHER_USER, "after")


def test_a_surrogate_pair_is_one_character_and_is_kept(sms):
    """A character outside the BMP written as two JSON escapes is valid text: stored and read back
    whole, on every backend (MariaDB: utf8mb4)."""
    response = _json(sms, OUT, '{"user_number": "+14155552675", "message": "ok \\ud83d\\ude00"}')
    assert response.status_code == 202, response.get_json()
    conversation = sms.conversation(response.get_json()["conversation_id"])
    assert [m["body"] for m in conversation["messages"]] == ["ok \U0001f600"]


def test_nul_and_surrogate_together_name_each_field(sms):
    response = _json(sms, OUT, '{"user_number": "+1415555267\\u0000", "message": "\\ud800"}')
    assert response.status_code == 400
    assert response.get_json()["errors"] == {
        "user_number": ["must not contain NUL (0x00) characters"],
        "message": [SURROGATE],
    }


# -- deep JSON ------------------------------------------------------------------------------------
def _nested(depth: int) -> str:
    return (
        '{"user_number": "+14155552675", "message": "hi", "x": ' + "[" * depth + "]" * depth + "}"
    )


def test_deep_json_is_a_400_on_every_json_route(sms):
    """webargs parses the body a second time, deeper in the stack than the first parse: a body
    the first parse took (about 980 levels under a shallow stack) made it hit the recursion
    limit, a 500. Depths on both sides of that, whatever this test's own stack depth."""
    before = snapshot(sms)
    routes = (
        ("POST", OUT),
        ("POST", TEMPLATES),
        ("PATCH", f"{TEMPLATES}/{sms.template_id}"),
        ("POST", f"{TEMPLATES}/{sms.template_id}/preview"),
        ("PATCH", f"{SENDERS}/{AGENT}"),
    )
    answers = {
        (depth, path): _json(sms, path, _nested(depth), method=method)
        for depth in [*range(101, sys.getrecursionlimit(), 3), 5000]
        for method, path in routes
    }
    assert [k for k, r in answers.items() if r.status_code != 400] == []
    nested = {"detail": "invalid JSON body: nested too deeply"}
    assert [k for k, r in answers.items() if r.get_json() != nested] == []
    assert snapshot(sms) == before


def test_json_within_the_depth_limit_reaches_the_schema(sms):
    response = _json(sms, OUT, _nested(99))
    assert response.status_code == 400
    assert response.get_json()["errors"] == {"x": ["Unknown field."]}


def test_the_parsers_own_parse_of_a_deep_body_is_a_400():
    """Wherever webargs parses the body again, a RecursionError there is a 400, not a 500."""
    import marshmallow as ma

    app = Flask("polysms_parser")
    body = "[" * 50_000 + "]" * 50_000
    with app.test_request_context("/", method="POST", data=body, content_type="application/json"):
        with pytest.raises(InvalidInput, match="nested too deeply"):
            Parser().load_json(request, ma.Schema())


# -- dates at the ends of the calendar ------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "start", "end", "days"),
    [
        ("start=9999-01-01&end=9999-12-31", "9999-01-01", "9999-12-31", 365),
        ("end=9999-12-31", "9999-12-02", "9999-12-31", 30),
        ("end=0001-01-05", "0001-01-01", "0001-01-05", 5),
        ("start=0001-01-01&end=0001-01-01", "0001-01-01", "0001-01-01", 1),
    ],
)
def test_metrics_at_the_ends_of_the_calendar_answer_their_days(sms, query, start, end, days):
    """The day after 9999-12-31 (and the default start 29 days before 0001-01-05) do not exist:
    OverflowError, a 500. A valid range there has no figures: zeros, day by day."""
    response = _get(sms, f"{METRICS}?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    figures = response.get_json()
    assert (figures["start"], figures["end"], len(figures["by_day"])) == (start, end, days)
    assert figures["sent"] == 0 and figures["delivery_rate"] is None


# -- patterns anchored with $ (which also matches before a trailing newline) -----------------------
def test_a_status_with_a_trailing_newline_is_a_400_and_changes_nothing(sms):
    before = snapshot(sms)
    for status in ("delivered\n", "delivered\r\n", "\ndelivered"):
        response = sms.status_callback(sms.sid, status)
        _assert_refused(sms, response, "MessageStatus", "not a status")
    assert snapshot(sms) == before
    assert sms.status_callback(sms.sid, "delivered").status_code == 200


def test_a_campaign_id_or_country_with_a_trailing_newline_is_a_400(sms):
    before = snapshot(sms)
    response = _json(
        sms,
        f"{SENDERS}/{AGENT}",
        {"registration": "registered", "campaign_id": "CABCDEF\n"},
        method="PATCH",
    )
    _assert_refused(sms, response, "campaign_id", "1 to 64 characters without spaces")
    response = _get(sms, f"{SENDERS}/{AGENT}/compliance?destinations=US%0A")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert "an ISO 3166 alpha-2 code" in json.dumps(response.get_json()["errors"])
    assert snapshot(sms) == before


@pytest.mark.parametrize(
    "address", ["12345\n", "MG" + "a" * 32 + "\n", AGENT + "\n", "\u0661\u0662\u0663\u0664\u0665"]
)
def test_sender_facts_take_no_trailing_newline_nor_other_scripts_digits(address):
    with pytest.raises(ValueError):
        describe_address(address)


def test_the_emulator_refuses_a_number_with_a_trailing_newline(make_twilio_emulator):
    # The account make_twilio_emulator registers (tests/conftest.py), written out: a full run
    # also collects example_app/tests, whose conftest module shadows ours by name.
    account_sid, auth_token = "AC" + "5e" * 16, "emulator-auth-token-0123456789ab"
    emulator = make_twilio_emulator()
    for to in (USER + "\n", "+\u0661\u0664\u0661\u0665\u0665\u0665\u0665\u0662\u0666\u0667\u0661"):
        answer = requests.post(
            f"{emulator.base_url}/2010-04-01/Accounts/{account_sid}/Messages.json",
            data={"To": to, "From": AGENT, "Body": "hi"},
            auth=(account_sid, auth_token),
            timeout=5,
        )
        assert (answer.status_code, answer.json()["code"]) == (400, 21211)
    assert emulator.messages == []


def test_a_table_prefix_with_a_trailing_newline_is_refused(tmp_path):
    with pytest.raises(ValueError, match="table_prefix"):
        create_store(f"sqlite:///{tmp_path / 'p.db'}", table_prefix="polysms_\n")


# -- what the peewee logger shows -----------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def peewee_debug() -> Iterator[_Records]:
    """Everything the ``peewee`` logger (and its children) says at DEBUG during the test."""
    logger = logging.getLogger("peewee")
    records = _Records()
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]
    + [pytest.param("mysql", marks=pytest.mark.services)],
)
def test_the_peewee_logger_never_shows_our_values(
    request, make_sms, tmp_path, peewee_debug, backend
):
    """At DEBUG Peewee logs each statement with its values: the API-key digest on every request,
    the encrypted Auth Token, bodies and numbers. Our statements are logged as SQL text only; a
    host app's own Peewee database still logs its values."""
    url = storage_url(request, backend, tmp_path)
    sms = make_sms(numbers=(AGENT,), POLYSMS_STORAGE_URL=url)
    try:
        peewee_debug.lines.clear()
        sent = sms.send_ok(USER, "a secret outbound body")
        sms.inbound_ok(USER, "a secret inbound reply")
        greeting = sms.store.list_messages(sent["conversation_id"])[0]
        assert sms.status_callback(greeting.twilio_sid, "delivered").status_code == 200
        project = sms.store.get_project(sms.tenant.project_id)
        secrets = {
            "API key digest": hash_api_key(sms.tenant.api_key),
            "API key": sms.tenant.api_key,
            "token ciphertext": project.twilio_auth_token_encrypted,
            "outbound body": "a secret outbound body",
            "inbound body": "a secret inbound reply",
            "user number": USER[2:],
            "agent number": AGENT[2:],
            "message SID": greeting.twilio_sid,
        }
        logged = "\n".join(peewee_debug.lines)
        assert "SELECT" in logged and "INSERT" in logged  # the statements themselves are there
        for what, secret in secrets.items():
            assert secret and secret not in logged, f"{what} in the peewee log"
    finally:
        sms.store.disconnect()

    host = pw.SqliteDatabase(str(tmp_path / "host.db"))
    host.execute_sql("SELECT ?", ("a host value",))
    host.close()
    assert "a host value" in peewee_debug.lines[-1]
