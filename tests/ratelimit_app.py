"""The app two server processes of tests/test_rate_limit_processes.py run."""

from __future__ import annotations

import os

from flask import Flask

from flask_polysms import PolySMS


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test",
        POLYSMS_PUBLIC_URL="http://localhost",
        POLYSMS_ENCRYPTION_KEYS=["dMNOlYNhCuKwH-ZYn7106kPfZ9WPjhBc5U2KtgI0sXw="],
        POLYSMS_GATEWAY="outbox",
        POLYSMS_SCHEDULER="manual",
        POLYSMS_STORAGE_URL=os.environ["RL_TEST_STORAGE_URL"],
        POLYSMS_RATE_LIMIT="4 per minute",
        POLYSMS_RATE_LIMIT_STORAGE_URL=os.environ["RL_TEST_LIMIT_STORAGE_URL"],
    )
    PolySMS(app)
    return app
