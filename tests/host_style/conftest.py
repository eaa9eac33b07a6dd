"""A host app's own test setup, the way many Flask projects write it: the app built at import,
one app context pushed for the whole session, pytest-flask's ``client`` fixture, and the
flask-polysms pytest plugin's fixtures on top. Run by ``tests/test_request_identity.py`` in a
process of its own (the pushed context would otherwise leak into the rest of the suite)."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_polysms import PolySMS

polysms = PolySMS()


@polysms.agent
def echo(conv, text):
    return f"echo: {text}"


def create_app() -> Flask:
    app = Flask("host_style")
    app.config.update(TESTING=True, SECRET_KEY="host-secret", POLYSMS_GATEWAY="outbox")
    polysms.init_app(app)
    return app


application = create_app()
application.app_context().push()  # as some hosts do, at import


@pytest.fixture
def app():
    """pytest-flask's convention: its ``client`` fixture is this app's test client."""
    return application
