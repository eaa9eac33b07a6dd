"""The embedded `thread` scheduler: jobs and timers run in a background thread of the process."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.testing import provision, sign_twilio_request

AGENT = "+14155552671"
USER = "+14155552672"


def wait_for(predicate, timeout: float = 10.0):
    """Poll until ``predicate()`` is truthy (background work), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


#: A fixed Fernet key: the app runs outside testing, where a real encryption key is required.
ENCRYPTION_KEY = "dMNOlYNhCuKwH-ZYn7106kPfZ9WPjhBc5U2KtgI0sXw="


@pytest.fixture
def setup():
    polysms = PolySMS()

    @polysms.agent
    def answer(conv, text):
        return f"echo: {text}"

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_PUBLIC_URL="http://localhost",
        POLYSMS_ENCRYPTION_KEYS=[ENCRYPTION_KEY],
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="thread",
        POLYSMS_IDLE_TIMEOUT=0.6,
        POLYSMS_GRACE_PERIOD=0.4,
        POLYSMS_SWEEP_INTERVAL=0.2,
    )
    polysms.init_app(app)
    yield app, polysms, provision(app, numbers=(AGENT,))
    get_state(app).scheduler.stop()


def outbox(app, polysms):
    with app.app_context():
        return [m["body"] for m in polysms.outbox]


def session(app, conversation_id):
    with app.app_context():
        return get_state(app).store.get_session(conversation_id)


def test_jobs_and_timers_run_in_the_background(setup):
    app, polysms, tenant = setup
    client = app.test_client()
    response = client.post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "Hi!"}, headers=tenant.headers
    )
    assert response.status_code == 202
    conv = response.json["conversation_id"]
    wait_for(lambda: outbox(app, polysms) == ["Hi!"])
    params = {"MessageSid": "SM" + "d" * 32, "From": USER, "To": AGENT, "Body": "hello"}
    signature = sign_twilio_request(
        "http://localhost/v1/twilio/sms", params, tenant.twilio_auth_token
    )
    client.post("/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})
    wait_for(lambda: "echo: hello" in outbox(app, polysms))
    wait_for(lambda: session(app, conv).state == "warned")
    wait_for(lambda: session(app, conv).state == "closed")
    assert session(app, conv).end_reason == "inactivity"
    wait_for(lambda: outbox(app, polysms)[-1] == "I am going to end conversation now")


def test_stop_ends_the_background_thread(setup):
    app, _, _ = setup
    scheduler = get_state(app).scheduler
    scheduler.start()
    scheduler.enqueue("sweep", lane="deliveries")  # a second lane starts its own thread
    assert [t.name for t in scheduler.threads()] == [
        "polysms-scheduler",
        "polysms-scheduler-deliveries",
    ]
    scheduler.stop()
    assert scheduler.threads() == []


def _polysms_threads() -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name.startswith("polysms-scheduler") and t.is_alive()
    ]


def _thread_app(testing: bool) -> Flask:
    app = Flask("thread_owner")
    app.testing = testing
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_PUBLIC_URL="http://localhost",
        POLYSMS_ENCRYPTION_KEYS=[ENCRYPTION_KEY],
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="thread",
    )
    PolySMS(app)
    return app


def test_no_scheduler_thread_survives_its_app():
    before = set(_polysms_threads())
    app = _thread_app(testing=False)
    assert app.test_client().get("/v1/senders").status_code == 401  # any request starts it
    get_state(app).scheduler.enqueue("sweep", lane="deliveries")  # and a lane's first job its own
    started = set(_polysms_threads()) - before
    assert len(started) == 2
    del app
    gc.collect()
    wait_for(lambda: not (set(_polysms_threads()) & started))


def test_a_testing_app_or_a_job_outside_a_request_starts_no_thread():
    before = set(_polysms_threads())
    app = _thread_app(testing=True)
    tenant = provision(app, numbers=(AGENT,))
    response = app.test_client().post(
        "/v1/outbound-sms", json={"user_number": USER, "message": "Hi!"}, headers=tenant.headers
    )
    assert response.status_code == 202
    other = _thread_app(testing=False)
    get_state(other).scheduler.enqueue("sweep")  # as a CLI command or a host's own code would
    assert set(_polysms_threads()) == before
