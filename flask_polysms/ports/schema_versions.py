"""Where a database's schema stands among the shipped migrations, and why it cannot be upgraded."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .store_errors import StoreError


def migration_number(name: str) -> int:
    """The number a migration's name starts with (``0002_dashboard_sign_in`` -> 2)."""
    digits = re.match(r"\d+", name)
    return int(digits.group()) if digits else -1


@dataclass(frozen=True)
class SchemaVersion:
    """Where a database's schema stands among the migrations this version of flask-polysms ships.

    ``applied``: recorded in the database's migration history. ``unrecorded``: found in the
    database without a history row (a database made by 0.1.0, which kept no history); the next
    upgrade records them without running them. ``pending``: known here, not applied yet.
    ``unknown``: recorded in the history but not shipped here (a newer flask-polysms applied them).
    ``latest``: the newest migration shipped here.
    """

    applied: tuple[str, ...]
    unrecorded: tuple[str, ...]
    pending: tuple[str, ...]
    unknown: tuple[str, ...]
    latest: str | None

    @property
    def current(self) -> str | None:
        """The highest-numbered migration the database has (recorded or found), None if none."""
        names = (*self.applied, *self.unrecorded, *self.unknown)
        return max(names, key=migration_number, default=None)

    @property
    def up_to_date(self) -> bool:
        """Whether the database has exactly the migrations shipped here, all recorded."""
        return not (self.pending or self.unknown or self.unrecorded)


@dataclass(frozen=True)
class SchemaUpgrade:
    """What an upgrade did: migrations ``recorded`` without running (their tables were there
    already, made by a version that kept no history), then migrations ``applied``."""

    recorded: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()


class SchemaError(StoreError):
    """The database's schema cannot be brought up to date by this version (the message says why
    and what to do)."""


class SchemaTooNew(SchemaError):
    """The database holds migrations this version of flask-polysms does not know: a newer
    version upgraded it. This version refuses to run on it, and never downgrades it."""

    def __init__(self, version: SchemaVersion) -> None:
        self.version = version
        newest = max(version.unknown, key=migration_number, default="")
        known = (
            f"version {migration_number(version.latest)}, {version.latest}"
            if version.latest
            else "no migration"
        )
        if version.latest is None or migration_number(newest) > migration_number(version.latest):
            what = (
                f"the database schema is at version {migration_number(newest)} ({newest}), newer "
                f"than this flask-polysms knows (up to {known})"
            )
        else:
            what = (
                f"the database's migration history holds {', '.join(version.unknown)}, which this "
                f"flask-polysms (up to {known}) does not ship"
            )
        super().__init__(
            f"{what}: run the flask-polysms release that applied "
            f"{', '.join(version.unknown)}, or a later one; `flask polysms db upgrade` of this "
            "release never downgrades a schema"
        )
