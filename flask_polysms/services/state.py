"""The state one app's extension keeps in ``app.extensions["polysms"]``: its settings and the three
ports. Services receive it as an argument; :func:`get_state` finds it for the web layer, jobs and
the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, has_app_context

from ..config import Settings
from ..crypto import TokenCipher
from ..errors import NotConfigured
from ..ports.gateways import Gateway
from ..ports.schedulers import Scheduler
from ..ports.store import Store

EXTENSION_KEY = "polysms"
#: The host app's agent, ``(conv, text) -> reply text or None``: conv is a
#: :class:`~flask_polysms.services.conversation.Conversation` (not imported here: it is built on
#: this module).
AgentFunc = Callable[[Any, str], "str | None"]


@dataclass
class PolySMSState:
    """Everything one app's extension needs: its settings and the three ports."""

    extension: Any  # the PolySMS object: the agent it holds is read at each turn
    app: Flask
    settings: Settings
    store: Store
    gateway: Gateway
    scheduler: Scheduler
    cipher: TokenCipher
    limiter: Any = None
    read_limiter: Any = None  # POLYSMS_READ_RATE_LIMIT, counted by every authenticated route
    emulator: Any = None  # a TwilioEmulator the app started in-process (the embedded demo)
    inbound_limits: Any = None  # built on first inbound message (inbound.inbound_limits)
    # Where events go besides the signals' receivers: the webhook subscriptions (see
    # services.events.EventForwarder), set by init_app.
    event_forwarder: Any = None

    @property
    def agent(self) -> AgentFunc | None:
        return self.extension.agent_func


def get_state(app: Flask | None = None) -> PolySMSState:
    """The extension state of ``app`` (default: the current app)."""
    if app is None:
        if not has_app_context():
            raise NotConfigured("no Flask app context: push one or pass the app")
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise NotConfigured(
            f"flask-polysms is not set up on app {app.name!r}: did you call polysms.init_app(app)?"
        )
    return state
