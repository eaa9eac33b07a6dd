"""pytest plugin (entry point ``pytest11``): ready fixtures for a host app's SMS tests.

The fixtures build on the host suite's own ``app`` fixture (the usual pytest-flask convention):

- ``twilio_emulator``: a started local Twilio Messages API, stopped after the test;
- ``polysms_tenant``: ``provision(app)``, with ``.headers`` for the test client;
- ``sms_phone``: a user's phone that sends signed inbound SMS to the tenant's first number.

Every pytest run with the package installed loads this module, so it imports the package only
inside the fixtures: a suite that never uses them pays nothing at start.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import Provisioned

DEFAULT_USER_NUMBER = "+14155552672"
#: Numbers ``polysms_tenant`` provisions from: valid US numbers of the fictional 555-01xx range.
TENANT_NUMBERS = tuple(f"+1415555{n:04d}" for n in range(100, 200))


class Phone:
    """A user's phone: ``send("YES")`` posts a signed inbound webhook, as Twilio would."""

    def __init__(self, app, tenant: Provisioned, number: str = DEFAULT_USER_NUMBER) -> None:
        self.app = app
        self.tenant = tenant
        self.number = number
        self._sids = itertools.count(1)

    def webhook_url(self) -> str:
        """The URL Twilio would call and sign: the app's configured public URL, else the one the
        test client uses (``PREFERRED_URL_SCHEME``, ``SERVER_NAME``, ``APPLICATION_ROOT``)."""
        from .services.state import get_state

        settings = get_state(self.app).settings
        config = self.app.config
        base = settings.public_url or (
            f"{config.get('PREFERRED_URL_SCHEME') or 'http'}://"
            f"{config.get('SERVER_NAME') or 'localhost'}"
            f"{(config.get('APPLICATION_ROOT') or '/').rstrip('/')}"
        )
        return f"{base}{settings.url_prefix}/v1/twilio/sms"

    def send(self, body: str, *, to: str | None = None, **extra: str):
        """Post one inbound SMS; returns the response (200 with empty TwiML when accepted)."""
        from .services.state import get_state
        from .testing import sign_twilio_request

        params = {
            "MessageSid": f"SM{id(self) & 0xFFFF:04x}{next(self._sids):028x}",
            "AccountSid": self.tenant.twilio_account_sid,
            "From": self.number,
            "To": to or self.tenant.numbers[0],
            "Body": body,
            **extra,
        }
        signature = sign_twilio_request(self.webhook_url(), params, self.tenant.twilio_auth_token)
        path = f"{get_state(self.app).settings.url_prefix}/v1/twilio/sms"
        return self.app.test_client().post(
            path, data=params, headers={"X-Twilio-Signature": signature}
        )


@pytest.fixture
def twilio_emulator():
    """A running TwilioEmulator on 127.0.0.1 (a free port)."""
    from .testing import TwilioEmulator

    emulator = TwilioEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def polysms_tenant(app) -> Provisioned:
    """An account, project, number, connector and API key on the host suite's ``app``.

    The number is the first of :data:`TENANT_NUMBERS` not provisioned yet, so a suite whose
    ``app`` (and store) lives across tests gets a fresh tenant in each test.
    """
    from .services.state import get_state
    from .testing import provision

    with app.app_context():
        store = get_state(app).store
        number = next((n for n in TENANT_NUMBERS if store.get_sender(n) is None), None)
    if number is None:
        raise RuntimeError(
            f"every polysms_tenant number is provisioned ({len(TENANT_NUMBERS)} tenants on one "
            "store): give each test a fresh app or store"
        )
    return provision(app, numbers=(number,))


@pytest.fixture
def sms_phone(app, polysms_tenant) -> Phone:
    """The phone of a user (+14155552672) writing to the tenant's first number."""
    return Phone(app, polysms_tenant)
