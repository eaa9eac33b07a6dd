"""The host app's test setup: the memory backend, the outbox gateway, the manual scheduler.

The fixtures ``polysms_tenant`` and ``sms_phone`` come from flask-polysms' pytest plugin.
"""

from __future__ import annotations

import pytest

from example_app import create_app, polysms


@pytest.fixture
def app():
    return create_app(
        {
            "TESTING": True,
            "POLYSMS_STORAGE_URL": "memory://",
            "POLYSMS_GATEWAY": "outbox",
            "POLYSMS_SCHEDULER": "manual",
            "POLYSMS_DASHBOARD": False,
        }
    )


@pytest.fixture
def outbox(app):
    """The texts sent so far, oldest first."""

    def texts() -> list[str]:
        with app.app_context():
            return [message["body"] for message in polysms.outbox]

    return texts
