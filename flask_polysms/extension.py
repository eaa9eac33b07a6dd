"""The Flask extension object and the per-app state it keeps in ``app.extensions["polysms"]``."""

from __future__ import annotations

import logging
import os
import weakref

from flask import Flask, current_app, has_app_context

from .config import ConfigError, Settings, load_settings
from .crypto import build_cipher
from .errors import NotConfigured
from .jobs import run_job_in_app
from .ports.gateways import create_gateway
from .ports.schedulers import Scheduler, create_scheduler
from .ports.store import Store
from .services.job_ids import SWEEP_JOB
from .services.state import EXTENSION_KEY, AgentFunc, PolySMSState, get_state
from .services.webhook_delivery import WebhookForwarder

__all__ = ["PolySMS", "PolySMSState", "get_state"]

log = logging.getLogger("flask_polysms")


def _in_instance_folder(app: Flask, url: str) -> str:
    """A relative SQLite path is taken inside the app's instance folder (created if needed), as
    Flask-SQLAlchemy does, rather than in whatever the working directory happens to be."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path, _, query = url[len(prefix) :].partition("?")
    if not path or path == ":memory:" or os.path.isabs(path):
        return url
    os.makedirs(app.instance_path, exist_ok=True)
    absolute = os.path.join(app.instance_path, path)
    return prefix + absolute + (f"?{query}" if query else "")


def _refuse_newer_schema(store: Store) -> None:
    """Raise SchemaTooNew when a newer flask-polysms upgraded the server database (one read of
    the migration history). An unreachable database is left to the readiness probe, as before;
    the connection is closed again, so none is inherited by forked workers."""
    try:
        store.check_schema()
    except store.unavailable_errors as exc:
        log.warning("schema version not checked at start-up: %s", type(exc).__name__)
    finally:
        store.disconnect()


class PolySMS:
    """SMS conversations for a Flask app: ``PolySMS(app)`` or ``polysms.init_app(app)``.

    One object may serve several apps; each app's state lives in ``app.extensions["polysms"]``.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self.agent_func: AgentFunc | None = None
        # The apps this object serves, held weakly (an extension never keeps its app alive): the
        # test helpers use the only one when they are called outside an app context.
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the config, build the store, gateway and scheduler, mount the routes."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "flask-polysms is already initialised on this app: call init_app once per app"
            )
        from .backends import create_store

        settings = load_settings(app.config, testing=app.testing, debug=app.debug)
        if settings.public_url is None and not (app.debug or app.testing):
            # Without it, status callbacks and signature checks would have to trust the Host
            # header of whoever calls, and a forged one would receive the users' delivery data.
            raise ConfigError(
                "set POLYSMS_PUBLIC_URL (the public origin Twilio calls, e.g. "
                "https://sms.example.com) or Flask's SERVER_NAME: flask-polysms never builds "
                "status-callback or signature URLs from a request's Host header"
            )
        store = create_store(
            _in_instance_folder(app, settings.storage_url), table_prefix=settings.table_prefix
        )
        if store.creates_schema_on_start:
            store.create_schema()  # migrations included; refuses a newer schema
        else:
            _refuse_newer_schema(store)
        state = PolySMSState(
            extension=self,
            app=app,
            settings=settings,
            store=store,
            gateway=create_gateway(
                settings.gateway,
                base_url=settings.twilio_base_url,
                timeout=settings.twilio_timeout,
            ),
            scheduler=create_scheduler(app, settings, run_job_in_app, SWEEP_JOB),
            cipher=build_cipher(
                settings.encryption_keys,
                settings.secret_key,
                decrypt_with_secret=settings.decrypt_with_secret_key,
            ),
            # The project's events to its webhook subscriptions (nothing for a project without).
            event_forwarder=WebhookForwarder(),
        )
        app.extensions[EXTENSION_KEY] = state
        self._apps.add(app)
        self._warn_unsafe_defaults(app, settings)

        from .cli import polysms_cli
        from .web import hosting
        from .web.api import register_api

        # flask-smorest adds its own `flask openapi` command: a host's own stays the host's.
        host_openapi_command = app.cli.commands.get("openapi")
        register_api(app, state)
        if host_openapi_command is not None:
            app.cli.add_command(host_openapi_command)
        app.cli.add_command(polysms_cli)

        @app.teardown_appcontext
        def _close_store(exc: BaseException | None) -> None:
            state.store.close()

        if type(state.scheduler).start is not Scheduler.start and not app.testing:

            @app.before_request
            def _start_background_work() -> None:
                # The thread scheduler's loop (and its periodic sweep) runs in the serving process
                # only, started by its first request (after a fork, in the child); a testing app's
                # requests never start one.
                state.scheduler.start()

        if settings.dashboard:
            from .web.dashboard import register_dashboard

            register_dashboard(app, state)
        hosting.refuse_url_clashes(app, settings.url_prefix)
        hosting.install(app)

    @staticmethod
    def _warn_unsafe_defaults(app: Flask, settings: Settings) -> None:
        if app.testing or app.debug:
            return
        if settings.scheduler == "rq" and settings.rate_limit_storage_url.startswith("memory"):
            log.warning(
                "POLYSMS_RATE_LIMIT_STORAGE_URL is memory:// while POLYSMS_SCHEDULER is 'rq': "
                "each web process counts on its own, so N processes allow N times the limit"
            )
        if settings.storage_url.startswith("memory"):
            log.warning(
                "POLYSMS_STORAGE_URL is memory://: sessions, opt-outs and messages are lost when "
                "the process stops; use a database URL in production"
            )

    # -- the host app's hooks ---------------------------------------------------------------------
    def agent(self, func: AgentFunc) -> AgentFunc:
        """Register the agent: ``(conv, text) -> reply text or None``, run as a job per message."""
        self.agent_func = func
        return func

    # -- test helpers -----------------------------------------------------------------------------
    def _app(self) -> Flask:
        """The app a helper acts on: the current app, else the only app this object serves."""
        if has_app_context():
            return current_app._get_current_object()  # type: ignore[attr-defined]
        apps = list(self._apps)
        if len(apps) == 1:
            return apps[0]
        if not apps:
            raise NotConfigured(
                "flask-polysms serves no app yet: did you call polysms.init_app(app)?"
            )
        names = ", ".join(sorted(repr(app.name) for app in apps))
        raise NotConfigured(
            f"this PolySMS object serves {len(apps)} apps ({names}): push the one you mean, "
            "e.g. `with app.app_context(): polysms.run_due_timers()`"
        )

    @property
    def outbox(self) -> list[dict]:
        """With ``POLYSMS_GATEWAY="outbox"``: the messages handed to the gateway, oldest first.

        Works outside an app context when this object serves one app."""
        gateway = get_state(self._app()).gateway
        outbox = getattr(gateway, "outbox", None)
        if outbox is None:
            raise RuntimeError("polysms.outbox needs POLYSMS_GATEWAY = 'outbox'")
        return outbox

    def run_due_timers(self) -> int:
        """Fire every timer due at the current (possibly frozen) time; returns how many fired.

        Works outside an app context when this object serves one app (its context is pushed for
        the call)."""
        from .services.lifecycle import run_due_timers

        if has_app_context():
            return run_due_timers(get_state())
        app = self._app()
        with app.app_context():
            return run_due_timers(get_state(app))

    @property
    def store(self) -> Store:
        """The Store of the current app, else of the only app this object serves."""
        return get_state(self._app()).store
