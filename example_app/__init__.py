"""An appointment-reminder app on flask-polysms.

Run it with ``flask --app example_app run``. With no environment set it is self-contained: a SQLite
file in ``instance/``, the in-process ``thread`` scheduler, a local Twilio emulator as the gateway,
a demo project provisioned on first start, the dashboard, and a ``curl`` command printed at start.

Environment for a real deployment:

- ``POLYSMS_STORAGE_URL`` (e.g. ``postgresql://…``), ``POLYSMS_REDIS_URL`` (turns on the ``rq``
  scheduler and Redis-backed rate limits), ``POLYSMS_PUBLIC_URL``;
- ``TWILIO_ACCOUNT_SID`` / ``TWILIO_AUTH_TOKEN``: send through Twilio itself (no emulator);
- ``SECRET_KEY``: required outside the demo (it encrypts the stored Twilio Auth Tokens).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from flask import Flask

from flask_polysms import PolySMS

from .agent import register_agent
from .demo import start_demo

polysms = PolySMS()
register_agent(polysms)


def _embedded() -> bool:
    """No storage, Redis or Twilio configured: run the self-contained demo."""
    return not any(
        os.environ.get(name)
        for name in ("POLYSMS_STORAGE_URL", "POLYSMS_REDIS_URL", "TWILIO_ACCOUNT_SID")
    )


def _secret_key(instance: Path) -> str:
    # The demo keeps its key in instance/ so the encrypted Auth Token still opens after a restart.
    key_file = instance / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(32))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def create_app(config: dict | None = None) -> Flask:
    """The app factory; ``config`` overrides everything (tests)."""
    app = Flask(__name__, instance_path=os.environ.get("EXAMPLE_APP_INSTANCE"))
    instance = Path(app.instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    config = config or {}
    embedded = _embedded() and not config.get("TESTING")
    secret = os.environ.get("SECRET_KEY") or config.get("SECRET_KEY")
    if not secret and not embedded and not config.get("TESTING"):
        # Every web and worker process must share one key, or they cannot read each other's
        # encrypted Auth Tokens: a key file per machine would not do.
        raise RuntimeError("set SECRET_KEY: it encrypts the stored Twilio Auth Tokens")
    app.config.update(
        SECRET_KEY=secret or _secret_key(instance),
        POLYSMS_STORAGE_URL=os.environ.get(
            "POLYSMS_STORAGE_URL", f"sqlite:///{instance / 'polysms-demo.db'}"
        ),
        POLYSMS_DASHBOARD=True,
    )
    if os.environ.get("POLYSMS_PUBLIC_URL"):
        app.config["POLYSMS_PUBLIC_URL"] = os.environ["POLYSMS_PUBLIC_URL"]
    if os.environ.get("POLYSMS_REDIS_URL"):
        redis_url = os.environ["POLYSMS_REDIS_URL"]
        app.config.update(
            POLYSMS_SCHEDULER="rq",
            POLYSMS_REDIS_URL=redis_url,
            POLYSMS_RATE_LIMIT_STORAGE_URL=redis_url,
        )
    demo = None
    if embedded:
        demo = start_demo(app, instance)
    app.config.update(config)
    polysms.init_app(app)
    if demo is not None:
        demo.finish(app)
    return app
