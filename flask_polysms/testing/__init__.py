"""Helpers for the host app's own tests (public).

``provision`` sets up a whole tenant in one call, ``sign_twilio_request`` signs a webhook the way
Twilio does, and ``TwilioEmulator`` is the local Twilio Messages API.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flask import Flask
from twilio.request_validator import RequestValidator

from ..services import provisioning
from ..services.state import get_state
from ..services.tenancy import AUTH_HEADER, CONNECTOR_HEADER
from .emulator import TwilioEmulator

__all__ = ["Provisioned", "TwilioEmulator", "provision", "reset", "sign_twilio_request"]


@dataclass
class Provisioned:
    """What ``provision`` created; ``headers`` authenticate the test client."""

    account_id: str
    project_id: str
    connector_id: str
    api_key: str
    numbers: list[str]
    twilio_account_sid: str
    twilio_auth_token: str
    environment: str
    headers: dict[str, str] = field(default_factory=dict)


def provision(
    app: Flask,
    environment: str = "live",
    numbers: Iterable[str] = ("+14155550100",),
    twilio_account_sid: str | None = None,
    twilio_auth_token: str | None = None,
    *,
    account_id: str | None = None,
    project_name: str = "test project",
) -> Provisioned:
    """Create an account (or use ``account_id``), a project connected to Twilio, its numbers in
    ``environment``, a connector and an API key."""
    account_sid = twilio_account_sid or "AC" + secrets.token_hex(16)
    auth_token = twilio_auth_token or secrets.token_hex(16)
    with app.app_context():
        state = get_state(app)
        if account_id is None:
            account_id = provisioning.create_account(state, "test account").id
        project = provisioning.create_project(state, account_id, project_name)
        provisioning.connect_twilio(state, project.id, account_sid, auth_token)
        numbers = list(numbers)
        for number in numbers:
            provisioning.add_sender(state, project.id, number, environment)
        connector = provisioning.create_connector(state, project.id, environment)
        _, api_key = provisioning.create_api_key(state, account_id)
    return Provisioned(
        account_id=account_id,
        project_id=project.id,
        connector_id=connector.id,
        api_key=api_key,
        numbers=numbers,
        twilio_account_sid=account_sid,
        twilio_auth_token=auth_token,
        environment=provisioning.environment_name(environment),
        headers={AUTH_HEADER: api_key, CONNECTOR_HEADER: connector.id},
    )


def sign_twilio_request(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for a POST of ``params`` to ``url``."""
    return RequestValidator(auth_token).compute_signature(url, dict(params))


def reset(app: Flask) -> None:
    """Start a host suite's next test from nothing: every flask-polysms table emptied (dropped and
    created again at the latest schema), the outbox, the timers the ``manual`` scheduler keeps,
    and the rate-limit counters.

    For a suite whose ``app`` (and database) outlive one test, e.g. an autouse fixture calling
    ``reset(app)``; a fresh app per test needs nothing.
    """
    state = get_state(app)
    with app.app_context():
        state.store.drop_schema()
        state.store.create_schema()
    outbox = getattr(state.gateway, "outbox", None)
    if outbox is not None:
        outbox.clear()
    state.scheduler.forget_pending()
    state.inbound_limits = None  # built again, with empty counters, by the next webhook
    for limiter in (state.limiter, state.read_limiter):
        if limiter is not None:
            limiter.storage.reset()
