"""An appointment-reminder app on flask-polysms.

Run it with ``flask --app example_app run`` (any ``--host``/``--port``). With no environment set it
is self-contained: a SQLite file in ``instance/``, the in-process ``thread`` scheduler, a local
Twilio emulator as the gateway (it accepts every tenant the app has, CLI-made ones too), a demo
project provisioned on first start, the dashboard with its phone simulator, and a banner with a
``curl`` command printed when the server starts (not by other ``flask`` commands;
``EXAMPLE_APP_QUIET=1`` silences it; ``flask --app example_app polysms demo`` prints the curl again,
``--reset`` starts over). ``EXAMPLE_APP_INSTANCE`` moves the instance folder.

Environment for a real deployment (every ``POLYSMS_*`` key of the configuration table is read from
the environment, and an exported value is never overridden):

- ``POLYSMS_STORAGE_URL`` (e.g. ``postgresql://…``), ``POLYSMS_REDIS_URL`` (turns on the ``rq``
  scheduler and Redis-backed rate limits), ``POLYSMS_PUBLIC_URL``;
- ``TWILIO_ACCOUNT_SID`` / ``TWILIO_AUTH_TOKEN``: send through Twilio itself (no emulator);
- ``POLYSMS_ENCRYPTION_KEYS`` (Fernet keys, comma-separated; the first encrypts the stored Twilio
  Auth Tokens) and ``SECRET_KEY`` (the dashboard's session cookie): required outside the demo,
  which keeps its own in ``instance/`` (mode 0600).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet
from flask import Flask

from flask_polysms import PolySMS
from flask_polysms.cli import read_private_file, write_private_file
from flask_polysms.config import from_environ

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


def _instance_secret(key_file: Path, make: Callable[[], str]) -> str:
    """A secret the demo keeps in instance/, so what it encrypted still opens after a restart.

    Created private (0600) and only once: a second process starting at the same time reads the
    first one's secret instead of writing its own.
    """
    if not key_file.exists():
        write_private_file(key_file, make(), replace=False)
    return read_private_file(key_file).strip()


def _favicon():
    """The browser's tab icon (flask-polysms's own), so no page of the example logs a 404."""
    from flask import send_from_directory

    from flask_polysms.web.api.docs import OWN_ASSETS

    return send_from_directory(OWN_ASSETS, "favicon.svg", mimetype="image/svg+xml", max_age=86400)


def _new_fernet_key() -> str:
    return Fernet.generate_key().decode()


def create_app(config: dict | None = None) -> Flask:
    """The app factory; ``config`` overrides everything (tests)."""
    app = Flask(__name__, instance_path=os.environ.get("EXAMPLE_APP_INSTANCE"))
    instance = Path(app.instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    config = config or {}
    embedded = _embedded() and not config.get("TESTING")
    secret = os.environ.get("SECRET_KEY") or config.get("SECRET_KEY")
    if not secret and not embedded and not config.get("TESTING"):
        # Every web process must share one key, or a dashboard sign-in made on one would not be
        # read by another: a key file per machine would not do.
        raise RuntimeError("set SECRET_KEY: it signs the dashboard's session cookie")
    # The example's own defaults first; then every POLYSMS_* variable exported (one loop over
    # the extension's configuration table), which nothing here overrides.
    app.config.update(
        SECRET_KEY=secret
        or _instance_secret(instance / "secret_key", lambda: secrets.token_urlsafe(32)),
        POLYSMS_STORAGE_URL=f"sqlite:///{instance / 'polysms-demo.db'}",
        POLYSMS_DASHBOARD=True,
    )
    if os.environ.get("POLYSMS_REDIS_URL"):
        # Redis there: RQ workers and limits shared between processes, unless exported otherwise.
        app.config.update(
            POLYSMS_SCHEDULER="rq", POLYSMS_RATE_LIMIT_STORAGE_URL=os.environ["POLYSMS_REDIS_URL"]
        )
    if embedded and not os.environ.get("POLYSMS_ENCRYPTION_KEYS"):
        # Outside debug the Auth Tokens need a real Fernet key; the demo keeps one in instance/.
        app.config["POLYSMS_ENCRYPTION_KEYS"] = [
            _instance_secret(instance / "encryption_key", _new_fernet_key)
        ]
    app.config.update(from_environ(os.environ))
    demo = None
    if embedded:
        demo = start_demo(app)
    app.config.update(config)
    polysms.init_app(app)
    app.add_url_rule("/favicon.ico", "favicon", _favicon)
    if demo is not None:
        demo.finish(app)
    return app
