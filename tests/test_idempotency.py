"""``Idempotency-Key`` on ``POST /v1/outbound-sms``: a repeat answers the first response and does
nothing again, on every backend; concurrent repeats make one conversation."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import store_backends
from freezegun import freeze_time
from store_backends import BACKENDS

from flask_polysms.clock import utcnow
from flask_polysms.services import idempotency
from flask_polysms.services.tenancy import AUTH_HEADER, CONNECTOR_HEADER

AGENT = "+14155552671"
USER = "+14155552674"
OTHER_USER = "+14155552675"
THREADS = 8


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def make(request, make_sms, tmp_path, backend):
    def build(**config):
        url = store_backends.storage_url(request, backend, tmp_path)
        return make_sms(numbers=(AGENT,), POLYSMS_STORAGE_URL=url, **config)

    return build


@pytest.fixture
def sms(make):
    return make()


def post(sms, key, body=None, client=None):
    headers = dict(sms.tenant.headers)
    if key is not None:
        headers[idempotency.KEY_HEADER] = key
    return (client or sms.client).post(
        "/v1/outbound-sms",
        json=body if body is not None else {"user_number": USER, "message": "Hello"},
        headers=headers,
    )


def conversation_count(sms) -> int:
    return len(sms.conversations())


def test_a_repeat_answers_the_first_response_and_sends_nothing(sms):
    first = post(sms, "order-1")
    assert first.status_code == 202, first.get_json()
    again = post(sms, "order-1")

    assert again.status_code == 202
    assert again.get_data() == first.get_data()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert conversation_count(sms) == 1
    assert len(sms.outbox) == 1  # sent once


def test_json_spacing_and_key_order_are_the_same_body(sms):
    first = sms.client.post(
        "/v1/outbound-sms",
        data=f'{{"user_number": "{USER}", "message": "Hello"}}',
        content_type="application/json",
        headers={**sms.tenant.headers, "Idempotency-Key": "k"},
    )
    again = sms.client.post(
        "/v1/outbound-sms",
        data=f'{{"message":"Hello","user_number":"{USER}"}}',
        content_type="application/json",
        headers={**sms.tenant.headers, "Idempotency-Key": "k"},
    )
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.get_data() == first.get_data()
    assert conversation_count(sms) == 1


def test_the_same_key_with_another_body_is_422_and_does_nothing(sms):
    assert post(sms, "order-1").status_code == 202
    other = post(sms, "order-1", {"user_number": OTHER_USER, "message": "Hello"})

    assert other.status_code == 422, other.get_json()
    assert set(other.get_json()) <= {"detail", "errors"}
    assert conversation_count(sms) == 1
    assert len(sms.outbox) == 1


def test_keys_are_per_project(sms):
    other = sms.provision(numbers=("+14155552672",))
    assert post(sms, "shared-key").status_code == 202
    response = sms.client.post(
        "/v1/outbound-sms",
        json={"user_number": USER, "message": "Hello"},
        headers={**other.headers, "Idempotency-Key": "shared-key"},
    )
    assert response.status_code == 202
    assert response.get_json()["agent_number"] == "+14155552672"
    assert "Idempotent-Replayed" not in response.headers
    assert len(sms.outbox) == 2


def test_without_a_key_each_request_runs(sms):
    assert post(sms, None).status_code == 202
    assert post(sms, None).status_code == 202
    assert conversation_count(sms) == 2


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_an_empty_or_too_long_key_is_400_and_does_nothing(sms, key):
    response = post(sms, key)
    assert response.status_code == 400
    body = response.get_json()
    assert set(body) == {"detail", "errors"}
    assert "Idempotency-Key" in body["errors"]
    assert conversation_count(sms) == 0


def test_a_key_of_255_characters_is_accepted(sms):
    assert post(sms, "k" * 255).status_code == 202
    assert post(sms, "k" * 255).headers["Idempotent-Replayed"] == "true"
    assert conversation_count(sms) == 1


def test_a_failed_first_request_releases_its_key(sms):
    # Invalid body: 400, nothing written; the client fixes the body and tries the same key.
    bad = post(sms, "order-1", {"user_number": USER})
    assert bad.status_code == 400
    assert post(sms, "order-1").status_code == 202
    # An agent_number not provisioned: 400 from the service; the key is free again too.
    assert (
        post(
            sms, "order-2", {"user_number": USER, "message": "x", "agent_number": "+14155550000"}
        ).status_code
        == 400
    )
    fixed = post(sms, "order-2", {"user_number": OTHER_USER, "message": "x"})
    assert fixed.status_code == 202 and "Idempotent-Replayed" not in fixed.headers
    assert conversation_count(sms) == 2


def test_a_rate_limited_first_request_releases_its_key(make):
    sms = make(POLYSMS_RATE_LIMIT="1 per hour")
    assert post(sms, "first").status_code == 202
    limited = post(sms, "second")
    assert limited.status_code == 429
    assert "Retry-After" in limited.headers
    # Still limited: a 429 again, not a replay of the first 429.
    again = post(sms, "second")
    assert again.status_code == 429 and "Idempotent-Replayed" not in again.headers
    assert conversation_count(sms) == 1


def test_a_repeat_while_the_first_runs_is_409(make, backend):
    sms = make()
    entered, release = threading.Event(), threading.Event()

    original = sms.state.store.senders_for_outbound

    def slow_senders(*args, **kwargs):
        entered.set()
        assert release.wait(10)
        return original(*args, **kwargs)

    sms.state.store.senders_for_outbound = slow_senders
    results = {}

    def run(name):
        with sms.app.app_context():
            results[name] = post(sms, "slow", client=sms.app.test_client())

    first = threading.Thread(target=run, args=("first",))
    first.start()
    try:
        assert entered.wait(10)
        sms.state.store.senders_for_outbound = original
        if backend == "sqlite":
            # One writer at a time: the repeat's claim waits for the first's commit, then
            # answers its response.
            repeat = threading.Thread(target=run, args=("repeat",))
            repeat.start()
            release.set()
            repeat.join(30)
            assert results["repeat"].headers["Idempotent-Replayed"] == "true"
        else:
            busy = post(sms, "slow", client=sms.app.test_client())
            assert busy.status_code == 409, busy.get_json()
            assert set(busy.get_json()) <= {"detail", "errors"}
    finally:
        release.set()
        first.join(30)
    assert results["first"].status_code == 202
    assert post(sms, "slow").headers["Idempotent-Replayed"] == "true"
    assert conversation_count(sms) == 1


def test_concurrent_requests_with_one_key_make_one_conversation(make):
    sms = make(POLYSMS_READ_RATE_LIMIT="10000 per second")
    barrier = threading.Barrier(THREADS)
    responses = []
    lock = threading.Lock()

    def attempt():
        client = sms.app.test_client()
        barrier.wait()
        response = post(sms, "race", client=client)
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=attempt) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    codes = sorted(r.status_code for r in responses)
    assert len(codes) == THREADS
    assert set(codes) <= {202, 409}, [r.get_json() for r in responses]
    firsts = [
        r for r in responses if r.status_code == 202 and "Idempotent-Replayed" not in r.headers
    ]
    assert len(firsts) == 1
    replays = [r for r in responses if r.status_code == 202 and r is not firsts[0]]
    assert all(r.get_data() == firsts[0].get_data() for r in replays)
    assert conversation_count(sms) == 1
    assert len(sms.outbox) == 1


def test_a_key_expires_after_24_hours(sms):
    with freeze_time(utcnow()) as frozen:
        first = post(sms, "daily")
        frozen.tick(timedelta(hours=23, minutes=59))
        assert post(sms, "daily").get_data() == first.get_data()
        frozen.tick(timedelta(minutes=2))
        later = post(sms, "daily")
    assert later.status_code == 202 and "Idempotent-Replayed" not in later.headers
    assert later.get_json()["conversation_id"] != first.get_json()["conversation_id"]


def test_a_try_that_died_holding_its_key_is_taken_over(sms):
    # A process killed mid-request leaves its claim without a response: after a while the key
    # is free again, and the dead try's work (never committed) is not answered.
    with sms.app.app_context():
        idempotency.claim(
            sms.state, sms.tenant.project_id, "polysms_outbound.send_outbound", "dead", "x"
        )
    with freeze_time(utcnow()) as frozen:
        assert post(sms, "dead", {"user_number": USER, "message": "x"}).status_code in (409, 422)
        frozen.tick(idempotency.ABANDONED_AFTER + timedelta(seconds=1))
        response = post(sms, "dead")
    assert response.status_code == 202 and "Idempotent-Replayed" not in response.headers


def test_the_openapi_document_has_the_header_and_its_answers(sms):
    spec = sms.client.get("/v1/openapi.json").get_json()
    operation = spec["paths"]["/v1/outbound-sms"]["post"]
    names = {p["name"]: p for p in operation["parameters"]}
    assert names["Idempotency-Key"]["in"] == "header"
    assert names["Idempotency-Key"]["schema"]["maxLength"] == 255
    assert {AUTH_HEADER, CONNECTOR_HEADER} <= set(names)
    assert {"409", "422", "202", "400", "429"} <= set(operation["responses"])
