"""Pagination cursors as the API hands them out: encrypted, and bound to whoever received them.

A store pages by the id of the last row it returned
(:func:`flask_polysms.ports.store.check_cursor`).
The API never shows that id as it is: the cursor it hands out is a Fernet token (authenticated
encryption from ``cryptography``) of the id together with the list, the project and the
environment it was given for, under a key derived from the app's keys. So a cursor says nothing
to its holder (not even how many rows other projects have: nothing in it counts rows), and one
that was altered, made up, cut short, given to another project or environment, or given for
another list is refused with one and the same 400.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import InvalidInput

if TYPE_CHECKING:
    from ..config import Settings

#: The longest cursor accepted; ours are about 230 characters. Longer input is refused unread.
MAX_CURSOR_LENGTH = 512

_INFO = b"flask-polysms page cursor"
_INVALID = "invalid cursor: pass back the next_cursor of a page of this list, unchanged"


@dataclass(frozen=True)
class CursorScope:
    """Who a cursor was handed to: the list, and the project and environment it was read for."""

    listing: str
    project_id: str
    environment: str

    def _fields(self) -> dict[str, str]:
        return {"l": self.listing, "p": self.project_id, "e": self.environment}


def _secrets(settings: Settings) -> tuple[bytes, ...]:
    """The app's keys, the one that encrypts first: the Fernet keys of
    ``POLYSMS_ENCRYPTION_KEYS`` (a cursor sealed under a rotated-out key stays readable while
    that key is listed), else ``POLYSMS_SECRET_KEY`` or the app's ``SECRET_KEY`` (debug and
    testing only)."""
    if settings.encryption_keys:
        return tuple(bytes(key) for key in settings.encryption_keys)
    secret = settings.secret_key
    if not secret:
        return ()
    return (secret.encode() if isinstance(secret, str) else bytes(secret),)


@functools.lru_cache(maxsize=16)
def _fernet(secrets: tuple[bytes, ...]) -> MultiFernet:
    # A key of its own, derived per secret: a cursor key never encrypts anything else.
    keys = [
        Fernet(
            base64.urlsafe_b64encode(
                HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)
            )
        )
        for secret in secrets
    ]
    return MultiFernet(keys)


def _cipher(settings: Settings) -> MultiFernet:
    secrets = _secrets(settings)
    if not secrets:
        raise RuntimeError("no key to encrypt cursors with: set POLYSMS_ENCRYPTION_KEYS")
    return _fernet(secrets)


def seal_cursor(settings: Settings, scope: CursorScope, position: str | None) -> str | None:
    """The cursor to hand out for a store cursor (``position``); None stays None (last page)."""
    if position is None:
        return None
    plain = json.dumps({**scope._fields(), "a": position}, separators=(",", ":"))
    token = _cipher(settings).encrypt(plain.encode())
    return token.decode("ascii").rstrip("=")


def open_cursor(settings: Settings, scope: CursorScope, cursor: str | None) -> str | None:
    """The store cursor inside a cursor this scope was handed; None for no cursor.

    Raises :class:`~flask_polysms.errors.InvalidInput` (400), with the same words whatever the
    fault, for a cursor that is too long, not ours, altered, or handed to another scope.
    """
    if cursor is None or cursor == "":
        return None
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LENGTH or not cursor.isascii():
        raise _invalid()
    token = (cursor + "=" * (-len(cursor) % 4)).encode("ascii")
    try:
        # Only the one spelling we hand out: base64's unused low bits of the last character
        # would otherwise let an altered cursor through as the same token.
        if base64.urlsafe_b64encode(base64.urlsafe_b64decode(token)) != token:
            raise ValueError("not the canonical spelling")
        fields = json.loads(_cipher(settings).decrypt(token))
    except (InvalidToken, ValueError):
        raise _invalid() from None
    if not isinstance(fields, dict) or not isinstance(fields.get("a"), str):
        raise _invalid()
    if {k: fields.get(k) for k in ("l", "p", "e")} != scope._fields():
        raise _invalid()
    return fields["a"]


def _invalid() -> InvalidInput:
    return InvalidInput(_INVALID, errors={"cursor": ["not a cursor of this list"]})
