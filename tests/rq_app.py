"""The app the RQ worker processes of tests/test_rq.py run (`flask --app tests/rq_app.py`)."""

from __future__ import annotations

import os

from flask import Flask

from flask_polysms import PolySMS

polysms = PolySMS()


@polysms.agent
def answer(conv, text):
    return f"echo: {text}"


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_PUBLIC_URL="http://localhost",
        POLYSMS_ENCRYPTION_KEYS=["dMNOlYNhCuKwH-ZYn7106kPfZ9WPjhBc5U2KtgI0sXw="],
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="rq",
        POLYSMS_REDIS_URL=os.environ["RQ_TEST_REDIS_URL"],
        POLYSMS_STORAGE_URL=os.environ["RQ_TEST_STORAGE_URL"],
        POLYSMS_QUEUE_NAME="polysms-test",
        POLYSMS_IDLE_TIMEOUT=1.0,
    )
    polysms.init_app(app)
    return app
