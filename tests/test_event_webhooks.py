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

See also test_event_webhook_keys.py (key rotation), test_event_webhook_overhead.py (the
statements event forwarding costs) and test_event_webhook_schedulers.py (RQ and thread lanes).
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
import store_backends
from dashboard_webhooks_support import (
    AGENT,
    ALL_EVENTS,
    START,
    USER,
    deliveries,
    listed,
    next_retry_at,
    receiver_fixture,  # noqa: F401
    subscribe,
    verified,
)
from flask import Flask
from freezegun import freeze_time
from store_backends import BACKENDS

from flask_polysms import PolySMS
from flask_polysms.services.state import get_state
from flask_polysms.testing import provision


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
