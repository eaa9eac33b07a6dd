"""The app the RQ worker processes of tests/test_faults.py run (`flask --app tests/fault_app.py`).

Its whole configuration comes from ``POLYSMS_FAULT_CONFIG`` (JSON), so the test's own app and its
workers share one configuration. With ``POLYSMS_FAULT_TIMEOUT_LOG`` set to a directory, every
Twilio call that timed out or lost its connection is written there, one JSON line per call, with
the message body: a send whose outcome our side could not know (the emulator may have created the
message anyway), which is the only case where the test accepts a second copy at the emulator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask

from flask_polysms import PolySMS
from flask_polysms.ports.gateways import GatewayError
from flask_polysms.services.state import get_state

CONFIG_ENV = "POLYSMS_FAULT_CONFIG"
TIMEOUT_LOG_ENV = "POLYSMS_FAULT_TIMEOUT_LOG"

polysms = PolySMS()


@polysms.agent
def answer(conv, text):
    return f"echo: {text}"


def record_unknown_outcomes(app: Flask, directory: str) -> None:
    """Wrap the app's gateway: log the body of every send that ended without Twilio's answer."""
    state = get_state(app)
    send = state.gateway.send
    path = Path(directory) / f"timeouts-{os.getpid()}.jsonl"

    def logged_send(account_sid, auth_token, message):
        try:
            return send(account_sid, auth_token, message)
        except GatewayError as exc:
            if exc.code is None and exc.retryable:  # a timeout or a dropped connection
                with path.open("a", encoding="utf-8") as log:
                    log.write(json.dumps({"body": message.body, "error": str(exc)}) + "\n")
            raise

    state.gateway.send = logged_send


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(json.loads(os.environ[CONFIG_ENV]))
    polysms.init_app(app)
    if os.environ.get(TIMEOUT_LOG_ENV):
        record_unknown_outcomes(app, os.environ[TIMEOUT_LOG_ENV])
    return app
