"""Webhooks for the project's own systems (``/v1/webhooks``), on every backend (memory, SQLite,
PostgreSQL, MariaDB), delivered to a real HTTP receiver on 127.0.0.1.

- ``POST /v1/webhooks`` answers 201 with a ``whsec_`` secret shown once (never listed, stored
  encrypted); ``DELETE`` answers 204 and stops the deliveries; another project's ids are 404;
  bad input is 400 and writes nothing; outside debug and testing only ``https://`` URLs.
- Each event a subscription wants is POSTed once, as ``{"type", "timestamp", "data"}`` signed as
  the Standard Webhooks specification says (checked with ``standardwebhooks``' own ``verify``);
  events it does not want are not sent.
- An answer other than 2xx is retried with the same ``webhook-id``, waits doubling from 5 s (at
  most 2 h), no attempt later than 24 h after the event; every attempt is in the delivery log.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import store_backends
from cryptography.fernet import Fernet
from flask import Flask
from freezegun import freeze_time
from standardwebhooks import Webhook
from store_backends import BACKENDS

from flask_polysms import PolySMS
from flask_polysms.services.state import get_state
from flask_polysms.testing import provision, sign_twilio_request

AGENT = "+14155552671"
USER = "+14155552674"
START = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
ALL_EVENTS = [
    "message.received",
    "message.status",
    "opt_out.created",
    "opt_out.removed",
    "conversation.opened",
    "conversation.closed",
    "conversation.handoff",
]


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST (headers, body) and answers each with
    the next of ``statuses`` (the last one again once they run out)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses = [200]
        #: When set to an unset Event: every request waits for it (at most 8 s) before its answer,
        #: as a receiver that hangs does.
        self.hold: threading.Event | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                if receiver.hold is not None:
                    receiver.hold.wait(timeout=8)
                status = (
                    receiver.statuses.pop(0)
                    if len(receiver.statuses) > 1
                    else (receiver.statuses[0])
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()

    def events(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def types(self) -> list[str]:
        return [event["type"] for event in self.events()]


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


@pytest.fixture
def sms(make_sms, storage_url):
    harness = make_sms(
        agent=lambda conv, text: None, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url
    )
    yield harness
    get_state(harness.app).store.disconnect()


def subscribe(sms, url: str, events: list[str], tenant=None, status: int = 201) -> dict:
    response = sms.client.post(
        "/v1/webhooks", json={"url": url, "events": events}, headers=(tenant or sms.tenant).headers
    )
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def listed(sms, tenant=None) -> list[dict]:
    response = sms.client.get("/v1/webhooks", headers=(tenant or sms.tenant).headers)
    assert response.status_code == 200
    return response.get_json()["webhooks"]


def deliveries(sms, subscription_id: str, tenant=None) -> list[dict]:
    response = sms.client.get(
        f"/v1/webhooks/{subscription_id}/deliveries", headers=(tenant or sms.tenant).headers
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["deliveries"]


def verified(request: dict, secret: str) -> dict:
    """The body of a received request, once its signature is verified by standardwebhooks."""
    return Webhook(secret).verify(request["body"], request["headers"])


def next_retry_at(sms) -> datetime | None:
    """When the next waiting delivery retry is due (None: none waits)."""
    waiting = [
        when for when, job, _ in get_state(sms.app).scheduler.pending() if job == "webhook-delivery"
    ]
    if not waiting:
        return None
    return min(waiting)


# -- subscribing ----------------------------------------------------------------------------------
def test_the_secret_is_shown_once_and_kept_encrypted(sms, receiver):
    created = subscribe(sms, receiver.url, ["message.received", "opt_out.created"])
    assert set(created) == {"id", "url", "events", "secret", "created_at"}
    assert created["url"] == receiver.url
    assert created["events"] == ["message.received", "opt_out.created"]
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[len("whsec_") :])) == 32

    (shown,) = listed(sms)
    assert shown == {k: v for k, v in created.items() if k != "secret"}
    assert secret not in json.dumps(listed(sms))
    stored = sms.store.get_webhook_subscription(sms.tenant.project_id, created["id"])
    assert secret not in stored.secret_encrypted
    assert secret[len("whsec_") :] not in stored.secret_encrypted
    assert get_state(sms.app).cipher.decrypt(stored.secret_encrypted) == secret
    # Two subscriptions never share a secret.
    assert subscribe(sms, receiver.url, ["message.status"])["secret"] != secret


def test_the_projects_webhook_events_follow_its_subscriptions(sms, receiver):
    project_id = sms.tenant.project_id
    assert sms.store.get_project(project_id).webhook_events is None
    first = subscribe(sms, receiver.url, ["opt_out.created", "message.received"])
    second = subscribe(sms, receiver.url, ["message.received", "conversation.closed"])
    assert sms.store.get_project(project_id).webhook_events == (
        "conversation.closed,message.received,opt_out.created"
    )
    assert (
        sms.client.delete(f"/v1/webhooks/{first['id']}", headers=sms.tenant.headers).status_code
        == 204
    )
    assert sms.store.get_project(project_id).webhook_events == (
        "conversation.closed,message.received"
    )
    assert (
        sms.client.delete(f"/v1/webhooks/{second['id']}", headers=sms.tenant.headers).status_code
        == 204
    )
    assert sms.store.get_project(project_id).webhook_events is None
    assert listed(sms) == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"url": "https://example.org/hook"}, "events"),
        ({"events": ["message.received"]}, "url"),
        ({"url": "https://example.org/hook", "events": []}, "events"),
        ({"url": "https://example.org/hook", "events": ["message.sent"]}, "events"),
        ({"url": "https://example.org/hook", "events": ["opt_out.created"] * 2}, "events"),
        ({"url": "https://example.org/hook", "events": "message.received"}, "events"),
        ({"url": "ftp://example.org/hook", "events": ["message.received"]}, "url"),
        ({"url": "https:///no-host", "events": ["message.received"]}, "url"),
        ({"url": "https://example.org:99999/", "events": ["message.received"]}, "url"),
        ({"url": "https://example.org/a b", "events": ["message.received"]}, "url"),
        ({"url": 7, "events": ["message.received"]}, "url"),
        ({"url": "https://example.org/" + "a" * 2100, "events": ["message.received"]}, "url"),
        ({"url": "https://example.org/hook", "events": ["message.received"], "x": 1}, "x"),
    ],
)
def test_bad_input_is_400_and_writes_nothing(sms, body, field):
    response = sms.client.post("/v1/webhooks", json=body, headers=sms.tenant.headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    answer = response.get_json()
    assert set(answer) == {"detail", "errors"}
    assert any(key == field or key.startswith(f"{field}.") for key in answer["errors"])
    assert listed(sms) == []
    assert sms.store.get_project(sms.tenant.project_id).webhook_events is None


def test_a_body_that_is_not_json_is_400(sms):
    response = sms.client.post(
        "/v1/webhooks", data="url=https://example.org", headers=sms.tenant.headers
    )
    assert response.status_code == 400
    assert listed(sms) == []


def test_another_projects_subscriptions_are_absent(sms, receiver):
    other = sms.provision(numbers=("+14155552679",))
    theirs = subscribe(sms, receiver.url, ["message.received"], tenant=other)
    mine = subscribe(sms, receiver.url, ["message.received"])
    assert [s["id"] for s in listed(sms)] == [mine["id"]]
    for method, path in (
        ("DELETE", f"/v1/webhooks/{theirs['id']}"),
        ("GET", f"/v1/webhooks/{theirs['id']}/deliveries"),
        ("DELETE", "/v1/webhooks/whk_unknown"),
        ("GET", "/v1/webhooks/whk_unknown/deliveries"),
    ):
        response = sms.client.open(path, method=method, headers=sms.tenant.headers)
        assert response.status_code == 404, (method, path)
        assert set(response.get_json()) == {"detail"}
    assert [s["id"] for s in listed(sms, tenant=other)] == [theirs["id"]]
    # The other project's events never reach this project's subscription, and the reverse.
    sms.inbound_ok(USER, "hello", to="+14155552679", token=other.twilio_auth_token)
    assert len(receiver.requests) == 1
    assert (
        verified(receiver.requests[0], theirs["secret"])["data"]["project_id"] == other.project_id
    )
    assert deliveries(sms, mine["id"]) == []


def test_https_only_outside_debug_and_testing(receiver):
    def app(**flags) -> Flask:
        app = Flask(f"webhooks_{len(flags)}_{flags}")
        app.config.update(
            SECRET_KEY="s",
            POLYSMS_GATEWAY="outbox",
            POLYSMS_SCHEDULER="manual",
            POLYSMS_PUBLIC_URL="https://sms.example.com",
            POLYSMS_ENCRYPTION_KEYS=["mWJdWY9nWOAgYSsFcJYRNmAVF0VrQvZjYrDTM0QBvEA="],
            **flags,
        )
        PolySMS(app)
        return app

    production, debug = app(), app(DEBUG=True)
    production.testing = False
    for flask_app, http_ok in ((production, False), (debug, True)):
        tenant = provision(flask_app, numbers=(AGENT,))
        client = flask_app.test_client()
        response = client.post(
            "/v1/webhooks",
            json={"url": receiver.url, "events": ["message.received"]},
            headers=tenant.headers,
        )
        if http_ok:
            assert response.status_code == 201
        else:
            assert response.status_code == 400
            assert "https://" in response.get_json()["errors"]["url"][0]
            assert client.get("/v1/webhooks", headers=tenant.headers).get_json()["webhooks"] == []
        secure = client.post(
            "/v1/webhooks",
            json={"url": "https://hooks.example.com/polysms", "events": ["message.received"]},
            headers=tenant.headers,
        )
        assert secure.status_code == 201


# -- delivering -----------------------------------------------------------------------------------
def test_each_event_is_posted_once_signed_per_standard_webhooks(sms, receiver):
    created = subscribe(sms, receiver.url, ["message.received", "conversation.opened"])
    with freeze_time(START):
        sms.inbound_ok(USER, "hello")
        assert sorted(receiver.types()) == ["conversation.opened", "message.received"]
        for request in receiver.requests:
            payload = verified(request, created["secret"])
            assert set(payload) == {"type", "timestamp", "data"}
            assert payload["timestamp"] == START.isoformat()
            assert request["headers"]["Content-Type"] == "application/json"
            assert request["headers"]["webhook-timestamp"] == str(int(START.timestamp()))
            assert request["path"] == "/hook"
        received = next(e for e in receiver.events() if e["type"] == "message.received")
        data = received["data"]
        assert data["project_id"] == sms.tenant.project_id
        assert data["message"]["body"] == "hello"
        assert data["message"]["direction"] == "inbound"
        assert data["conversation"]["user_number"] == USER
        # The message as the conversation API shows it (at the time of the event).
        (shown,) = sms.conversation(data["conversation"]["id"])["messages"]
        for name in ("id", "kind", "body", "created_at", "media", "twilio_sid"):
            assert data["message"][name] == shown[name]
        ids = [r["headers"]["webhook-id"] for r in receiver.requests]
        assert len(set(ids)) == 2  # one webhook-id per event

        # A tampered body fails the check the receiver makes.
        tampered = dict(receiver.requests[0], body=receiver.requests[0]["body"] + b" ")
        with pytest.raises(Exception, match="signature"):
            verified(tampered, created["secret"])

        # A second message in the same conversation: one more event, none repeated.
        sms.inbound_ok(USER, "again")
    assert receiver.types().count("message.received") == 2
    assert receiver.types().count("conversation.opened") == 1
    log = deliveries(sms, created["id"])
    assert len(log) == 3
    assert all((d["attempt"], d["status_code"], d["error"]) == (1, 200, None) for d in log)
    assert [d["webhook_id"] for d in reversed(log)] == [
        r["headers"]["webhook-id"] for r in receiver.requests
    ]
    assert set(log[0]) == {
        "id", "event_type", "webhook_id", "attempt", "status_code", "error", "created_at"
    }  # fmt: skip


def test_only_the_subscribed_event_types_are_sent(sms, receiver):
    created = subscribe(sms, receiver.url, ["opt_out.created"])
    sms.inbound_ok(USER, "hello")
    conversation_id = sms.send_ok("+14155552675")["conversation_id"]
    assert receiver.requests == []
    sms.inbound_ok(USER, "STOP")
    sms.inbound_ok(USER, "START")
    (request,) = receiver.requests
    payload = verified(request, created["secret"])
    assert payload["type"] == "opt_out.created"
    assert payload["data"] == {
        "project_id": sms.tenant.project_id,
        "user_number": USER,
        "sender_address": AGENT,
        "keyword": "STOP",
        "source": "keyword",
    }
    assert conversation_id


def test_every_event_type_is_delivered(sms, receiver):
    created = subscribe(sms, receiver.url, ALL_EVENTS)
    conversation_id = sms.send_ok(USER)["conversation_id"]  # opened; the greeting sent
    sms.inbound_ok(USER, "hi")  # received
    sid = sms.outbox[0]["sid"]
    assert sms.status_callback(sid, "delivered").status_code == 200  # status
    headers = sms.tenant.headers
    assert (
        sms.client.post(f"/v1/conversations/{conversation_id}/handoff", headers=headers).status_code
        == 200
    )
    assert (
        sms.client.post(f"/v1/conversations/{conversation_id}/end", headers=headers).status_code
        == 200
    )
    sms.inbound_ok(USER, "STOP")
    sms.inbound_ok(USER, "START")
    types = receiver.types()
    assert set(types) == set(ALL_EVENTS)
    statuses = [
        e["data"]["message"]["status"] for e in receiver.events() if e["type"] == "message.status"
    ]
    assert "sent" in statuses and "delivered" in statuses
    closed = next(e for e in receiver.events() if e["type"] == "conversation.closed")
    assert closed["data"]["conversation"]["end_reason"] == "api"
    for request in receiver.requests:
        verified(request, created["secret"])


def test_a_failing_receiver_is_retried_with_the_same_id_until_24_hours(sms, receiver):
    receiver.statuses = [500]
    created = subscribe(sms, receiver.url, ["message.received"])
    with freeze_time(START) as clock:
        sms.inbound_ok(USER, "hello")
        assert len(receiver.requests) == 1
        times = [START]
        while (due := next_retry_at(sms)) is not None:
            clock.move_to(due)
            sms.run_due_timers()
            times.append(due)
            assert len(receiver.requests) == len(times)
            verified(receiver.requests[-1], created["secret"])  # signed at the attempt's time
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {
        receiver.requests[0]["headers"]["webhook-id"]
    }
    waits = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert waits[:5] == [5, 10, 20, 40, 80]
    assert all(later >= earlier for earlier, later in zip(waits, waits[1:], strict=False))
    assert max(waits) == 2 * 3600
    assert times[-1] <= START + timedelta(hours=24)
    assert times[-1] + timedelta(hours=2) > START + timedelta(hours=24)  # no attempt skipped
    log = deliveries(sms, created["id"])
    assert [d["attempt"] for d in log] == list(range(len(times), 0, -1))
    assert all((d["status_code"], d["error"]) == (500, "answered 500") for d in log)
    assert {d["webhook_id"] for d in log} == {receiver.requests[0]["headers"]["webhook-id"]}


def test_a_retry_that_succeeds_ends_the_retries(sms, receiver):
    receiver.statuses = [500, 503, 204]
    created = subscribe(sms, receiver.url, ["message.received"])
    with freeze_time(START) as clock:
        sms.inbound_ok(USER, "hello")
        while (due := next_retry_at(sms)) is not None:
            clock.move_to(due)
            sms.run_due_timers()
    assert len(receiver.requests) == 3
    assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 1
    log = deliveries(sms, created["id"])
    assert [(d["attempt"], d["status_code"]) for d in log] == [(3, 204), (2, 503), (1, 500)]
    assert log[0]["error"] is None


def test_a_receiver_that_does_not_answer_is_logged_without_a_status(sms, receiver):
    receiver.stop()  # nothing listens on its port any more
    created = subscribe(sms, receiver.url, ["message.received"])
    response = sms.inbound(USER, "hello")
    assert response.status_code == 200  # Twilio's webhook answers as usual
    (attempt,) = deliveries(sms, created["id"])
    assert attempt["status_code"] is None
    assert attempt["error"] == "could not connect"
    assert next_retry_at(sms) is not None  # and it will be tried again


def test_delete_stops_the_deliveries(sms, receiver):
    receiver.statuses = [500]
    created = subscribe(sms, receiver.url, ["message.received"])
    with freeze_time(START) as clock:
        sms.inbound_ok(USER, "hello")
        assert len(receiver.requests) == 1
        due = next_retry_at(sms)
        assert due is not None
        response = sms.client.delete(f"/v1/webhooks/{created['id']}", headers=sms.tenant.headers)
        assert response.status_code == 204
        clock.move_to(due + timedelta(hours=25))
        sms.run_due_timers()
        sms.inbound_ok(USER, "again")
    assert len(receiver.requests) == 1
    assert next_retry_at(sms) is None
    gone = sms.client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=sms.tenant.headers)
    assert gone.status_code == 404
    again = sms.client.delete(f"/v1/webhooks/{created['id']}", headers=sms.tenant.headers)
    assert again.status_code == 404


def test_the_delivery_log_is_newest_first_and_limited(sms, receiver):
    created = subscribe(sms, receiver.url, ["message.received"])
    for n in range(3):
        sms.inbound_ok(USER, f"message {n}")
    response = sms.client.get(
        f"/v1/webhooks/{created['id']}/deliveries?limit=2", headers=sms.tenant.headers
    )
    log = response.get_json()["deliveries"]
    assert len(log) == 2
    ids = [r["headers"]["webhook-id"] for r in receiver.requests]
    assert [d["webhook_id"] for d in log] == [ids[2], ids[1]]
    for bad in ("0", "501", "x"):
        response = sms.client.get(
            f"/v1/webhooks/{created['id']}/deliveries?limit={bad}", headers=sms.tenant.headers
        )
        assert response.status_code == 400


# -- what a project without subscriptions pays -----------------------------------------------------
class Statements:
    """The SQL a Peewee store runs inside the block (its query hook)."""

    def __init__(self, sms) -> None:
        self.database = get_state(sms.app).store.database
        self.sql: list[str] = []

    def __enter__(self) -> Statements:
        self.database.query_hooks = [lambda event: self.sql.append(event.sql)]
        return self

    def __exit__(self, *exc) -> None:
        self.database.query_hooks = []


def test_a_project_without_subscriptions_runs_no_statement_more(make_sms, tmp_path, receiver):
    """The inbound webhook, a status callback and the outbound API run the same statements as
    with no event forwarding at all: whether the project has subscriptions is read from the
    project record those requests read anyway. Another project's subscription changes nothing."""
    sms = make_sms(
        agent=lambda conv, text: None,
        numbers=(AGENT,),
        POLYSMS_STORAGE_URL=f"sqlite:///{tmp_path / 'polysms.db'}",
    )
    other = sms.provision(numbers=("+14155552679",))
    subscribe(sms, receiver.url, ALL_EVENTS, tenant=other)
    state = get_state(sms.app)
    forwarder = state.event_forwarder

    def traffic(n: int) -> list[str]:
        with Statements(sms) as statements:
            sms.inbound_ok(f"+1415555{n:04d}", "hello")  # a new conversation
            sms.inbound_ok(f"+1415555{n:04d}", "again")  # an open one
            sms.send_ok(f"+1415556{n:04d}")
            assert sms.status_callback(sms.outbox[-1]["sid"], "delivered").status_code == 200
        # Savepoint names are random: compared as statements, not names.
        return [re.sub(r'"s[0-9a-f]{32}"', '"savepoint"', sql) for sql in statements.sql]

    with_forwarding = traffic(1)
    state.event_forwarder = None
    try:
        without = traffic(2)
    finally:
        state.event_forwarder = forwarder
    assert len(with_forwarding) == len(without)
    assert with_forwarding == without
    assert receiver.requests == []


# -- key rotation ---------------------------------------------------------------------------------
# Apps with other keys on one database: the database backends (a memory store is one app's).
@pytest.fixture(params=BACKENDS[1:])
def database_url(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


def test_rotate_keys_re_encrypts_the_secrets(make_sms, database_url, receiver):
    """After ``flask polysms rotate-keys`` under a new first key, the old key can go: deliveries
    are still signed with the secret shown at creation."""
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sms = make_sms(
        numbers=(AGENT,), POLYSMS_STORAGE_URL=database_url, POLYSMS_ENCRYPTION_KEYS=[old_key]
    )
    created = subscribe(sms, receiver.url, ["message.received"])
    get_state(sms.app).store.disconnect()

    rotating = make_sms(
        numbers=("+14155552679",),
        POLYSMS_STORAGE_URL=database_url,
        POLYSMS_ENCRYPTION_KEYS=[new_key, old_key],
    )
    first = rotating.app.test_cli_runner().invoke(args=["polysms", "rotate-keys"])
    assert first.exit_code == 0, first.output
    assert "1 webhook secret(s) re-encrypted with the first key, 0 already under it" in (
        first.output
    )
    again = rotating.app.test_cli_runner().invoke(args=["polysms", "rotate-keys"])
    assert "0 webhook secret(s) re-encrypted with the first key, 1 already under it" in (
        again.output
    )
    get_state(rotating.app).store.disconnect()

    after = make_sms(
        numbers=("+14155552678",),
        POLYSMS_STORAGE_URL=database_url,
        POLYSMS_ENCRYPTION_KEYS=[new_key],
    )
    after.tenant = sms.tenant
    after.inbound_ok(USER, "hello")
    (request,) = receiver.requests
    assert verified(request, created["secret"])["type"] == "message.received"
    get_state(after.app).store.disconnect()


def test_a_secret_no_key_opens_is_logged_as_an_error_and_retried(make_sms, database_url, receiver):
    sms = make_sms(
        numbers=(AGENT,),
        POLYSMS_STORAGE_URL=database_url,
        POLYSMS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
    )
    created = subscribe(sms, receiver.url, ["message.received"])
    get_state(sms.app).store.disconnect()
    other = make_sms(
        numbers=("+14155552679",),
        POLYSMS_STORAGE_URL=database_url,
        POLYSMS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
        # The Auth Token is under the lost key too: the webhook is taken unsigned here.
        POLYSMS_VALIDATE_SIGNATURES=False,
    )
    other.tenant = sms.tenant
    other.inbound_ok(USER, "hello")  # Twilio's webhook is answered as usual
    assert receiver.requests == []  # nothing unsigned ever leaves
    (attempt,) = deliveries(other, created["id"])
    assert attempt["status_code"] is None
    assert "cannot be decrypted" in attempt["error"]
    assert next_retry_at(other) is not None
    result = other.app.test_cli_runner().invoke(args=["polysms", "rotate-keys"])
    assert result.exit_code == 1
    assert created["id"] in result.output
    get_state(other.app).store.disconnect()


# -- on RQ: the request only enqueues -------------------------------------------------------------
@pytest.mark.services
def test_on_rq_the_request_enqueues_and_a_deliveries_worker_delivers_and_schedules_the_retry(
    redis_conn, redis_url, receiver
):
    from rq.registry import ScheduledJobRegistry

    from flask_polysms.ports.schedulers import DELIVERIES_LANE

    polysms = PolySMS()
    app = Flask("webhooks_rq")
    app.testing = True
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="rq",
        POLYSMS_REDIS_URL=redis_url,
        POLYSMS_QUEUE_NAME="polysms-test",
    )
    polysms.init_app(app)
    tenant = provision(app, numbers=(AGENT,))
    client = app.test_client()
    created = client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "events": ["message.received"]},
        headers=tenant.headers,
    ).get_json()
    receiver.statuses = [500]
    params = {"MessageSid": "SM" + "1" * 32, "From": USER, "To": AGENT, "Body": "hello"}
    signature = sign_twilio_request(
        "http://localhost/v1/twilio/sms", params, tenant.twilio_auth_token
    )
    response = client.post("/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200
    assert receiver.requests == []  # the request only enqueued the event's job

    scheduler = get_state(app).scheduler
    deliveries = scheduler.queues[DELIVERIES_LANE]
    runner = app.test_cli_runner()
    # A worker of the main lane runs the event's job; the delivery waits in a lane of its own.
    result = runner.invoke(args=["polysms", "worker", "--burst", "--lane", "main"])
    assert result.exit_code == 0, result.output
    assert receiver.requests == []
    assert (scheduler.queue.count, deliveries.count) == (0, 1)
    result = runner.invoke(args=["polysms", "worker", "--burst", "--lane", "deliveries"])
    assert result.exit_code == 0, result.output
    (request,) = receiver.requests
    assert verified(request, created["secret"])["data"]["message"]["body"] == "hello"
    with app.app_context():
        (attempt,) = get_state(app).store.list_webhook_deliveries(tenant.project_id, created["id"])
    assert (attempt.attempt, attempt.status_code) == (1, 500)
    # The retry waits in RQ's scheduled jobs of the deliveries lane, under the id of attempt 2.
    scheduled = ScheduledJobRegistry(queue=deliveries).get_job_ids()
    webhook_id = request["headers"]["webhook-id"]
    assert f"webhook-{webhook_id}-{created['id']}-2" in scheduled


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_on_the_thread_scheduler_a_receiver_that_hangs_holds_up_no_send(receiver):
    """Deliveries run in a lane (a thread) of their own: while one waits for a receiver that
    does not answer, the app's own jobs (here a greeting's send) go on."""
    from flask_polysms.clock import utcnow
    from flask_polysms.records import WebhookSubscription, new_id
    from flask_polysms.services.webhook_subscriptions import new_secret

    polysms = PolySMS()
    app = Flask("webhooks_thread")
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_PUBLIC_URL="http://localhost",
        POLYSMS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="thread",
    )
    polysms.init_app(app)
    tenant = provision(app, numbers=(AGENT,))
    state = get_state(app)
    # Through the Store: outside debug and testing the API takes only https:// receivers.
    state.store.add_webhook_subscription(
        WebhookSubscription(
            id=new_id("whk_"),
            project_id=tenant.project_id,
            url=receiver.url,
            events=["conversation.opened"],
            secret_encrypted=state.cipher.encrypt(new_secret()),
            created_at=utcnow(),
        )
    )
    receiver.hold = threading.Event()
    client = app.test_client()

    def greet(user: str, text: str) -> None:
        response = client.post(
            "/v1/outbound-sms", json={"user_number": user, "message": text}, headers=tenant.headers
        )
        assert response.status_code == 202, response.get_data(as_text=True)

    def sent() -> list[str]:
        with app.app_context():
            return [m["body"] for m in polysms.outbox]

    try:
        greet(USER, "first")
        _wait_for(lambda: len(receiver.requests) == 1, timeout=5)  # its delivery now hangs
        greet("+14155552675", "second")
        _wait_for(lambda: "second" in sent(), timeout=4)
        assert not receiver.hold.is_set() and len(receiver.requests) == 1  # still hanging
        receiver.hold.set()
        _wait_for(lambda: len(receiver.requests) == 2, timeout=5)  # then the next delivery goes
    finally:
        receiver.hold.set()
        state.scheduler.stop()


def test_timers_closing_many_conversations_read_the_project_once(make_sms, tmp_path):
    """Outside a request that read the project, whether it has subscriptions is read once per
    transaction, not once per event: closing several conversations at once costs one read."""
    sms = make_sms(
        agent=lambda conv, text: None,
        numbers=(AGENT,),
        POLYSMS_STORAGE_URL=f"sqlite:///{tmp_path / 'polysms.db'}",
    )
    state = get_state(sms.app)
    forwarder = state.event_forwarder

    def close_five(start: datetime) -> list[str]:
        with freeze_time(start) as clock:
            for n in range(5):
                sms.send_ok(f"+1415557{start.hour:02d}{n:02d}")
            clock.tick(timedelta(hours=25))
            with Statements(sms) as statements:
                sms.run_due_timers()
        return [re.sub(r'"s[0-9a-f]{32}"', '"savepoint"', sql) for sql in statements.sql]

    with_forwarding = close_five(START)
    state.event_forwarder = None
    try:
        without = close_five(START + timedelta(days=2))
    finally:
        state.event_forwarder = forwarder
    closed = [c for c in sms.conversations() if c["state"] == "closed"]
    assert len(closed) == 10
    project_reads = [sql for sql in with_forwarding if sql not in without]
    assert len(with_forwarding) == len(without) + 1
    assert len(project_reads) == 1 and '"polysms_project"' in project_reads[0]
