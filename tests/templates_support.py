"""Shared support for the SMS template tests: the numbers they use, an app with the outbox gateway,
two provisioned tenants, and helpers that create templates and add numbers."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.services.provisioning import add_sender
from flask_polysms.testing import provision

LIVE = "+14155552671"
LIVE_2 = "+14155552672"
SANDBOX = "+14155552673"
SANDBOX_2 = "+14155552674"
PRE_RELEASE = "+14155552675"
OTHER_PROJECT = "+14155552680"
USER = "+14155552690"
UNPROVISIONED = "+14155552699"
MG_SID = "MG" + "0123456789abcdef" * 2
INBOUND_URL = "http://localhost/v1/twilio/sms"
BASE = "/v1/sms-templates"


# -- fixtures and helpers -------------------------------------------------------------------------
@pytest.fixture(name="polysms")
def polysms_fixture():
    return PolySMS()


@pytest.fixture(name="app")
def app_fixture(polysms):
    app = Flask(__name__)
    app.testing = True
    app.config.update(SECRET_KEY="test secret", POLYSMS_GATEWAY="outbox")
    polysms.init_app(app)
    return app


@pytest.fixture(name="client")
def client_fixture(app):
    return app.test_client()


@pytest.fixture(name="live")
def live_fixture(app):
    """A live project with two numbers."""
    return provision(app, environment="live", numbers=(LIVE, LIVE_2))


@pytest.fixture(name="other")
def other_fixture(app):
    """A second tenant (its own account and project)."""
    return provision(app, environment="live", numbers=(OTHER_PROJECT,))


def template_json(**overrides):
    data = {
        "title": "confirmation",
        "body": "Your booking is confirmed.",
        "env_phone_numbers": {"live": LIVE},
    }
    data.update(overrides)
    return data


def create(client, headers, **overrides):
    response = client.post(BASE, json=template_json(**overrides), headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def add_number(app, project_id, number, environment):
    with app.app_context():
        add_sender(get_state(app), project_id, number, environment)
