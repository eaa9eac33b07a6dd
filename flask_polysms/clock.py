"""The one clock: aware UTC time, read at call time so freezegun controls it in tests."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime for ``value`` (naive values are taken as UTC, as stored)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    if value.tzinfo is timezone.utc:  # already: the common case, without a copy
        return value
    return value.astimezone(timezone.utc)
