"""Shared numbers, the app factory, fixtures and request helpers of the sender compliance tests."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_polysms import PolySMS
from flask_polysms.services.state import get_state

US_LONG = "+14155552671"  # the blocked one in most tests
US_LONG_OK = "+14155552673"
US_TOLL_FREE = "+18005550100"
CA_LONG = "+14165550100"
GB_TOLL_FREE = "+448001234567"
MG_SID = "MG" + "0123456789abcdef" * 2

US_USER = "+14155552672"
GB_USER = "+447400123456"
DE_USER = "+4915123456789"
# Valid mobile numbers of countries without two-way SMS (checked with phonenumbers).
HR_USER, BG_USER, SK_USER = "+385921234567", "+35943012345", "+421912123456"


def make_app(**config) -> Flask:
    app = Flask(__name__)
    app.testing = True
    app.config.update(SECRET_KEY="test secret", POLYSMS_GATEWAY="outbox", **config)
    PolySMS(app)
    return app


@pytest.fixture(name="app")
def app_fixture():
    return make_app()


@pytest.fixture(name="client")
def client_fixture(app):
    return app.test_client()


def record(app, address, registration, campaign_id=None):
    """Record a sender's registration state straight in the Store (the CLI/API are tested apart)."""
    with app.app_context():
        get_state(app).store.update_sender(
            address, registration=registration, campaign_id=campaign_id
        )


def outbound(client, tenant, user_number, agent_number=None, message="hello"):
    body = {"user_number": user_number, "message": message}
    if agent_number:
        body["agent_number"] = agent_number
    return client.post("/v1/outbound-sms", json=body, headers=tenant.headers)


def outbox(app):
    with app.app_context():
        return list(get_state(app).extension.outbox)


def compliance(client, tenant, sender, query=""):
    return client.get(f"/v1/senders/{sender}/compliance{query}", headers=tenant.headers)
