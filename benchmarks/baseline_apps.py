"""Hand-written baselines: the same work as flask-polysms without the extension.

Each is what a developer would write by hand on the same stack (Flask, psycopg2, RQ on Redis): one
PostgreSQL connection per process kept open, the rows written in one transaction, the same RQ job
enqueued. They write into the same tables (so they pay the same index upkeep) under their own
project id. Served by gunicorn from benchmarks/ (``baseline_apps:outbound_app()`` ...).

- ``hello_app``: a bare Flask "hello" (the ceiling of Flask under gunicorn here).
- ``outbound_app``: ``POST /v1/outbound-sms`` parses the JSON, inserts the session and its greeting
  message in one transaction and enqueues the send job.
- ``inbound_app``: ``POST /v1/twilio/sms`` checks the Twilio signature, claims the MessageSid, finds
  (or opens) the user's session, records the message and moves the session's deadline, all in one
  transaction, and enqueues the agent job.
- ``noop_job``: the no-op RQ job of the worker benchmark.
"""

from __future__ import annotations

import os
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flask import Flask, Response, jsonify, request

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PG_URL, QUEUE, REDIS_URL  # noqa: E402

BASELINE_PROJECT = "prj_baseline"
BASELINE_AGENT = "+14155550199"
BASELINE_TOKEN = os.environ.get("POLYSMS_BENCH_BASELINE_TOKEN", "baseline-auth-token")
IDLE = timedelta(hours=24)
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

SESSION_COLUMNS = (
    "id, project_id, environment, user_number, agent_number, created_at, last_activity_at, "
    "state, engaged, closed_at, end_reason, deadline_at, timer_kind, wake_at, version, data, "
    "entities, metadata, language"
)
MESSAGE_COLUMNS = (
    'id, project_id, environment, session_id, direction, kind, body, "to", from_number, '
    "created_at, updated_at, status, messaging_service_sid, error_code, error_message, "
    "twilio_sid, segments, encoding, attempts, max_attempts, template, drop_reason"
)
INSERT_SESSION = (
    f"INSERT INTO polysms_session ({SESSION_COLUMNS}) VALUES "
    "(%s, %s, 'live', %s, %s, %s, %s, 'active', %s, NULL, NULL, %s, 'idle', %s, 1, '{}', '{}', "
    "'{}', NULL)"
)
INSERT_MESSAGE = (
    f"INSERT INTO polysms_message ({MESSAGE_COLUMNS}) VALUES "
    "(%s, %s, 'live', %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL, NULL, %s, 1, 'GSM-7', 0, 5, "
    "NULL, NULL)"
)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class _Resources:
    """One PostgreSQL connection and one RQ queue per process, opened on first use (after the
    gunicorn fork)."""

    def __init__(self) -> None:
        self._conn = None
        self._queue = None

    @property
    def conn(self):
        if self._conn is None or self._conn.closed:
            import psycopg2

            self._conn = psycopg2.connect(PG_URL.replace("postgresql+pool://", "postgresql://"))
        return self._conn

    @property
    def queue(self):
        if self._queue is None:
            from redis import Redis
            from rq import Queue

            self._queue = Queue(QUEUE, connection=Redis.from_url(REDIS_URL))
        return self._queue


def hello_app() -> Flask:
    app = Flask("hello")

    @app.route("/hello")
    def hello():
        return "hello"

    return app


def outbound_app() -> Flask:
    app = Flask("baseline_outbound")
    res = _Resources()

    @app.route("/v1/outbound-sms", methods=["POST"])
    def outbound():
        body = request.get_json()
        user_number, text = body["user_number"], body["message"]
        now = _now()
        session_id, message_id = "conv_" + uuid.uuid4().hex, "msg_" + uuid.uuid4().hex
        conn = res.conn
        with conn, conn.cursor() as cur:  # one transaction: commit on success
            cur.execute(
                INSERT_SESSION,
                (
                    session_id,
                    BASELINE_PROJECT,
                    user_number,
                    BASELINE_AGENT,
                    now,
                    now,
                    False,
                    now + IDLE,
                    now + IDLE,
                ),
            )
            cur.execute(
                INSERT_MESSAGE,
                (
                    message_id,
                    BASELINE_PROJECT,
                    session_id,
                    "outbound",
                    "greeting",
                    text,
                    user_number,
                    BASELINE_AGENT,
                    now,
                    now,
                    "queued",
                    None,
                ),
            )
        res.queue.enqueue("flask_polysms.jobs.run_job", "send", message_id, result_ttl=0)
        return (
            jsonify(
                conversation_id=session_id,
                agent_number=BASELINE_AGENT,
                user_number=user_number,
                status="queued",
            ),
            202,
            {"Location": f"/v1/conversations/{session_id}"},
        )

    return app


def inbound_app() -> Flask:
    from twilio.request_validator import RequestValidator

    app = Flask("baseline_inbound")
    res = _Resources()
    validator = RequestValidator(BASELINE_TOKEN)

    @app.route("/v1/twilio/sms", methods=["POST"])
    def inbound():
        form = request.form
        if not validator.validate(request.url, form, request.headers.get("X-Twilio-Signature", "")):
            return jsonify(detail="invalid X-Twilio-Signature"), 403
        sid, user_number, text = form["MessageSid"], form["From"], form.get("Body", "")
        agent_number = form["To"]
        now = _now()
        conn = res.conn
        with conn, conn.cursor() as cur:  # one transaction: commit on success
            cur.execute(
                "INSERT INTO polysms_inbound_claim (message_sid, claimed_at) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING",
                (sid, now),
            )
            if cur.rowcount == 0:
                return Response(EMPTY_TWIML, mimetype="text/xml")
            cur.execute(
                "SELECT id FROM polysms_session WHERE project_id = %s AND user_number = %s "
                "AND agent_number = %s AND state <> 'closed' ORDER BY seq DESC LIMIT 1",
                (BASELINE_PROJECT, user_number, agent_number),
            )
            row = cur.fetchone()
            if row is None:
                session_id = "conv_" + uuid.uuid4().hex
                cur.execute(
                    INSERT_SESSION,
                    (
                        session_id,
                        BASELINE_PROJECT,
                        user_number,
                        agent_number,
                        now,
                        now,
                        True,
                        now + IDLE,
                        now + IDLE,
                    ),
                )
            else:
                session_id = row[0]
            message_id = "msg_" + uuid.uuid4().hex
            cur.execute(
                INSERT_MESSAGE,
                (
                    message_id,
                    BASELINE_PROJECT,
                    session_id,
                    "inbound",
                    "user",
                    text,
                    agent_number,
                    user_number,
                    now,
                    now,
                    "received",
                    sid,
                ),
            )
            cur.execute(
                "UPDATE polysms_session SET last_activity_at = %s, deadline_at = %s, "
                "engaged = TRUE, state = 'active', version = version + 1 WHERE id = %s",
                (now, now + IDLE, session_id),
            )
        res.queue.enqueue(
            "flask_polysms.jobs.run_job", "agent", session_id, message_id, result_ttl=0
        )
        return Response(EMPTY_TWIML, mimetype="text/xml")

    return app


def noop_job(*args) -> None:
    """RQ's cheapest job: the worker benchmark's baseline."""
    return None
