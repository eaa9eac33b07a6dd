"""Webhook deliveries on the background schedulers: on RQ the request only enqueues and a worker
of the deliveries lane delivers and schedules the retry; on the thread scheduler a receiver that
hangs holds up none of the app's own jobs."""

from __future__ import annotations

import threading
import time

import pytest
from cryptography.fernet import Fernet
from dashboard_webhooks_support import (
    AGENT,
    USER,
    receiver_fixture,  # noqa: F401
    verified,
)
from flask import Flask

from flask_polysms import PolySMS
from flask_polysms.services.state import get_state
from flask_polysms.testing import provision, sign_twilio_request


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
