"""Webhook secrets and the encryption keys, on the database backends (SQLite, PostgreSQL,
MariaDB): ``flask polysms rotate-keys`` re-encrypts the secrets so the old key can go, and a
secret no key opens is logged as an error, retried, and named by ``rotate-keys``."""

from __future__ import annotations

import pytest
import store_backends
from cryptography.fernet import Fernet
from dashboard_webhooks_support import (
    AGENT,
    USER,
    deliveries,
    next_retry_at,
    receiver_fixture,  # noqa: F401
    subscribe,
    verified,
)
from store_backends import BACKENDS

from flask_polysms.services.state import get_state


# -- key rotation ---------------------------------------------------------------------------------
# Apps with other keys on one database: the database backends (a memory store is one app's).
@pytest.fixture(params=BACKENDS[1:])
def database_url(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


def test_rotate_keys_re_encrypts_the_secrets(make_sms, database_url, receiver):
    """After ``flask polysms rotate-keys`` under a new first key, the old key can go: deliveries
    are still signed with the secret shown at creation."""
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sms = make_sms(
        numbers=(AGENT,), POLYSMS_STORAGE_URL=database_url, POLYSMS_ENCRYPTION_KEYS=[old_key]
    )
    created = subscribe(sms, receiver.url, ["message.received"])
    get_state(sms.app).store.disconnect()

    rotating = make_sms(
        numbers=("+14155552679",),
        POLYSMS_STORAGE_URL=database_url,
        POLYSMS_ENCRYPTION_KEYS=[new_key, old_key],
    )
    first = rotating.app.test_cli_runner().invoke(args=["polysms", "rotate-keys"])
    assert first.exit_code == 0, first.output
    assert "1 webhook secret(s) re-encrypted with the first key, 0 already under it" in (
        first.output
    )
    again = rotating.app.test_cli_runner().invoke(args=["polysms", "rotate-keys"])
    assert "0 webhook secret(s) re-encrypted with the first key, 1 already under it" in (
        again.output
    )
    get_state(rotating.app).store.disconnect()

    after = make_sms(
        numbers=("+14155552678",),
        POLYSMS_STORAGE_URL=database_url,
        POLYSMS_ENCRYPTION_KEYS=[new_key],
    )
    after.tenant = sms.tenant
    after.inbound_ok(USER, "hello")
    (request,) = receiver.requests
    assert verified(request, created["secret"])["type"] == "message.received"
    get_state(after.app).store.disconnect()


def test_a_secret_no_key_opens_is_logged_as_an_error_and_retried(make_sms, database_url, receiver):
    sms = make_sms(
        numbers=(AGENT,),
        POLYSMS_STORAGE_URL=database_url,
        POLYSMS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
    )
    created = subscribe(sms, receiver.url, ["message.received"])
    get_state(sms.app).store.disconnect()
    other = make_sms(
        numbers=("+14155552679",),
        POLYSMS_STORAGE_URL=database_url,
        POLYSMS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
        # The Auth Token is under the lost key too: the webhook is taken unsigned here.
        POLYSMS_VALIDATE_SIGNATURES=False,
    )
    other.tenant = sms.tenant
    other.inbound_ok(USER, "hello")  # Twilio's webhook is answered as usual
    assert receiver.requests == []  # nothing unsigned ever leaves
    (attempt,) = deliveries(other, created["id"])
    assert attempt["status_code"] is None
    assert "cannot be decrypted" in attempt["error"]
    assert next_retry_at(other) is not None
    result = other.app.test_cli_runner().invoke(args=["polysms", "rotate-keys"])
    assert result.exit_code == 1
    assert created["id"] in result.output
    get_state(other.app).store.disconnect()
