"""The app the benchmarks measure: flask-polysms on PostgreSQL and Redis, configured as the README's
production section says (RQ scheduler, rate limits counted in Redis).

Served by gunicorn as ``polysms_app:create_app()`` from benchmarks/, and imported in-process by
the worker and timer benchmarks; with ``POLYSMS_BENCH_CODE``, another checkout's code. The limits
are raised so that a benchmark measures the work of a request, not the 429 answer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flask import Flask

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ENCRYPTION_KEY, PG_URL, QUEUE, REDIS_URL, SECRET_KEY  # noqa: E402

# POLYSMS_BENCH_CODE: another checkout of the project (harness.checkout) to serve instead of the
# installed one, for a side-by-side run of two commits (bench_outbound.py --against). Put first
# on the path, and anything of flask_polysms imported already is dropped, so that it is the one
# imported.
if os.environ.get("POLYSMS_BENCH_CODE"):
    sys.path.insert(0, os.environ["POLYSMS_BENCH_CODE"])
    for _name in [m for m in sys.modules if m == "flask_polysms" or m.startswith("flask_polysms.")]:
        del sys.modules[_name]

from flask_polysms import PolySMS  # noqa: E402

if os.environ.get("POLYSMS_BENCH_CODE"):  # measuring the wrong code would go unnoticed
    import flask_polysms  # noqa: E402

    served = str(Path(flask_polysms.__file__).resolve())
    assert served.startswith(str(Path(os.environ["POLYSMS_BENCH_CODE"]).resolve())), served

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
        POLYSMS_READ_RATE_LIMIT="1000000 per second",
        POLYSMS_RATE_LIMIT_STORAGE_URL=REDIS_URL,
        POLYSMS_INBOUND_SENDER_LIMIT="1000000 per minute",
        POLYSMS_INBOUND_PROJECT_LIMIT="1000000 per minute",
        POLYSMS_DUPLICATE_TEXT_LIMIT="1000000 per minute",
        POLYSMS_TWILIO_BASE_URL=os.environ.get("POLYSMS_BENCH_TWILIO_BASE_URL"),
        # Where Twilio posts status callbacks (set by the worker benchmark: send jobs run outside
        # any request, so without it they would pass no StatusCallback).
        # Else where gunicorn serves it (signatures are checked over it), else any fixed origin.
        POLYSMS_PUBLIC_URL=os.environ.get("POLYSMS_BENCH_PUBLIC_URL")
        or os.environ.get("POLYSMS_BENCH_SERVED_URL", "http://127.0.0.1"),
        POLYSMS_ENCRYPTION_KEYS=[ENCRYPTION_KEY],
        # "outbox" where a benchmark sends nothing to Twilio (the timers' warnings).
        POLYSMS_GATEWAY=os.environ.get("POLYSMS_BENCH_GATEWAY", "twilio"),
    )
    polysms.init_app(app)
    if os.environ.get("POLYSMS_BENCH_TRACE"):  # per-request timing from inside the server
        from tracing import Traced

        app.wsgi_app = Traced(app.wsgi_app, os.environ["POLYSMS_BENCH_TRACE"])
    return app
