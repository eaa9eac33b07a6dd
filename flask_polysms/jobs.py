"""The jobs every scheduler runs, by name, inside the app context.

RQ imports ``run_job`` by its dotted path in the worker process; the worker command sets the app
with :func:`set_worker_app`. Each job re-reads what it needs from the Store, so a job that runs
twice (RQ can) or late does nothing wrong.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_app_context

from .services.job_ids import SWEEP_JOB

if TYPE_CHECKING:
    from .services.state import PolySMSState

log = logging.getLogger("flask_polysms.jobs")

_worker_app: Flask | None = None


def set_worker_app(app: Flask) -> None:
    """The app whose context RQ jobs run in (set by ``flask polysms worker``)."""
    global _worker_app
    _worker_app = app


def _handlers() -> dict[str, Any]:
    from .services import inbound, lifecycle, scheduled, sending, webhook_delivery

    return {
        "send": sending.send_job,
        "release": scheduled.release_job,
        "agent": inbound.agent_job,
        "wake": lifecycle.wake_job,
        "timer": lifecycle.wake_job,  # one session's wake-up, as 0.1.0 scheduled it: the same job
        SWEEP_JOB: lifecycle.sweep,
        webhook_delivery.EVENT_JOB: webhook_delivery.event_job,
        webhook_delivery.DELIVERY_JOB: webhook_delivery.delivery_job,
    }


def preload() -> None:
    """Import what jobs use, ahead of them. A forking worker starts a work horse per job from its
    own process: what the worker imported, each horse has; the rest each horse imports again."""
    _handlers()
    try:  # the twilio client loads its Messages API lazily, on the first send
        import twilio.rest.api.v2010.account.message  # noqa: F401
    except ImportError:
        pass


def run_job_in_app(app: Flask, name: str, *args: Any) -> Any:
    """Run the named job with ``app``'s state, in its app context, with a store connection."""
    from .services.state import get_state

    handler = _handlers()[name]
    if has_app_context() and current_app._get_current_object() is app:  # type: ignore[attr-defined]
        return handler(get_state(app), *args)
    with app.app_context():
        state: PolySMSState = get_state(app)
        state.store.connect()
        try:
            return handler(state, *args)
        finally:
            state.store.close()


def run_job(name: str, *args: Any) -> Any:
    """Entry point for RQ: runs in the worker's app."""
    app = _worker_app
    if app is None:
        if not has_app_context():
            raise RuntimeError("no app for polysms jobs: start workers with `flask polysms worker`")
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    return run_job_in_app(app, name, *args)
