"""Secrets at rest: API keys kept only as hashes, Twilio Auth Tokens encrypted.

Auth Tokens are encrypted with Fernet under the keys of ``POLYSMS_ENCRYPTION_KEYS`` through
``MultiFernet``: the first key encrypts, every key decrypts, so keys rotate (``flask polysms
rotate-keys`` re-encrypts the stored tokens with the first). Without that setting, in debug and
testing only, the key is derived from ``POLYSMS_SECRET_KEY`` as 0.1 derived it; when the setting is
present, that derivation stays a decrypt-only key (``POLYSMS_DECRYPT_WITH_SECRET_KEY``, on by
default) so the tokens a 0.1 deployment stored still open until they are rotated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("flask_polysms.crypto")

API_KEY_PREFIX = "pk_"


def new_api_key() -> str:
    """A fresh API key: 32 random bytes, URL-safe. Shown once; only its hash is stored."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The stored form of an API key.

    A fast hash is enough: keys carry 256 random bits, so there is nothing to brute-force, and the
    lookup is by hash so no comparison of secrets happens in Python.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_prefix(key: str) -> str:
    """The visible beginning of a key, to tell keys apart in listings."""
    return key[:8]


def constant_time_equal(a: str, b: str) -> bool:
    """Compare two secrets without leaking where they differ."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


# -- keys -----------------------------------------------------------------------------------------
#: Strings found as secret keys in tutorials, templates and examples: a key derived from one of them
#: (SHA-256, or 0.1's HKDF) is as good as published.
WELL_KNOWN_SECRETS = (
    "",
    "secret",
    "secret-key",
    "secret_key",
    "secretkey",
    "my-secret-key",
    "mysecretkey",
    "your-secret-key",
    "your_secret_key",
    "supersecret",
    "super-secret",
    "super-secret-key",
    "s3cr3t",
    "changeme",
    "change-me",
    "change_me",
    "password",
    "dev",
    "development",
    "test",
    "testing",
    "test-secret-key",
    "debug",
    "default",
    "key",
    "flask",
    "polysms",
    "flask-polysms",
    "admin",
    "12345678",
    "1234567890",
)


def _hkdf_key(secret: bytes) -> bytes:
    """0.1's derivation: HKDF-SHA256 of the secret, fixed salt and info, as a Fernet key."""
    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"flask-polysms", info=b"twilio-auth-token"
    ).derive(secret)
    return base64.urlsafe_b64encode(raw)


def derived_keys(secret: str | bytes) -> list[bytes]:
    """The Fernet keys derived from a secret key: first the one this version derives, then, for a
    ``bytes`` secret that is not UTF-8, the one 0.1 derived after decoding it lossily (U+FFFD
    for each bad byte), so tokens 0.1 stored under such a secret still open."""
    if isinstance(secret, str):
        return [_hkdf_key(secret.encode("utf-8"))]
    keys = [_hkdf_key(secret)]
    lossy = secret.decode("utf-8", "replace").encode("utf-8")
    if lossy != secret:
        keys.append(_hkdf_key(lossy))
    return keys


def _well_known_keys() -> frozenset[bytes]:
    found: set[bytes] = set()
    for text in WELL_KNOWN_SECRETS:
        data = text.encode("utf-8")
        found.add(base64.urlsafe_b64encode(hashlib.sha256(data).digest()))
        found.add(_hkdf_key(data))
    return frozenset(found)


_WELL_KNOWN_KEYS = _well_known_keys()


class KeyProblem(ValueError):
    """A Fernet key is unusable (``malformed``) or unsafe (``weak``); the message says why and never
    repeats the key."""

    def __init__(self, reason: str, *, weak: bool) -> None:
        super().__init__(reason)
        self.weak = weak


def check_fernet_key(key: str | bytes, *, allow_weak: bool = False) -> bytes:
    """The key as Fernet takes it, after checking that it is 32 random bytes, URL-safe base64.

    Raises :class:`KeyProblem`: ``weak=False`` when it is not a Fernet key at all, ``weak=True``
    when it is one but not random (few distinct bytes, all printable text, or derived from a
    well-known string) and ``allow_weak`` is false (debug and testing allow it)."""
    if isinstance(key, bytes):
        try:
            text = key.decode("ascii")
        except UnicodeDecodeError:
            raise KeyProblem("is not ASCII (a Fernet key is URL-safe base64)", weak=False) from None
    elif isinstance(key, str):
        text = key
    else:
        raise KeyProblem(f"is a {type(key).__name__}, not a string", weak=False)
    text = text.strip()
    try:
        raw = base64.b64decode(text.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyProblem("is not URL-safe base64", weak=False) from None
    if len(raw) != 32:
        raise KeyProblem(f"decodes to {len(raw)} bytes, not 32", weak=False)
    encoded = base64.urlsafe_b64encode(raw)
    if not allow_weak:
        weakness = _weakness(raw, encoded)
        if weakness:
            raise KeyProblem(weakness, weak=True)
    return encoded


def _weakness(raw: bytes, encoded: bytes) -> str | None:
    # Thresholds no random key comes near: 32 random bytes have ~30 distinct values, and are all
    # printable with odds of (95/256)**32, about 1e-14.
    if len(set(raw)) < 16:
        return "is not random: too few distinct bytes"
    if all(0x20 <= b < 0x7F for b in raw):
        return "is printable text, not random bytes (a password encoded as base64?)"
    if encoded in _WELL_KNOWN_KEYS:
        return "is derived from a well-known string: anyone can compute it"
    return None


def parse_keys(value: Any) -> list[str | bytes]:
    """``POLYSMS_ENCRYPTION_KEYS`` as a list: a list or tuple of keys, or one string of keys
    separated by commas (as an environment variable holds them). None is no keys."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, bytes):
        return [part.strip() for part in value.split(b",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"a list of keys or a comma-separated string, not a {type(value).__name__}")


# -- the cipher -----------------------------------------------------------------------------------
class TokenCipher:
    """Encrypts Twilio Auth Tokens with the first key and decrypts with any key.

    ``keys``: Fernet keys, the first encrypts (``POLYSMS_ENCRYPTION_KEYS``, or the key derived
    from the secret key in debug and testing). ``decrypt_only``: keys that only decrypt (0.1's
    derivation from the secret key), tried after ``keys``.
    """

    DECRYPTED_CACHE = 1024

    def __init__(self, keys: Sequence[str | bytes], decrypt_only: Sequence[str | bytes] = ()):
        if not keys:
            raise ValueError("TokenCipher needs at least one key")
        self._first = Fernet(keys[0])
        self._current = MultiFernet([Fernet(k) for k in keys])
        # Every key, for reading: a token under a decrypt-only key opens, and rotates.
        self._every = MultiFernet([Fernet(k) for k in (*keys, *decrypt_only)])
        self._has_decrypt_only = bool(decrypt_only)
        self._warned_decrypt_only = False
        # Every webhook and every send decrypts its project's token: a Fernet decryption (HMAC
        # check, AES, base64) per request for the same few values. Kept in this process only.
        self._decrypted: dict[str, str] = {}

    def encrypt(self, token: str) -> str:
        """The token encrypted with the first key (a Fernet token, ASCII)."""
        return self._current.encrypt(token.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """The plain token; raises ValueError when no key opens it."""
        found = self._decrypted.get(ciphertext)
        if found is not None:
            return found
        data = ciphertext.encode("ascii")
        try:
            plain = self._current.decrypt(data).decode("utf-8")
        except InvalidToken:
            plain = self._decrypt_only(data)
        if len(self._decrypted) >= self.DECRYPTED_CACHE:
            self._decrypted.clear()
        self._decrypted[ciphertext] = plain
        return plain

    def _decrypt_only(self, data: bytes) -> str:
        try:
            if not self._has_decrypt_only:
                raise InvalidToken
            plain = self._every.decrypt(data).decode("utf-8")
        except InvalidToken as exc:
            raise ValueError(
                "the Twilio Auth Token cannot be decrypted with any key of "
                "POLYSMS_ENCRYPTION_KEYS (or the key derived from POLYSMS_SECRET_KEY): the key "
                "it was stored under is gone; put it back in the list, or run `flask polysms "
                "connect-twilio` again"
            ) from exc
        if not self._warned_decrypt_only:
            self._warned_decrypt_only = True
            log.warning(
                "a Twilio Auth Token is still encrypted under the key derived from "
                "POLYSMS_SECRET_KEY: run `flask polysms rotate-keys`"
            )
        return plain

    def is_current(self, ciphertext: str) -> bool:
        """Whether the first key encrypted ``ciphertext`` (no rotation needed)."""
        try:
            self._first.decrypt(ciphertext.encode("ascii"))
        except InvalidToken:
            return False
        return True

    def rotate(self, ciphertext: str) -> str | None:
        """``ciphertext`` re-encrypted with the first key, or None when it is already under it.
        Raises ValueError when no key opens it."""
        if self.is_current(ciphertext):
            return None
        try:
            return self._every.rotate(ciphertext.encode("ascii")).decode("ascii")
        except InvalidToken as exc:
            raise ValueError("no key of POLYSMS_ENCRYPTION_KEYS decrypts it") from exc


def build_cipher(
    encryption_keys: Sequence[str | bytes],
    secret: str | bytes | None,
    *,
    decrypt_with_secret: bool = True,
) -> TokenCipher:
    """The cipher of an app's settings: the ``POLYSMS_ENCRYPTION_KEYS`` (checked already), with
    the secret key's derivation as a decrypt-only key when ``decrypt_with_secret``; without
    encryption keys (debug and testing only), the derivation encrypts."""
    legacy = derived_keys(secret) if secret else []
    if encryption_keys:
        return TokenCipher(encryption_keys, legacy if decrypt_with_secret else ())
    if not legacy:
        raise ValueError("no POLYSMS_ENCRYPTION_KEYS and no secret key to derive one from")
    return TokenCipher(legacy[:1], legacy[1:])


# -- rotation -------------------------------------------------------------------------------------
@dataclass
class Rotation:
    """What :func:`rotate_stored_tokens` did."""

    rotated: int = 0  # re-encrypted with the first key
    current: int = 0  # under the first key already
    #: Projects whose token no key decrypts (left as they are).
    unreadable: list[str] = field(default_factory=list)


def rotate_stored_tokens(store: Any, cipher: TokenCipher) -> Rotation:
    """Re-encrypt every stored Twilio Auth Token with the cipher's first key.

    Idempotent: tokens under the first key are left untouched, so a second run changes nothing.
    A token changed meanwhile (``connect-twilio``) is not overwritten: the store's
    compare-and-set keeps the newer value, encrypted with the first key anyway.
    """
    return _rotate(store.list_encrypted_auth_tokens(), store.replace_auth_token, cipher)


def rotate_stored_webhook_secrets(store: Any, cipher: TokenCipher) -> Rotation:
    """Re-encrypt every stored webhook subscription secret with the cipher's first key, as
    :func:`rotate_stored_tokens` does for Auth Tokens (``unreadable`` names subscriptions)."""
    return _rotate(store.list_encrypted_webhook_secrets(), store.replace_webhook_secret, cipher)


def _rotate(
    stored: Sequence[tuple[str, str]], replace: Callable[[str, str, str], bool], cipher: TokenCipher
) -> Rotation:
    result = Rotation()
    for owner_id, ciphertext in stored:
        try:
            rotated = cipher.rotate(ciphertext)
        except ValueError:
            result.unreadable.append(owner_id)
            continue
        if rotated is None:
            result.current += 1
        elif replace(owner_id, ciphertext, rotated):
            result.rotated += 1
        else:
            result.current += 1  # replaced meanwhile, under the first key
    return result
