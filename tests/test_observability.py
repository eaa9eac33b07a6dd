"""What operators see: one log line per send attempt, ``attempts`` and
``last_error`` on messages, and the Prometheus endpoint behind ``POLYSMS_METRICS_ENDPOINT``.

Twilio is the local emulator throughout; the figures are checked against what the test made
happen, on every backend where a Store read is involved.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from flask import Flask
from freezegun import freeze_time
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flask_polysms import PolySMS, backends
from flask_polysms.clock import utcnow
from flask_polysms.records import CLOSED, OUTBOUND, QUEUED, SENT, Message, Session, new_id
from flask_polysms.services.state import get_state

AGENT = "+14155552671"
OTHER_AGENT = "+14155552672"
USER = "+14155552674"
OTHER_USER = "+14155552675"
OPTED_OUT_USER = "+14155552676"
START = "2026-03-02 09:00:00"
BASE_DELAY = timedelta(seconds=2)  # POLYSMS_RETRY_BASE_DELAY's default
SECRET_BODY = "Your lab results are ready, Alice"
LINE = re.compile(
    r"send message_id=(?P<id>msg_\w+) project_id=(?P<project>\S+) attempt=(?P<attempt>\d+)/5 "
    r"outcome=(?P<outcome>\w+) error_code=(?P<code>\S+) duration_ms=(?P<ms>[\d.]+)(?P<rest>.*)"
)
# A number written as E.164 (floats such as 1.79e+09 have at most 3 digits after a +).
E164_LIKE = re.compile(r"\+\d{8,}")


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.services),
        pytest.param("mysql", marks=pytest.mark.services),
    ]
)
def storage(request, tmp_path) -> Iterator[dict]:
    """Config keys of a store of each backend, with its schema made (and dropped after)."""
    if request.param == "memory":
        yield {"POLYSMS_STORAGE_URL": "memory://"}
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'polysms.db'}"
    else:
        url = request.getfixturevalue(
            "postgres_url" if request.param == "postgresql" else "mysql_url"
        )
    prefix = f"obs_{uuid.uuid4().hex[:8]}_"
    store = backends.create_store(url, table_prefix=prefix)
    store.create_schema()
    try:
        yield {"POLYSMS_STORAGE_URL": url, "POLYSMS_TABLE_PREFIX": prefix}
    finally:
        store.drop_schema()
        store.disconnect()


@pytest.fixture
def emulated(make_emulated_sms):
    """(harness, emulator) on the memory store."""
    return make_emulated_sms(
        numbers=(AGENT, OTHER_AGENT),
        POLYSMS_TWILIO_TIMEOUT=0.5,
        POLYSMS_PUBLIC_URL="http://localhost",
    )


@pytest.fixture
def attempts_log(caplog) -> pytest.LogCaptureFixture:
    """caplog, with ``flask_polysms.sending`` logging from INFO up."""
    caplog.set_level(logging.INFO, logger="flask_polysms.sending")
    return caplog


def attempt_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The attempt lines logged so far by this test."""
    return [
        r for r in caplog.records if r.name == "flask_polysms.sending" and hasattr(r, "outcome")
    ]


def greeting(sms, conversation_id: str) -> dict:
    return sms.conversation(conversation_id)["messages"][0]


def assert_nothing_identifies_users(text: str, *numbers: str) -> None:
    """No phone number (with or without its +) and nothing of the body in ``text``."""
    for number in numbers:
        assert number.lstrip("+") not in text
    assert SECRET_BODY not in text
    assert "Alice" not in text


def polysms_families_in_the_global_registry() -> list[str]:
    return [
        family.name
        for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
        if family.name.startswith("polysms")
    ]


def sample_values(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition text: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(sms, path: str = "/metrics") -> tuple[str, dict]:
    response = sms.client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    return text, sample_values(text)


# -- the log line of each attempt -----------------------------------------------------------------
def test_a_429_then_success_logs_a_retry_then_the_send(emulated, attempts_log):
    sms, emulator = emulated
    with freeze_time(START) as clock:
        emulator.fail_next(1, 20429)
        body = sms.send_ok(USER, SECRET_BODY, agent_number=AGENT)
        clock.tick(BASE_DELAY + timedelta(milliseconds=10))
        sms.run_due_timers()

    [created] = emulator.messages
    first, second = attempt_records(attempts_log)
    message = greeting(sms, body["conversation_id"])
    for record in (first, second):
        assert LINE.fullmatch(record.getMessage()), record.getMessage()
        # The same fields, as attributes, for JSON log handlers.
        assert record.message_id == message["id"]
        assert record.project_id == sms.tenant.project_id
        assert isinstance(record.duration_ms, float) and record.duration_ms >= 0
    assert (first.levelno, first.attempt, first.outcome, first.error_code) == (
        logging.WARNING,
        1,
        "retry",
        20429,
    )
    assert first.retry_in_s == BASE_DELAY.total_seconds()
    assert LINE.fullmatch(first.getMessage())["rest"] == " retry_in_s=2.0"
    assert (second.levelno, second.attempt, second.outcome, second.error_code) == (
        logging.INFO,
        2,
        "sent",
        None,
    )
    assert second.twilio_sid == created["sid"]
    text = second.getMessage()
    assert "attempt=2/5 outcome=sent error_code=- duration_ms=" in text
    assert text.endswith(f" twilio_sid={created['sid']}")
    for record in attempt_records(attempts_log):
        assert_nothing_identifies_users(record.getMessage(), USER, AGENT)
        assert_nothing_identifies_users(repr(vars(record)), USER, AGENT)


def test_a_timeout_logs_a_timeout_then_the_send(make_emulated_sms, attempts_log):
    # Real time (the duration is measured), with a short backoff.
    sms, emulator = make_emulated_sms(
        numbers=(AGENT,),
        POLYSMS_TWILIO_TIMEOUT=0.5,
        POLYSMS_RETRY_BASE_DELAY=0.05,
        POLYSMS_PUBLIC_URL="http://localhost",
    )
    emulator.hang_next(1, 30)  # longer than POLYSMS_TWILIO_TIMEOUT: the client gives up
    body = sms.send_ok(USER, SECRET_BODY, agent_number=AGENT)
    time.sleep(0.1)
    sms.run_due_timers()

    first, second = attempt_records(attempts_log)
    assert (first.levelno, first.attempt, first.outcome, first.error_code) == (
        logging.WARNING,
        1,
        "timeout",
        None,
    )
    assert "attempt=1/5 outcome=timeout error_code=- " in first.getMessage()
    # The client waited for its timeout, and the line says so.
    assert 450 <= first.duration_ms < 5000
    assert (second.attempt, second.outcome) == (2, "sent")
    message = greeting(sms, body["conversation_id"])
    assert message["status"] == "sent" and message["attempts"] == 2
    assert message["last_error"]["code"] is None
    assert "did not answer" in message["last_error"]["message"]
    for record in (first, second):
        assert_nothing_identifies_users(record.getMessage(), USER, AGENT)


def test_a_permanent_failure_logs_a_warning_with_twilios_code_not_its_text(emulated, attempts_log):
    sms, emulator = emulated
    emulator.fail_next(1, 21211)  # Twilio's text for 21211 quotes the number

    body = sms.send_ok(USER, SECRET_BODY, agent_number=AGENT)

    [record] = attempt_records(attempts_log)
    assert (record.levelno, record.attempt, record.outcome, record.error_code) == (
        logging.WARNING,
        1,
        "failed",
        21211,
    )
    assert record.reason == "twilio_error"
    assert LINE.fullmatch(record.getMessage())["rest"] == " reason=twilio_error"
    message = greeting(sms, body["conversation_id"])
    assert USER in message["last_error"]["message"]  # the tenant's own API shows Twilio's text
    assert_nothing_identifies_users(record.getMessage(), USER, AGENT)
    assert_nothing_identifies_users(repr(vars(record)), USER, AGENT)


def test_retries_running_out_and_a_suppressed_send_are_logged(make_emulated_sms, attempts_log):
    sms, emulator = make_emulated_sms(
        numbers=(AGENT,), POLYSMS_SEND_MAX_ATTEMPTS=2, POLYSMS_PUBLIC_URL="http://localhost"
    )
    with sms.app.app_context():
        sms.store.set_opt_out(sms.tenant.project_id, OPTED_OUT_USER, AGENT, True, "STOP", utcnow())
    with freeze_time(START) as clock:
        emulator.fail_next(2, 500)
        sms.send_ok(USER, SECRET_BODY, agent_number=AGENT)
        clock.tick(timedelta(seconds=10))
        sms.run_due_timers()
        sms.send_ok(OPTED_OUT_USER, SECRET_BODY, agent_number=AGENT)

    retry, failed, suppressed = attempt_records(attempts_log)
    assert (retry.attempt, retry.outcome, retry.error_code) == (1, "retry", 20500)
    assert (failed.levelno, failed.attempt, failed.outcome, failed.error_code) == (
        logging.WARNING,
        2,
        "failed",
        20500,
    )
    assert failed.reason == "retries_exhausted"
    assert "attempt=2/2 outcome=failed error_code=20500 " in failed.getMessage()
    assert (suppressed.levelno, suppressed.outcome, suppressed.reason) == (
        logging.INFO,
        "suppressed",
        "opted_out",
    )
    for record in (retry, failed, suppressed):
        assert_nothing_identifies_users(record.getMessage(), USER, OPTED_OUT_USER, AGENT)


# -- attempts and last_error in the API -----------------------------------------------------------
def test_last_error_is_kept_after_a_successful_retry(make_emulated_sms, storage):
    sms, emulator = make_emulated_sms(
        numbers=(AGENT,), POLYSMS_PUBLIC_URL="http://localhost", **storage
    )
    with freeze_time(START) as clock:
        emulator.fail_next(1, 20429)
        body = sms.send_ok(USER, SECRET_BODY, agent_number=AGENT)
        waiting = greeting(sms, body["conversation_id"])
        clock.tick(BASE_DELAY + timedelta(milliseconds=10))
        sms.run_due_timers()

    # While it waits for its retry: queued, one attempt, the error both current and last.
    assert (waiting["status"], waiting["attempts"], waiting["error_code"]) == ("queued", 1, 20429)
    first_error = {
        "code": 20429,
        "message": waiting["error_message"],
        "at": "2026-03-02T09:00:00+00:00",
    }
    assert waiting["last_error"] == first_error
    # Sent on the second try: no current error, the last one kept.
    message = greeting(sms, body["conversation_id"])
    assert message["status"] == "sent" and message["twilio_sid"]
    assert message["error_code"] is None and message["error_message"] is None
    assert message["attempts"] == 2
    assert message["last_error"] == first_error
    # The list shows the same.
    [listed] = sms.conversations()
    assert listed["messages"][0]["last_error"] == first_error
    # A delivery callback changes neither.
    assert sms.status_callback(message["twilio_sid"], "delivered").status_code == 200
    delivered = greeting(sms, body["conversation_id"])
    assert delivered["status"] == "delivered"
    assert (delivered["attempts"], delivered["last_error"]) == (2, first_error)


def test_a_message_sent_at_once_has_one_attempt_and_no_last_error(emulated):
    sms, _ = emulated
    body = sms.send_ok(USER, agent_number=AGENT)
    sms.inbound_ok(USER, "hello")

    greeting_message, inbound = sms.conversation(body["conversation_id"])["messages"][:2]
    assert (greeting_message["attempts"], greeting_message["last_error"]) == (1, None)
    assert (inbound["attempts"], inbound["last_error"]) == (0, None)


def test_the_openapi_document_describes_attempts_and_last_error(emulated):
    sms, _ = emulated
    schemas = sms.client.get("/v1/openapi.json").get_json()["components"]["schemas"]
    message = schemas["Message"]["properties"]
    assert message["attempts"]["type"] == "integer"
    assert set(schemas["LastError"]["properties"]) == {"code", "message", "at"}


# -- the metrics endpoint -------------------------------------------------------------------------
def test_the_metrics_endpoint_is_off_by_default(make_sms):
    sms = make_sms()
    assert sms.state.settings.metrics_endpoint is None
    assert sms.client.get("/metrics").status_code == 404
    assert "polysms_prometheus" not in sms.app.extensions
    # Nothing of ours in prometheus_client's global registry, ever.
    assert polysms_families_in_the_global_registry() == []


def test_the_metrics_report_what_happened(make_emulated_sms, storage):
    sms, emulator = make_emulated_sms(
        numbers=(AGENT, OTHER_AGENT),
        POLYSMS_TWILIO_TIMEOUT=0.5,
        POLYSMS_PUBLIC_URL="http://localhost",
        POLYSMS_METRICS_ENDPOINT="/metrics",
        **storage,
    )
    with sms.app.app_context():
        sms.store.set_opt_out(sms.tenant.project_id, OPTED_OUT_USER, AGENT, True, "STOP", utcnow())
    with freeze_time(START) as clock:
        _, before = scrape(sms)
        # A 429 then a success; a timeout then a success; a permanent failure; a suppressed
        # send; a send whose retry is still waiting.
        emulator.fail_next(1, 20429)
        retried = sms.send_ok(USER, SECRET_BODY, agent_number=AGENT)
        emulator.hang_next(1, 30)
        sms.send_ok(OTHER_USER, SECRET_BODY, agent_number=AGENT)
        clock.tick(BASE_DELAY * 2)
        sms.run_due_timers()
        emulator.fail_next(1, 21211)
        sms.send_ok(USER, SECRET_BODY, agent_number=OTHER_AGENT)
        sms.send_ok(OPTED_OUT_USER, SECRET_BODY, agent_number=AGENT)
        emulator.fail_next(1, 20503)
        sms.send_ok(OTHER_USER, SECRET_BODY, agent_number=OTHER_AGENT)
        # Twilio's callbacks and a reply: three webhooks.
        sid = greeting(sms, retried["conversation_id"])["twilio_sid"]
        assert sms.status_callback(sid, "sent").status_code == 200
        assert sms.status_callback(sid, "delivered").status_code == 200
        sms.inbound_ok(USER, SECRET_BODY)
        clock.tick(timedelta(seconds=1.5))  # shorter than the waiting retry's backoff
        text, after = scrape(sms)

        # Every session's idle deadline (24 h) passes, and no timer has run.
        clock.tick(timedelta(hours=25))
        _, late = scrape(sms)

    def value(name: str, **labels: str) -> float:
        return after[(name, tuple(sorted(labels.items())))]

    for outcome in ("sent", "suppressed", "failed"):
        assert before[("polysms_sends_total", (("outcome", outcome),))] == 0
    assert value("polysms_sends_total", outcome="sent") == 2
    assert value("polysms_sends_total", outcome="suppressed") == 1
    assert value("polysms_sends_total", outcome="failed") == 1
    assert value("polysms_send_retries_total", cause="error") == 2  # the 429 and the 503
    assert value("polysms_send_retries_total", cause="timeout") == 1
    assert value("polysms_deliveries_total", status="delivered") == 1
    assert value("polysms_deliveries_total", status="undelivered") == 0
    assert value("polysms_webhook_duration_seconds_count", webhook="status") == 2
    assert value("polysms_webhook_duration_seconds_count", webhook="inbound") == 1
    assert before[("polysms_webhook_duration_seconds_count", (("webhook", "status"),))] == 0
    # The 503's message has waited 1.5 s for its retry.
    assert value("polysms_oldest_unsent_message_age_seconds") == 1.5
    assert before[("polysms_oldest_unsent_message_age_seconds", ())] == 0
    assert value("polysms_timers_due") == 0
    # The memory scheduler has no queue others can see: no queue depth.
    assert not [key for key in after if key[0] == "polysms_queue_depth"]
    assert late[("polysms_timers_due", ())] == 5
    assert late[("polysms_oldest_unsent_message_age_seconds", ())] == 1.5 + 25 * 3600
    assert_nothing_identifies_users(text, USER, OTHER_USER, OPTED_OUT_USER, AGENT, OTHER_AGENT)
    assert not E164_LIKE.search(text)


def test_the_endpoint_is_under_the_url_prefix_and_apps_do_not_share_figures(make_sms):
    one = make_sms(POLYSMS_METRICS_ENDPOINT="/metrics", POLYSMS_URL_PREFIX="/sms")
    other = make_sms(POLYSMS_METRICS_ENDPOINT="/internal/metrics")
    assert (
        one.client.post(
            "/sms/v1/outbound-sms",
            json={"user_number": USER, "message": "hi"},
            headers=one.tenant.headers,
        ).status_code
        == 202
    )

    assert one.client.get("/metrics").status_code == 404
    response = one.client.get("/sms/metrics")
    assert response.headers["Cache-Control"] == "no-store"
    _, figures = scrape(one, "/sms/metrics")
    _, others = scrape(other, "/internal/metrics")
    assert figures[("polysms_sends_total", (("outcome", "sent"),))] == 1
    assert others[("polysms_sends_total", (("outcome", "sent"),))] == 0
    assert one.app.extensions["polysms_prometheus"].registry is not (
        other.app.extensions["polysms_prometheus"].registry
    )
    assert polysms_families_in_the_global_registry() == []


def test_queue_depth_is_the_rq_queues_length(make_sms, redis_url, redis_conn, unique):
    sms = make_sms(
        POLYSMS_SCHEDULER="rq",
        POLYSMS_REDIS_URL=redis_url,
        POLYSMS_QUEUE_NAME=f"polysms-obs-{unique}",
        POLYSMS_METRICS_ENDPOINT="/metrics",
    )
    queue = ("queue", f"polysms-obs-{unique}")
    deliveries = ("queue", f"polysms-obs-{unique}-deliveries")
    _, empty = scrape(sms)
    assert empty[("polysms_queue_depth", (queue,))] == 0
    assert empty[("polysms_queue_depth", (deliveries,))] == 0

    sms.send_ok(USER)  # no worker: the send job waits in the queue
    sms.send_ok(OTHER_USER)
    get_state(sms.app).scheduler.enqueue("deliver", lane="deliveries")

    _, waiting = scrape(sms)
    assert waiting[("polysms_queue_depth", (queue,))] == 2
    assert waiting[("polysms_queue_depth", (deliveries,))] == 1
    assert waiting[("polysms_sends_total", (("outcome", "sent"),))] == 0


def test_a_source_that_fails_is_left_out_and_logged(make_sms, caplog):
    sms = make_sms(
        POLYSMS_SCHEDULER="rq",
        POLYSMS_REDIS_URL="redis://127.0.0.1:1/0",  # nothing listens there
        POLYSMS_METRICS_ENDPOINT="/metrics",
    )
    with caplog.at_level(logging.WARNING, logger="flask_polysms.observability"):
        _, figures = scrape(sms)

    assert not [key for key in figures if key[0] == "polysms_queue_depth"]
    assert ("polysms_timers_due", ()) in figures
    assert [r.getMessage() for r in caplog.records if r.name == "flask_polysms.observability"] == [
        "metrics left out: _queue failed (ConnectionError)"
    ]


# -- the Store reads behind the endpoint ----------------------------------------------------------
def test_the_store_reads_of_the_endpoint(storage):
    store = backends.create_store(
        storage["POLYSMS_STORAGE_URL"], table_prefix=storage.get("POLYSMS_TABLE_PREFIX", "")
    )
    t0 = datetime.fromisoformat("2026-03-02T09:00:00.123456+00:00")
    try:
        assert store.metric_totals(["sent", "api_failures"]) == {"sent": 0, "api_failures": 0}
        assert store.oldest_unsent_at(t0) is None
        assert store.count_due_sessions(t0) == 0

        for project, day, amount in (("p1", t0.date(), 2), ("p2", t0.date(), 3)):
            store.incr_metric(project, "live", day, "sent", amount)
        store.incr_metric("p1", "sandbox", (t0 - timedelta(days=40)).date(), "sent")
        store.incr_metric("p1", "live", t0.date(), "delivered")
        assert store.metric_totals(["sent", "api_failures"]) == {"sent": 6, "api_failures": 0}

        def message(status: str, created: datetime) -> Message:
            return Message(
                id=new_id("msg_"),
                project_id="p1",
                environment="live",
                session_id=None,
                direction=OUTBOUND,
                kind="agent",
                body="b",
                to=USER,
                from_=AGENT,
                created_at=created,
                updated_at=created,
                status=status,
            )

        store.add_message(message(SENT, t0 - timedelta(hours=2)))
        store.add_message(message(QUEUED, t0 - timedelta(minutes=3)))
        store.add_message(message(QUEUED, t0 - timedelta(minutes=1)))
        assert store.oldest_unsent_at(t0) == t0 - timedelta(minutes=3)

        for minutes, state in ((-5, "active"), (-1, "warned"), (-2, CLOSED), (5, "active")):
            store.create_session(
                Session(
                    id=new_id("ses_"),
                    project_id="p1",
                    environment="live",
                    user_number=USER,
                    agent_number=AGENT,
                    created_at=t0,
                    last_activity_at=t0,
                    state=state,
                    deadline_at=t0 + timedelta(minutes=minutes),
                )
            )
        assert store.count_due_sessions(t0) == 2
        assert store.count_due_sessions(t0, cap=1) == 1
    finally:
        store.disconnect()


def test_a_store_without_totals_leaves_the_sends_out(make_sms, monkeypatch):
    from flask_polysms.ports.store import Store

    sms = make_sms(POLYSMS_METRICS_ENDPOINT="/metrics")
    # A third-party backend written before these reads: the contract's defaults.
    store = sms.store
    for name in ("metric_totals", "oldest_unsent_at", "count_due_sessions"):
        monkeypatch.setattr(store, name, getattr(Store, name).__get__(store))
    sms.send_ok(USER)

    _, figures = scrape(sms)

    assert not [key for key in figures if key[0].startswith("polysms_sends")]
    assert figures[("polysms_oldest_unsent_message_age_seconds", ())] == 0
    assert figures[("polysms_timers_due", ())] == 0


def test_without_prometheus_client_the_setting_fails_at_start_up(monkeypatch):
    import sys

    import flask_polysms.services
    from flask_polysms.config import ConfigError

    monkeypatch.delitem(sys.modules, "flask_polysms.services.observability", raising=False)
    monkeypatch.delattr(flask_polysms.services, "observability", raising=False)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # an import of it fails
    app = Flask("no_prometheus")
    app.config.update(TESTING=True, SECRET_KEY="k", POLYSMS_METRICS_ENDPOINT="/metrics")
    with pytest.raises(ConfigError, match=r"flask-polysms\[metrics\]"):
        PolySMS(app)


@pytest.mark.parametrize("bad", ["metrics", "/metrics/", 5])
def test_a_bad_endpoint_path_is_refused_naming_the_key(bad):
    from flask_polysms.config import ConfigError

    app = Flask("bad_path")
    app.config.update(TESTING=True, SECRET_KEY="k", POLYSMS_METRICS_ENDPOINT=bad)
    with pytest.raises(ConfigError, match="POLYSMS_METRICS_ENDPOINT"):
        PolySMS(app)
