"""Twilio Auth Tokens at rest: ``POLYSMS_ENCRYPTION_KEYS`` (the first key encrypts, every key
decrypts), start-up refusal of missing, malformed and weak keys outside debug and testing, the
0.1 upgrade path (the ``SECRET_KEY`` derivation as a decrypt-only key) and
``flask polysms rotate-keys`` on every backend."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import uuid
from collections.abc import Iterator

import pytest
import store_backends
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask

from flask_polysms import PolySMS
from flask_polysms.config import ConfigError
from flask_polysms.crypto import TokenCipher
from flask_polysms.services.state import get_state
from flask_polysms.testing import provision, sign_twilio_request

PUBLIC_URL = "https://sms.example.com"
NUMBER = "+14155552671"
USER = "+14155552674"
TOKEN = "0123456789abcdef0123456789abcdef"

BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mysql", marks=pytest.mark.services),
]


def new_key() -> str:
    return Fernet.generate_key().decode()


def production_app(**config) -> Flask:
    """An app outside debug and testing, with everything else start-up requires."""
    app = Flask(f"polysms_keys_{uuid.uuid4().hex[:6]}")
    app.config.update(
        POLYSMS_PUBLIC_URL=PUBLIC_URL,
        POLYSMS_SCHEDULER="manual",
        POLYSMS_GATEWAY="outbox",
    )
    app.config.update(config)
    return app


def app_in_testing(**config) -> Flask:
    app = production_app(**config)
    app.testing = True
    return app


_started: list[Flask] = []


def started(app: Flask) -> Flask:
    PolySMS(app)
    _started.append(app)
    return app


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    """Give every database connection of the apps a test started back to its server."""
    yield
    while _started:
        get_state(_started.pop()).store.disconnect()


def v01_encrypt(secret: str, token: str) -> str:
    """A token as 0.1 stored it: Fernet under HKDF(secret) with its fixed salt and info."""
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"flask-polysms", info=b"twilio-auth-token"
    ).derive(secret.encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(key)).encrypt(token.encode()).decode()


def stored_token(app: Flask, project_id: str) -> str:
    with app.app_context():
        return get_state(app).store.get_project(project_id).twilio_auth_token_encrypted


def inbound(app: Flask, tenant, token: str):
    """A signed inbound webhook for the tenant's number, signed with ``token``."""
    params = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "AccountSid": tenant.twilio_account_sid,
        "From": USER,
        "To": tenant.numbers[0],
        "Body": "hello",
        "NumMedia": "0",
    }
    signature = sign_twilio_request(f"{PUBLIC_URL}/v1/twilio/sms", params, token)
    return app.test_client().post(
        "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
    )


# -- start-up checks -------------------------------------------------------------------------------
def test_outside_debug_and_testing_the_keys_are_required():
    app = production_app(SECRET_KEY="a long and random enough secret key for flask")
    with pytest.raises(ConfigError, match="POLYSMS_ENCRYPTION_KEYS must be set"):
        PolySMS(app)
    assert "polysms" not in app.extensions


def test_with_keys_outside_debug_and_testing_no_secret_key_is_needed():
    app = started(production_app(POLYSMS_ENCRYPTION_KEYS=[new_key()]))
    tenant = provision(app, numbers=(NUMBER,), twilio_auth_token=TOKEN)
    assert inbound(app, tenant, TOKEN).status_code == 200


@pytest.mark.parametrize("mode", ["testing", "debug"])
def test_debug_and_testing_fall_back_to_the_secret_key(mode):
    app = production_app(SECRET_KEY="dev")
    setattr(app, mode, True)
    started(app)
    tenant = provision(app, numbers=(NUMBER,), twilio_auth_token=TOKEN)
    # The same derivation as 0.1, so a developer's database keeps opening.
    assert stored_token(app, tenant.project_id)
    with app.app_context():
        cipher = get_state(app).cipher
    assert cipher.decrypt(v01_encrypt("dev", TOKEN)) == TOKEN


MALFORMED = [
    ("not base64 at all!", "POLYSMS_ENCRYPTION_KEYS[0] is not URL-safe base64"),
    (base64.urlsafe_b64encode(b"x" * 16).decode(), "decodes to 16 bytes, not 32"),
    (Fernet.generate_key().decode()[:-2], "is not URL-safe base64"),
    ("é" * 44, "is not URL-safe base64"),
    (b"\xff" * 44, "is not ASCII"),
    (42, "is a int"),
]


@pytest.mark.parametrize(("key", "message"), MALFORMED)
@pytest.mark.parametrize("factory", [production_app, app_in_testing])
def test_a_malformed_key_is_refused_naming_it_and_never_showing_it(factory, key, message):
    app = factory(SECRET_KEY="dev", POLYSMS_ENCRYPTION_KEYS=[key])
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        PolySMS(app)
    assert "POLYSMS_ENCRYPTION_KEYS[0]" in str(raised.value)
    if isinstance(key, str) and len(key) > 4:
        assert key not in str(raised.value)


def test_the_position_of_a_bad_key_is_named():
    app = production_app(POLYSMS_ENCRYPTION_KEYS=[new_key(), "nope"])
    with pytest.raises(ConfigError, match=r"POLYSMS_ENCRYPTION_KEYS\[1\]"):
        PolySMS(app)


def _hkdf_key(secret: str) -> str:
    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"flask-polysms", info=b"twilio-auth-token"
    ).derive(secret.encode())
    return base64.urlsafe_b64encode(raw).decode()


WEAK = {
    "zero bytes": base64.urlsafe_b64encode(bytes(32)).decode(),
    "a repeated pattern": base64.urlsafe_b64encode(b"\x01\x02\x03\x04" * 8).decode(),
    "a password as base64": base64.urlsafe_b64encode(b"correct horse battery staple!!!!").decode(),
    "sha256 of changeme": base64.urlsafe_b64encode(hashlib.sha256(b"changeme").digest()).decode(),
    "0.1's derivation of 'secret'": _hkdf_key("secret"),
    "0.1's derivation of 'dev'": _hkdf_key("dev"),
}


@pytest.mark.parametrize("key", WEAK.values(), ids=WEAK.keys())
def test_a_weak_or_well_known_key_is_refused_outside_debug_and_testing(key):
    app = production_app(POLYSMS_ENCRYPTION_KEYS=[new_key(), key])
    with pytest.raises(ConfigError, match=r"POLYSMS_ENCRYPTION_KEYS\[1\] is ") as raised:
        PolySMS(app)
    assert key not in str(raised.value)
    # Tests and debugging may use fixed keys.
    assert started(app_in_testing(POLYSMS_ENCRYPTION_KEYS=[new_key(), key]))


def test_keys_as_a_comma_separated_string_as_bytes_and_in_a_tuple():
    first, second = new_key(), new_key()
    for value in (f" {first} , {second} ,", (first.encode(), second), f"{first}"):
        app = started(production_app(POLYSMS_ENCRYPTION_KEYS=value))
        tenant = provision(app, numbers=(NUMBER,), twilio_auth_token=TOKEN)
        ciphertext = stored_token(app, tenant.project_id)
        assert Fernet(first).decrypt(ciphertext.encode()).decode() == TOKEN


def test_a_value_of_another_type_is_refused():
    with pytest.raises(ConfigError, match="POLYSMS_ENCRYPTION_KEYS must be a list of keys"):
        PolySMS(production_app(POLYSMS_ENCRYPTION_KEYS={"key": new_key()}))


# -- the first key encrypts, every key decrypts ---------------------------------------------------
def test_the_first_key_encrypts_and_every_key_decrypts():
    old, new = new_key(), new_key()
    before = started(production_app(POLYSMS_ENCRYPTION_KEYS=[old]))
    tenant = provision(before, numbers=(NUMBER,), twilio_auth_token=TOKEN)
    under_old = stored_token(before, tenant.project_id)
    with pytest.raises(InvalidToken):
        Fernet(new).decrypt(under_old.encode())
    cipher = TokenCipher([new, old])
    assert cipher.decrypt(under_old) == TOKEN
    under_new = cipher.encrypt(TOKEN)
    assert Fernet(new).decrypt(under_new.encode()).decode() == TOKEN
    with pytest.raises(InvalidToken):
        Fernet(old).decrypt(under_new.encode())
    with pytest.raises(ValueError, match="cannot be decrypted with any key"):
        TokenCipher([new]).decrypt(under_old)


def test_a_non_utf8_bytes_secret_key_is_used_whole():
    """0.1 decoded a bytes SECRET_KEY with errors replaced: two different random byte strings
    gave the same key. Now the bytes are used as they are."""
    one = started(app_in_testing(SECRET_KEY=b"\xff\xfe" * 16))
    other = started(app_in_testing(SECRET_KEY=b"\xfe\xff" * 16))
    with one.app_context():
        ciphertext = get_state(one).cipher.encrypt(TOKEN)
    with other.app_context(), pytest.raises(ValueError):
        get_state(other).cipher.decrypt(ciphertext)


def test_tokens_0_1_stored_under_a_non_utf8_bytes_secret_still_open():
    secret = b"\xff\xfe" * 16
    lossy = secret.decode("utf-8", "replace")
    app = started(production_app(SECRET_KEY=secret, POLYSMS_ENCRYPTION_KEYS=[new_key()]))
    with app.app_context():
        assert get_state(app).cipher.decrypt(v01_encrypt(lossy, TOKEN)) == TOKEN


# -- upgrading a 0.1 deployment -------------------------------------------------------------------
SECRET = "the 0.1 deployment's SECRET_KEY, long and random-looking 7f3a"


def _v01_deployment(storage_url: str, **config) -> tuple[Flask, object]:
    """The app after the upgrade: POLYSMS_ENCRYPTION_KEYS set, SECRET_KEY as before, and a
    project whose token 0.1 encrypted under the SECRET_KEY derivation."""
    app = started(
        production_app(
            SECRET_KEY=SECRET,
            POLYSMS_STORAGE_URL=storage_url,
            POLYSMS_ENCRYPTION_KEYS=[new_key()],
            **config,
        )
    )
    tenant = provision(app, numbers=(NUMBER,), twilio_auth_token=TOKEN)
    with app.app_context():
        get_state(app).store.update_project(
            tenant.project_id, twilio_auth_token_encrypted=v01_encrypt(SECRET, TOKEN)
        )
    return app, tenant


def test_after_the_upgrade_tokens_0_1_stored_still_open(caplog):
    app, tenant = _v01_deployment("memory://")
    caplog.set_level(logging.WARNING, "flask_polysms.crypto")
    assert inbound(app, tenant, TOKEN).status_code == 200
    assert inbound(app, tenant, TOKEN).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "flask_polysms.crypto"]
    assert warnings == [
        "a Twilio Auth Token is still encrypted under the key derived from POLYSMS_SECRET_KEY: "
        "run `flask polysms rotate-keys`"
    ]


def test_the_secret_key_derivation_can_be_turned_off():
    app, tenant = _v01_deployment("memory://", POLYSMS_DECRYPT_WITH_SECRET_KEY=False)
    # An operator error (the key is missing), answered 500 so that Twilio retries once it is
    # fixed; not a 403 as for a forged request.
    assert inbound(app, tenant, TOKEN).status_code == 500


def test_rotation_ends_the_need_for_the_secret_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'upgrade.db'}"
    app, tenant = _v01_deployment(url)
    keys = app.config["POLYSMS_ENCRYPTION_KEYS"]
    result = app.test_cli_runner().invoke(args=["polysms", "rotate-keys"])
    assert result.exit_code == 0, result.output
    assert "1 Twilio Auth Token(s) re-encrypted with the first key, 0 already under it" in (
        result.output
    )
    # The same database, without SECRET_KEY and without the derivation: the token opens.
    after = started(production_app(POLYSMS_STORAGE_URL=url, POLYSMS_ENCRYPTION_KEYS=keys))
    assert inbound(after, tenant, TOKEN).status_code == 200


# -- rotate-keys on every backend ------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path) -> str:
    """An empty, up-to-date store (the default table prefix; the servers' test database)."""
    return store_backends.storage_url(request, request.param, tmp_path)


def test_rotate_keys_re_encrypts_every_token_once(storage_url):
    old, new = new_key(), new_key()
    before = started(production_app(POLYSMS_STORAGE_URL=storage_url, POLYSMS_ENCRYPTION_KEYS=old))
    tenants = [
        provision(before, numbers=(number,), twilio_auth_token=f"{TOKEN[:-1]}{n}")
        for n, number in enumerate(("+14155552671", "+14155552672", "+14155552673"))
    ]
    without = provision(before, numbers=("+14155552675",))
    with before.app_context():  # a project without Twilio credentials
        get_state(before).store.update_project(without.project_id, twilio_auth_token_encrypted=None)
    if storage_url == "memory://":
        app = before  # one process: the same store, the keys changed by a restart of the app
        get_state(app).cipher = TokenCipher([new, old])
    else:
        app = started(
            production_app(POLYSMS_STORAGE_URL=storage_url, POLYSMS_ENCRYPTION_KEYS=[new, old])
        )
    runner = app.test_cli_runner()

    first = runner.invoke(args=["polysms", "rotate-keys"])
    second = runner.invoke(args=["polysms", "rotate-keys"])

    assert first.exit_code == 0, first.output
    assert "3 Twilio Auth Token(s) re-encrypted with the first key, 0 already" in first.output
    assert second.exit_code == 0, second.output
    assert "0 Twilio Auth Token(s) re-encrypted with the first key, 3 already" in second.output
    with app.app_context():
        tokens = dict(get_state(app).store.list_encrypted_auth_tokens())
    assert set(tokens) == {t.project_id for t in tenants}
    for ciphertext in tokens.values():
        Fernet(new).decrypt(ciphertext.encode())  # under the first key now
        with pytest.raises(InvalidToken):
            Fernet(old).decrypt(ciphertext.encode())
    for tenant in tenants:
        assert TokenCipher([new]).decrypt(tokens[tenant.project_id]) == tenant.twilio_auth_token


def test_rotate_keys_reports_tokens_no_key_opens(storage_url):
    lost, kept = new_key(), new_key()
    app = started(production_app(POLYSMS_STORAGE_URL=storage_url, POLYSMS_ENCRYPTION_KEYS=lost))
    orphan = provision(app, numbers=(NUMBER,), twilio_auth_token=TOKEN)
    get_state(app).cipher = TokenCipher([kept])
    provision(app, numbers=("+14155552673",), twilio_auth_token=TOKEN)

    result = app.test_cli_runner().invoke(args=["polysms", "rotate-keys"])

    assert result.exit_code == 1
    assert "0 Twilio Auth Token(s) re-encrypted with the first key, 1 already" in result.output
    assert (
        f"1 token(s) open with no key of POLYSMS_ENCRYPTION_KEYS (projects {orphan.project_id})"
        in result.output
    )
    # Left as it was: the operator may still find the key.
    assert Fernet(lost).decrypt(stored_token(app, orphan.project_id).encode()).decode() == TOKEN


def test_replace_auth_token_is_a_compare_and_set(storage_url):
    app = started(
        production_app(POLYSMS_STORAGE_URL=storage_url, POLYSMS_ENCRYPTION_KEYS=new_key())
    )
    tenant = provision(app, numbers=(NUMBER,), twilio_auth_token=TOKEN)
    with app.app_context():
        store = get_state(app).store
        current = store.get_project(tenant.project_id).twilio_auth_token_encrypted
        assert not store.replace_auth_token(tenant.project_id, "not-the-stored-one", "x")
        assert not store.replace_auth_token("prj_unknown", current, "x")
        assert store.get_project(tenant.project_id).twilio_auth_token_encrypted == current
        assert store.replace_auth_token(tenant.project_id, current, "replaced")
        assert not store.replace_auth_token(tenant.project_id, current, "again")
        assert store.get_project(tenant.project_id).twilio_auth_token_encrypted == "replaced"
        assert store.list_encrypted_auth_tokens() == [(tenant.project_id, "replaced")]
