"""Living in a host app: the host's CSRF protection and rate limiter leave our routes alone, and
our routes never silently take a URL the host serves (checked in ``init_app`` and, for routes the
host adds later, at the first request).

A host may turn on flask-wtf's ``CSRFProtect`` or Flask-Limiter's default limits for its whole
app, before or after ``init_app``. Our API authenticates with an API key and our webhooks with
Twilio's signature (neither uses a cookie, so CSRF does not apply), and Twilio must never be
rate limited by IP; the dashboard has CSRF protection of its own. So each of our blueprints is
exempted from the host's extensions, at ``init_app`` for those already there and, for those set
up later, before the first request they could see.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config import ConfigError

if TYPE_CHECKING:
    from flask import Blueprint, Flask

log = logging.getLogger("flask_polysms")

#: Our blueprints' names all start with this (flask-smorest's document blueprint included).
BLUEPRINT_PREFIX = "polysms"
#: The dashboard keeps the host's rate limits (its sign-in form benefits from them).
RATE_LIMITED_BLUEPRINTS = frozenset({"polysms_dashboard"})


def our_blueprints(app: Flask) -> list[Blueprint]:
    """The blueprints flask-polysms registered on ``app``."""
    return [bp for name, bp in app.blueprints.items() if name.startswith(BLUEPRINT_PREFIX)]


def is_our_endpoint(endpoint: str | None) -> bool:
    """True for an endpoint of one of our blueprints."""
    return bool(endpoint) and endpoint.startswith(BLUEPRINT_PREFIX)


class HostExtensions:
    """Exempts our blueprints from the host's ``CSRFProtect`` and Flask-Limiter instances."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._done: set[int] = set()  # id() of every host extension object already handled
        self._routes_checked = False

    def before_request(self) -> None:
        """Refuse URL clashes with routes the host added after ``init_app`` (once), then exempt
        our blueprints from host extensions set up since the last request."""
        if not self._routes_checked:
            # A factory that registers its blueprints after init_app (a common order) adds its
            # routes after the check init_app made; Flask allows none after the first request.
            state = self.app.extensions.get("polysms")
            try:
                refuse_url_clashes(self.app, state.settings.url_prefix if state else "")
            except ConfigError as clash:
                log.error("%s", clash)  # a host's catch-all error handler may hide the raise
                raise
            self._routes_checked = True
        self.exempt_all()

    def exempt_all(self) -> None:
        """Exempt our blueprints from every host extension not handled yet (cheap when none)."""
        app = self.app
        csrf = app.extensions.get("csrf")
        limiters = app.extensions.get("limiter") or ()
        if csrf is not None and id(csrf) not in self._done and hasattr(csrf, "exempt"):
            for bp in our_blueprints(app):
                csrf.exempt(bp)
            self._done.add(id(csrf))
        for limiter in list(limiters):
            if id(limiter) in self._done or not hasattr(limiter, "exempt"):
                continue
            for bp in our_blueprints(app):
                if bp.name not in RATE_LIMITED_BLUEPRINTS:
                    limiter.exempt(bp)
            self._done.add(id(limiter))


def install(app: Flask) -> None:
    """Exempt our blueprints now and, through a hook that runs before any extension set up
    later can check a request, from host extensions added after ``init_app``; the same hook
    refuses, at the first request, a clash with a host route added after ``init_app``."""
    host = HostExtensions(app)
    host.exempt_all()
    # Registered now, so it runs before the request hooks of extensions initialised later.
    app.before_request(host.before_request)


def refuse_url_clashes(app: Flask, url_prefix: str) -> None:
    """Raise ConfigError when one of our URLs (rule and method) is served by a host endpoint too.

    Werkzeug would route the URL to whichever rule it meets first and never say so.
    """
    served: dict[tuple[str, str], str] = {}
    for rule in app.url_map.iter_rules():
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            # "/dashboard" and "/dashboard/" are one URL to a person typing it.
            url = rule.rule.rstrip("/") or "/"
            served.setdefault((url, method), rule.endpoint)
            other = served[(url, method)]
            if other == rule.endpoint or is_our_endpoint(other) == is_our_endpoint(rule.endpoint):
                continue
            ours, theirs = (
                (other, rule.endpoint) if is_our_endpoint(other) else (rule.endpoint, other)
            )
            where = f"POLYSMS_URL_PREFIX (now {url_prefix!r}) to mount flask-polysms elsewhere"
            if ours.startswith("polysms_dashboard."):
                where = "POLYSMS_DASHBOARD_URL to mount the dashboard elsewhere"
            raise ConfigError(
                f"{method} {rule.rule} is served by the host's endpoint {theirs!r} and by "
                f"flask-polysms's {ours!r}: set {where}, or move the host's route"
            )


def alembic_include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """An Alembic ``include_name`` hook that keeps autogenerate away from our tables.

    A host app on the same database (Flask-Migrate, Alembic) would otherwise see our tables as
    absent from its models and generate ``drop_table`` for each. Pass it as
    ``Migrate(app, db, include_name=alembic_include_name)`` (or to ``context.configure``); it
    combines with a host's own filter by calling both. Our tables are those named with
    ``POLYSMS_TABLE_PREFIX`` (of the current app, else the default ``polysms_``).
    """
    prefix = _table_prefix()
    if type_ == "table":
        return not (name or "").startswith(prefix)
    table = (parent_names or {}).get("table_name")
    if table is not None:
        return not table.startswith(prefix)
    return True


def _table_prefix() -> str:
    from flask import current_app, has_app_context

    from ..config import DEFAULTS, ConfigVars

    if has_app_context():
        state = current_app.extensions.get("polysms")
        if state is not None:
            return state.settings.table_prefix
    return DEFAULTS[ConfigVars.TABLE_PREFIX]
