"""Bad input: every malformed request answers a clear 4xx (``{"detail": ...}``) and changes nothing.

Oversize bodies, wrong content types, invalid UTF-8, invalid or absurd JSON, NUL characters, lone
surrogates, over-long ids and keys, thousands of form fields on a webhook. "Changes nothing" is
checked through the public API: the tenant's conversations (with every message and status),
templates, senders, metrics and what reached the gateway are the same before and after the request.

Run against the memory store and PostgreSQL, which refuses NUL characters in text and values longer
than its key columns: both must answer the same 4xx. ``tests/test_input_edge.py`` runs the text,
nesting and pattern checks on SQLite and MariaDB as well.

The property-based tests of the validators live with them: ``tests/test_phone.py`` (E.164),
``tests/test_keywords.py`` (keyword normaliser), ``tests/test_tokens.py`` (token renderer) and
``tests/test_segments.py`` (segment counter).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest
from flask import Flask
from store_backends import storage_url

from flask_polysms import PolySMS
from flask_polysms.testing import provision

AGENT = "+14155552671"
USER = "+14155552674"
OUT = "/v1/outbound-sms"
TEMPLATES = "/v1/sms-templates"
CONVERSATIONS = "/v1/conversations"
SMS_HOOK = "/v1/twilio/sms"
STATUS_HOOK = "/v1/twilio/status"


@pytest.fixture(params=["memory", pytest.param("postgresql", marks=pytest.mark.services)])
def sms(request, make_sms, tmp_path):
    """A tenant with one conversation already (its greeting sent, with a Twilio SID)."""
    config = {}
    if request.param == "postgresql":
        config["POLYSMS_STORAGE_URL"] = storage_url(request, "postgresql", tmp_path)
    harness = make_sms(numbers=(AGENT,), **config)
    harness.greeting = harness.send_ok(USER, "seed")
    harness.sid = harness.outbox[0]["sid"]
    return harness


def snapshot(h) -> str:
    """Everything the tenant can see, as one comparable string."""
    headers = h.tenant.headers
    return json.dumps(
        {
            "conversations": h.conversations(),
            "templates": h.client.get(TEMPLATES, headers=headers).get_json(),
            "senders": h.client.get("/v1/senders", headers=headers).get_json(),
            "metrics": h.metrics(),
            "outbox": h.outbox,
        },
        sort_keys=True,
    )


def _json(h, path: str, data: bytes | str, content_type: str = "application/json", **kw):
    return h.client.post(path, data=data, content_type=content_type, headers=h.tenant.headers, **kw)


def _get(h, path: str, **kw):
    headers = {**h.tenant.headers, **kw.pop("headers", {})}
    return h.client.get(path, headers=headers, **kw)


def _unsized(h, path: str, data: bytes):
    """A body without Content-Length (chunked): the cap applies while it is read."""
    return h.client.post(
        path,
        input_stream=io.BytesIO(data),
        content_type="application/json",
        headers=h.tenant.headers,
        environ_overrides={"wsgi.input_terminated": True},
    )


def _form(h, path: str, data, content_type="application/x-www-form-urlencoded", **headers):
    return h.client.post(path, data=data, content_type=content_type, headers=headers)


GOOD = {"user_number": USER, "message": "hello"}
LONG = "a" * 200
FIELDS = "&".join(f"f{i}=v" for i in range(5000))

# (what, request, expected status)
CASES: list[tuple[str, Callable, int]] = [
    # -- sizes
    (
        "JSON body over 64 KB",
        lambda h: _json(h, OUT, json.dumps({**GOOD, "message": "x" * 70_000})),
        413,
    ),
    (
        "body over 64 KB without Content-Length",
        lambda h: _unsized(h, OUT, b" " * 70_000 + b"{}"),
        413,
    ),
    ("form over 64 KB on a webhook", lambda h: _form(h, SMS_HOOK, {"Body": "x" * 70_000}), 413),
    (
        "message of 1601 characters",
        lambda h: _json(h, OUT, json.dumps({**GOOD, "message": "x" * 1601})),
        400,
    ),
    (
        "template title of 10,000 characters",
        lambda h: _json(
            h,
            TEMPLATES,
            json.dumps({"title": "t" * 10_000, "body": "b", "env_phone_numbers": {"live": AGENT}}),
        ),
        400,
    ),
    # -- content types
    ("JSON sent as text/plain", lambda h: _json(h, OUT, json.dumps(GOOD), "text/plain"), 400),
    (
        "a form to a JSON route",
        lambda h: _json(
            h, OUT, "user_number=%2B14155552674&message=hi", "application/x-www-form-urlencoded"
        ),
        400,
    ),
    (
        "XML to a JSON route",
        lambda h: _json(h, OUT, "<sms><message>hi</message></sms>", "application/xml"),
        400,
    ),
    ("no body at all", lambda h: h.client.post(OUT, headers=h.tenant.headers), 400),
    (
        "JSON to a webhook, unsigned",
        lambda h: h.client.post(SMS_HOOK, json={"To": AGENT, "From": USER, "Body": "hi"}),
        403,
    ),
    # -- encodings and malformed JSON
    (
        "invalid UTF-8 in a JSON body",
        lambda h: _json(h, OUT, b'{"user_number": "+14155552674", "message": "\xff\xfe"}'),
        400,
    ),
    ("UTF-16 JSON body", lambda h: _json(h, OUT, json.dumps(GOOD).encode("utf-16")), 400),
    ("truncated JSON", lambda h: _json(h, OUT, '{"user_number": "+14155552674", "mess'), 400),
    ("a JSON array", lambda h: _json(h, OUT, json.dumps([GOOD])), 400),
    ("a JSON string", lambda h: _json(h, OUT, '"hello"'), 400),
    ("JSON nested 20,000 levels", lambda h: _json(h, OUT, "[" * 20_000 + "]" * 20_000), 400),
    (
        "JSON nested 101 levels in a field",
        lambda h: _json(h, OUT, '{"message": "hi", "x": ' + "[" * 101 + "]" * 101 + "}"),
        400,
    ),
    (
        "JSON object nested 5,000 levels",
        lambda h: _json(h, OUT, '{"a":' * 5000 + "1" + "}" * 5000),
        400,
    ),
    (
        "a number beyond float range",
        lambda h: _json(h, OUT, '{"user_number": "+14155552674", "message": 1e400}'),
        400,
    ),
    ("NaN", lambda h: _json(h, OUT, '{"user_number": "+14155552674", "message": NaN}'), 400),
    ("an unknown field", lambda h: _json(h, OUT, json.dumps({**GOOD, "priority": "high"})), 400),
    (
        "a lenient, non-E.164 number",
        lambda h: _json(h, OUT, json.dumps({**GOOD, "user_number": "+1 (415) 555-2674"})),
        400,
    ),
    (
        "invalid UTF-8 in a query value",
        lambda h: _get(h, CONVERSATIONS + "?user_number=%FF%FE"),
        400,
    ),
    ("invalid UTF-8 in a path id", lambda h: _get(h, CONVERSATIONS + "/%FF%FE"), 404),
    ("a limit beyond float range", lambda h: _get(h, CONVERSATIONS + "?limit=1e309"), 400),
    (
        "a cursor that is not one",
        lambda h: _get(h, CONVERSATIONS + "?cursor=%21%21not-base64"),
        400,
    ),
    (
        "metrics over 366 days",
        lambda h: _get(h, "/v1/sms/metrics?start=0001-01-01&end=9999-12-31"),
        400,
    ),
    # -- NUL characters (PostgreSQL cannot store them)
    (
        "NUL in a JSON value",
        lambda h: _json(h, OUT, json.dumps({**GOOD, "message": "hi\x00"})),
        400,
    ),
    ("NUL in a JSON key", lambda h: _json(h, OUT, json.dumps({**GOOD, "x\x00": 1})), 400),
    (
        "NUL in a template title",
        lambda h: _json(
            h,
            TEMPLATES,
            json.dumps({"title": "a\x00", "body": "b", "env_phone_numbers": {"live": AGENT}}),
        ),
        400,
    ),
    ("NUL in a path id", lambda h: _get(h, CONVERSATIONS + "/conv%00x"), 400),
    # -- lone surrogates (no database driver can encode them)
    (
        "a lone surrogate in a JSON value",
        lambda h: _json(h, OUT, '{"user_number": "+14155552674", "message": "hi \\ud800"}'),
        400,
    ),
    (
        "a lone surrogate in a JSON key",
        lambda h: _json(h, OUT, '{"user_number": "+14155552674", "message": "hi", "\\udc00": 1}'),
        400,
    ),
    (
        "a lone surrogate in X-TOKEN-ID",
        lambda h: _get(h, CONVERSATIONS, headers={"X-TOKEN-ID": "con\udfff"}),
        400,
    ),
    ("NUL in a query value", lambda h: _get(h, CONVERSATIONS + "?cursor=%00"), 400),
    ("NUL in X-TOKEN-ID", lambda h: _get(h, CONVERSATIONS, headers={"X-TOKEN-ID": "con\x00"}), 400),
    (
        "NUL in a webhook form, unsigned",
        lambda h: _form(h, SMS_HOOK, {"To": AGENT, "From": USER, "Body": "a\x00"}),
        400,
    ),
    # -- over-long ids and keys
    ("a 10,000-character path id", lambda h: _get(h, CONVERSATIONS + "/" + "c" * 10_000), 404),
    (
        "a 5,000-character X-TOKEN-ID",
        lambda h: _get(h, CONVERSATIONS, headers={"X-TOKEN-ID": "c" * 5000}),
        404,
    ),
    (
        "a 5,000-character API key",
        lambda h: _get(h, CONVERSATIONS, headers={"X-PolyAi-Auth-Token": "k" * 5000}),
        401,
    ),
    # -- webhooks: many fields, bad encodings, values the Store cannot keep (signed by the project)
    (
        "5,000 form fields on a webhook, unsigned",
        lambda h: _form(h, SMS_HOOK, FIELDS + f"&To=%2B{AGENT[1:]}"),
        403,
    ),
    (
        "invalid UTF-8 in a webhook form, unsigned",
        lambda h: _form(h, SMS_HOOK, b"To=%2B14155552671&From=%FF&Body=%FE"),
        403,
    ),
    (
        "signed inbound with a 200-character MessageSid",
        lambda h: h.post_signed(
            SMS_HOOK, {"MessageSid": "SM" + LONG, "From": USER, "To": AGENT, "Body": "hi"}
        ),
        400,
    ),
    (
        "signed inbound with a 200-character From",
        lambda h: h.post_signed(
            SMS_HOOK, {"MessageSid": "SM1", "From": "+1" + "5" * 200, "To": AGENT, "Body": "hi"}
        ),
        400,
    ),
    (
        "signed inbound without MessageSid",
        lambda h: h.post_signed(SMS_HOOK, {"From": USER, "To": AGENT, "Body": "hi"}),
        400,
    ),
    (
        "signed status with a 200-character MessageSid",
        lambda h: h.post_signed(
            STATUS_HOOK, {"MessageSid": "SM" + LONG, "MessageStatus": "delivered", "From": AGENT}
        ),
        400,
    ),
    (
        "signed status with a trailing newline",
        lambda h: h.post_signed(
            STATUS_HOOK, {"MessageSid": h.sid, "MessageStatus": "delivered\n", "From": AGENT}
        ),
        400,
    ),
    (
        "signed status whose status is no word",
        lambda h: h.post_signed(
            STATUS_HOOK, {"MessageSid": h.sid, "MessageStatus": "İ" * 32, "From": AGENT}
        ),
        400,
    ),
]


@pytest.mark.parametrize(("what", "send", "status"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx_and_changes_nothing(sms, what, send, status):
    before = snapshot(sms)
    response = send(sms)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.is_json, response.get_data(as_text=True)[:500]
    detail = response.get_json()["detail"]
    assert isinstance(detail, str) and detail
    assert snapshot(sms) == before


def test_nul_and_nesting_errors_name_the_field(sms):
    response = _json(sms, OUT, json.dumps({**GOOD, "message": "hi\x00"}))
    assert response.get_json()["errors"] == {"message": ["must not contain NUL (0x00) characters"]}
    response = _json(sms, OUT, "[" * 20_000 + "]" * 20_000)
    assert "nested too deeply" in response.get_json()["detail"]


def test_a_signed_webhook_with_thousands_of_extra_fields_is_one_message(sms):
    """Twilio adds parameters without notice: 5,000 of them are covered by the signature and
    ignored; the message is recorded once, as one message."""
    params = {f"Extra{i}": "v" for i in range(5000)}
    params.update({"MessageSid": "SM" + "e" * 32, "From": USER, "To": AGENT, "Body": "hello"})
    response = sms.post_signed(SMS_HOOK, params)
    assert response.status_code == 200
    (conversation,) = [c for c in sms.conversations() if c["id"] == sms.greeting["conversation_id"]]
    inbound = [m for m in conversation["messages"] if m["direction"] == "inbound"]
    assert [m["body"] for m in inbound] == ["hello"]


def test_an_unreadable_error_code_in_a_status_callback_is_ignored_not_a_500(sms):
    """Twilio's callback is applied; only the code it could not read (non-ASCII digits, or more
    than a 32-bit column holds) is left out."""
    for code in ("²", "9" * 30):
        response = sms.post_signed(
            STATUS_HOOK,
            {
                "MessageSid": sms.sid,
                "MessageStatus": "undelivered",
                "From": AGENT,
                "ErrorCode": code,
            },
        )
        assert response.status_code == 200
    (message,) = sms.conversation(sms.greeting["conversation_id"])["messages"]
    assert (message["status"], message["error_code"]) == ("undelivered", None)


def test_too_many_multipart_parts_within_the_size_cap_is_a_413_that_says_so():
    app = Flask("polysms_parts")
    app.config.update(
        SECRET_KEY="parts", POLYSMS_GATEWAY="outbox", POLYSMS_MAX_CONTENT_LENGTH=1024 * 1024
    )
    app.testing = True
    PolySMS(app)
    provision(app, numbers=(AGENT,))
    fields = {f"f{i}": "v" for i in range(1500)}  # Werkzeug parses at most 1,000 parts
    response = app.test_client().post(SMS_HOOK, data=fields, content_type="multipart/form-data")
    assert response.status_code == 413
    assert response.get_json() == {"detail": "request body with too many form parts"}
