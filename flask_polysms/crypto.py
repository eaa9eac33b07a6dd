"""Secrets at rest: API keys kept only as hashes, Twilio Auth Tokens encrypted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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


class TokenCipher:
    """Encrypts Twilio Auth Tokens with a key derived from POLYSMS_SECRET_KEY."""

    def __init__(self, secret: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"flask-polysms", info=b"twilio-auth-token"
        ).derive(secret.encode("utf-8"))
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        # Every webhook and every send decrypts its project's token: a Fernet decryption (HMAC
        # check, AES, base64) per request for the same few values. Kept in this process only.
        self._decrypted: dict[str, str] = {}

    DECRYPTED_CACHE = 1024

    def encrypt(self, token: str) -> str:
        return self._fernet.encrypt(token.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """The plain token; raises ValueError when the secret key changed since encryption."""
        found = self._decrypted.get(ciphertext)
        if found is not None:
            return found
        try:
            plain = self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise ValueError(
                "the Twilio Auth Token cannot be decrypted: POLYSMS_SECRET_KEY changed since it "
                "was stored; run `flask polysms connect-twilio` again"
            ) from exc
        if len(self._decrypted) >= self.DECRYPTED_CACHE:
            self._decrypted.clear()
        self._decrypted[ciphertext] = plain
        return plain
