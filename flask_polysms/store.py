"""The Store port at the import path third-party backends were written against.

A backend registered under the entry-point group ``flask_polysms.backends`` subclasses ``Store``;
the port lives in :mod:`flask_polysms.ports.store`, and this module keeps its old address.
"""

from __future__ import annotations

from .ports.store import (
    Conflict,
    DashboardSignIn,
    NotFound,
    SchemaError,
    SchemaTooNew,
    SchemaUpgrade,
    SchemaVersion,
    SendClaim,
    StaleVersion,
    Store,
    StoreError,
    authorises,
    check_cursor,
    migration_number,
)

__all__ = [
    "Conflict",
    "DashboardSignIn",
    "NotFound",
    "SchemaError",
    "SchemaTooNew",
    "SchemaUpgrade",
    "SchemaVersion",
    "SendClaim",
    "StaleVersion",
    "Store",
    "StoreError",
    "authorises",
    "check_cursor",
    "migration_number",
]
