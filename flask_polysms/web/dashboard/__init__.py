"""The optional dashboard (``POLYSMS_DASHBOARD = True``): server-rendered pages for one project.

Mounted at ``{POLYSMS_URL_PREFIX}/dashboard`` by :func:`register_dashboard`, which ``init_app``
calls when the setting is on. A person signs in with an API key and a connector id; the sign-in
is a record in the store and the browser holds only its random secret (never the key), every
request checks again that the sign-in has not ended or timed out, that the key is not revoked and
that the connector is still its account's, and every form carries a CSRF token. Pages show the
widget (sent vs failed per day, delivery rate, API failures) and the conversations of the
connector's environment (on each one's page a person can take it over from the agent, reply,
hand it back or end it), the project's templates (project-wide: they hold every environment's
senders) with a live preview, opt-outs and, when the app runs a
:class:`~flask_polysms.emulator.TwilioEmulator` (``state.emulator``), a phone simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import ConfigError

if TYPE_CHECKING:
    from flask import Flask

    from ...services.state import PolySMSState


def register_dashboard(app: Flask, state: PolySMSState) -> None:
    """Mount the dashboard blueprint ``polysms_dashboard`` on ``app``.

    Raises ConfigError when the app has no ``SECRET_KEY``: the forms' CSRF tokens live in the
    host app's Flask session, signed with its key.
    """
    if not app.secret_key:
        raise ConfigError(
            "SECRET_KEY must be set when POLYSMS_DASHBOARD is on: the dashboard's CSRF tokens "
            "live in the app's Flask session cookie, signed with SECRET_KEY"
        )
    # Their routes join the blueprint before it is mounted.
    from . import conversation_page, scheduled  # noqa: F401
    from .views import bp

    app.register_blueprint(bp, url_prefix=state.settings.url_prefix + state.settings.dashboard_url)
