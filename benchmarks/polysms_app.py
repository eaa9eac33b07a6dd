"""The app the benchmarks measure: flask-polysms on PostgreSQL and Redis, configured as the README's
production section says (RQ scheduler, rate limits counted in Redis).

Served by gunicorn as ``polysms_app:create_app()`` from benchmarks/, and imported in-process by
the worker and timer benchmarks. The limits are raised so that a benchmark measures the work of a
request, not the 429 answer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flask import Flask

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PG_URL, QUEUE, REDIS_URL, SECRET_KEY  # noqa: E402

from flask_polysms import PolySMS  # noqa: E402

polysms = PolySMS()


@polysms.agent
def agent(conv, text):
    """No reply: the inbound benchmark measures the webhook, not an agent."""
    return None


def create_app() -> Flask:
    app = Flask("polysms_bench")
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        POLYSMS_STORAGE_URL=PG_URL,
        POLYSMS_SCHEDULER="rq",
        POLYSMS_REDIS_URL=REDIS_URL,
        POLYSMS_QUEUE_NAME=QUEUE,
        POLYSMS_RATE_LIMIT="1000000 per second",
        POLYSMS_RATE_LIMIT_STORAGE_URL=REDIS_URL,
        POLYSMS_INBOUND_SENDER_LIMIT="1000000 per minute",
        POLYSMS_INBOUND_PROJECT_LIMIT="1000000 per minute",
        POLYSMS_DUPLICATE_TEXT_LIMIT="1000000 per minute",
        POLYSMS_TWILIO_BASE_URL=os.environ.get("POLYSMS_BENCH_TWILIO_BASE_URL"),
        # Where Twilio posts status callbacks (set by the worker benchmark: send jobs run outside
        # any request, so without it they would pass no StatusCallback).
        POLYSMS_PUBLIC_URL=os.environ.get("POLYSMS_BENCH_PUBLIC_URL"),
        # "outbox" where a benchmark sends nothing to Twilio (the timers' warnings).
        POLYSMS_GATEWAY=os.environ.get("POLYSMS_BENCH_GATEWAY", "twilio"),
    )
    polysms.init_app(app)
    return app
