"""The errors a Store raises, whatever its backend."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the errors a Store raises."""


class Conflict(StoreError):
    """A unique value (sender address, template title, ...) is taken already."""


class NotFound(StoreError):
    """The record to change does not exist."""


class StaleVersion(StoreError):
    """A compare-and-set update lost: the record changed since it was read."""
