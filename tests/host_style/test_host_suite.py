"""What a host app's suite does with pytest-flask and one app context for everything."""

from __future__ import annotations

from conftest import polysms

from flask_polysms.testing import provision

USER = "+14155552672"


def test_each_request_is_authenticated_on_its_own_headers(client, polysms_tenant):
    other = provision(client.application, numbers=("+14155550101",))
    sent = client.post(
        "/v1/outbound-sms",
        json={"user_number": USER, "message": "Hello"},
        headers=polysms_tenant.headers,
    )
    assert sent.status_code == 202
    conversation = f"/v1/conversations/{sent.get_json()['conversation_id']}"

    bad_key = {**polysms_tenant.headers, "X-PolyAi-Auth-Token": "pk_" + "x" * 43}
    assert client.post("/v1/outbound-sms", json={}, headers=bad_key).status_code == 401
    assert client.post("/v1/outbound-sms", json={"user_number": USER}).status_code == 401
    assert client.get(conversation).status_code == 401
    assert client.get(conversation, headers=other.headers).status_code == 404
    assert client.get(conversation, headers=polysms_tenant.headers).status_code == 200


def test_the_agent_answers_a_signed_webhook_and_the_outbox_has_it(sms_phone):
    before = len(polysms.outbox)
    response = sms_phone.send("hi there")
    assert response.status_code == 200
    assert [m["body"] for m in polysms.outbox[before:]] == ["echo: hi there"]


def test_timers_run_from_a_plain_test_function():
    assert polysms.run_due_timers() == 0


def test_reset_between_tests_starts_from_nothing(client, polysms_tenant):
    from datetime import datetime, timedelta, timezone

    from freezegun import freeze_time

    from flask_polysms.testing import reset

    with freeze_time(datetime.now(timezone.utc)) as clock:
        sent = client.post(
            "/v1/outbound-sms",
            json={"user_number": USER, "message": "Hello"},
            headers=polysms_tenant.headers,
        )
        assert sent.status_code == 202 and polysms.outbox
        reset(client.application)
        assert polysms.outbox == []
        # The tenant is gone with its tables, and so is the session's waiting timer.
        assert client.get("/v1/senders", headers=polysms_tenant.headers).status_code == 401
        clock.tick(timedelta(hours=25))
        assert polysms.run_due_timers() == 0
