"""The optional dashboard (``POLYSMS_DASHBOARD = True``): server-rendered pages for one project.

Mounted at ``{POLYSMS_URL_PREFIX}/dashboard`` by :func:`register_dashboard`, which ``init_app``
calls when the setting is on. A person signs in with an API key and a connector id; the Flask
session then holds only the key's id and the connector's id (never the key), every request checks
again that the key is not revoked and that the connector is still its account's, and every form
carries a CSRF token. Pages show the widget (sent vs failed per day, delivery rate, API failures),
the template manager with a live preview, conversations, opt-outs and, when the app runs a
:class:`~flask_polysms.emulator.TwilioEmulator` (``state.emulator``), a phone simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import ConfigError

if TYPE_CHECKING:
    from flask import Flask

    from ..extension import PolySMSState

URL_PATH = "/dashboard"


def register_dashboard(app: Flask, state: PolySMSState) -> None:
    """Mount the dashboard blueprint ``polysms_dashboard`` on ``app``.

    Raises ConfigError when the app has no ``SECRET_KEY``: the sign-in cookie is Flask's session
    cookie, signed with the host app's own key.
    """
    if not app.secret_key:
        raise ConfigError(
            "SECRET_KEY must be set when POLYSMS_DASHBOARD is on: the dashboard's sign-in session "
            "is the app's Flask session cookie, signed with SECRET_KEY"
        )
    from .views import bp

    app.register_blueprint(bp, url_prefix=state.settings.url_prefix + URL_PATH)
