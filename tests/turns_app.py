"""The app the worker processes of tests/test_turn_load.py run (`flask --app tests/turns_app.py`).

Its agent counts turns in ``conv.state`` (read, pause, write: two turns of one conversation at
once would lose one) and records each turn's conversation, text, process and times in a Redis
list the test reads.
"""

from __future__ import annotations

import json
import os
import time

import redis
from flask import Flask

from flask_polysms import PolySMS

polysms = PolySMS()
PAUSE_S = 0.02


def record_turn(conv, text: str, push) -> None:
    """The load test's agent: one turn of ``conv`` on ``text``, recorded with ``push(dict)``."""
    started = time.time()
    count = conv.state.get("count", 0)
    seen = list(conv.state.get("seen", []))
    time.sleep(PAUSE_S)
    conv.state["count"] = count + 1
    conv.state["seen"] = [*seen, *text.split("\n")]
    push(
        {
            "conversation": conv.id,
            "user": conv.caller_number,
            "text": text,
            "count": count + 1,
            "start": started,
            "end": time.time(),
            "pid": os.getpid(),
        }
    )


_log = None


@polysms.agent
def answer(conv, text):
    global _log
    if _log is None:
        _log = redis.Redis.from_url(os.environ["RQ_TEST_REDIS_URL"])
    record_turn(conv, text, lambda turn: _log.rpush(os.environ["TURNS_LOG_KEY"], json.dumps(turn)))
    return None


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
        POLYSMS_QUEUE_NAME=os.environ["TURNS_QUEUE"],
    )
    polysms.init_app(app)
    return app
