"""Sending :mod:`flask_polysms.signals` once each, after the change they report is committed.

Inside a unit of work (:func:`~flask_polysms.services.units.unit_of_work`) an event waits for the
commit: a transaction that is rolled back sends nothing, and a try the Store runs again drops
the events of the failed one. Outside, a Store write commits at once and its event is sent
right after it. A receiver is the host app's code: one that raises is logged, and neither the
change nor the other receivers notice.

The ``conversation`` and ``message`` arguments are the dicts of the HTTP API, built when the
event is sent (a conversation is read then, with its messages) and only when the signal has
receivers or the app's event forwarder (webhook subscriptions) wants the event: an app that
listens to nothing pays nothing. The forwarder decides from the project's record: a request or
job that has read it says so with :func:`about_project`, and no further read is needed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from blinker import Signal

from .. import signals

if TYPE_CHECKING:
    from ..records import Message, Project, Session
    from .state import PolySMSState

log = logging.getLogger("flask_polysms.signals")

_local = threading.local()

# The project records the current block of work has read (see about_project): request- or
# job-scoped, reset when the block ends.
_known_projects: ContextVar[dict[str, Project] | None] = ContextVar(
    "polysms_known_projects", default=None
)


class EventForwarder(Protocol):
    """Where an app's events go besides the signals' receivers (its webhook subscriptions)."""

    def wants(self, state: PolySMSState, signal: Signal, project_id: str) -> bool:
        """Whether the event is forwarded: decided when it is emitted, inside the change."""

    def forward(
        self, state: PolySMSState, signal: Signal, project_id: str, kwargs: dict[str, Any]
    ) -> None:
        """Forward the event, once committed; ``kwargs`` as emitted (see :func:`forwardable`)."""


@contextmanager
def about_project(project: Project | None) -> Iterator[None]:
    """Inside the block, the events of ``project`` are judged on this record of it, as read by
    the caller: knowing whether it has webhook subscriptions costs no read."""
    if project is None:
        yield
        return
    token = _known_projects.set({**(_known_projects.get() or {}), project.id: project})
    try:
        yield
    finally:
        _known_projects.reset(token)


def known_project(project_id: str) -> Project | None:
    """The record of the project that an enclosing :func:`about_project` gave (or
    :func:`remember_project` inside a unit of work), else None."""
    known = _known_projects.get()
    return known.get(project_id) if known else None


def remember_project(project: Project) -> None:
    """Keep ``project`` as read until the enclosing unit of work (or
    :func:`about_project` block) ends; nothing outside one."""
    known = _known_projects.get()
    if known is not None:
        known[project.id] = project


# How ``conversation`` and ``message`` arguments become the API's dicts: set by the module that
# owns that JSON (conversation_reads), which sits above this one.
_payloads: dict[str, Callable[[PolySMSState, Any], Any]] = {}


def use_payloads(
    conversation: Callable[[PolySMSState, str], dict | None],
    message: Callable[[PolySMSState, Message], dict],
) -> None:
    """Set how a conversation (by id) and a message become the dicts receivers get."""
    _payloads["conversation"] = conversation
    _payloads["message"] = message


@dataclass(frozen=True)
class _Payload:
    kind: str  # "conversation" (value: a session id) or "message" (value: a Message)
    value: Any


def conversation_arg(session_id: str | None) -> _Payload | None:
    """A ``conversation`` argument: the conversation's dict when the event is sent."""
    return None if session_id is None else _Payload("conversation", session_id)


def message_arg(message: Message) -> _Payload:
    """A ``message`` argument: the message's dict."""
    return _Payload("message", message)


@contextmanager
def holding() -> Iterator[list]:
    """Hold the events this thread emits inside the block and send them when the outermost
    block ends without an error; drop them when it raises. Yields the list of held events: a
    caller that runs its transaction again cuts it back to its length before the first try."""
    held = getattr(_local, "events", None)
    if held is not None:  # nested: the outermost block sends everything
        yield held
        return
    held = _local.events = []
    # Projects read for the forwarder inside the block are remembered until it ends: a
    # transaction that closes many conversations reads each project once.
    known = _known_projects.set(dict(_known_projects.get() or {}))
    try:
        yield held
    finally:
        _local.events = None
        _known_projects.reset(known)
    for event in held:
        _send(*event)


def emit(state: PolySMSState, signal: Signal, project_id: str, **kwargs: Any) -> None:
    """Send ``signal`` for a change made in the current unit of work, once it commits (at once
    outside one)."""
    forwarder = state.event_forwarder
    forward = forwarder is not None and forwarder.wants(state, signal, project_id)
    if not forward and not signal.receivers:
        return
    event = (state, signal, project_id, kwargs, forward)
    held = getattr(_local, "events", None)
    if held is None:
        _send(*event)
    else:
        held.append(event)


def opt_out_changed(
    state: PolySMSState,
    project_id: str,
    user_number: str,
    sender_address: str,
    opted_out: bool,
    keyword: str | None,
    source: str | None,
) -> None:
    """Emit ``opted_out`` or ``opted_in`` for an opt-out record that changed."""
    emit(
        state,
        signals.opted_out if opted_out else signals.opted_in,
        project_id,
        user_number=user_number,
        sender_address=sender_address,
        keyword=keyword,
        source=source,
    )


def _send(
    state: PolySMSState, signal: Signal, project_id: str, kwargs: dict, forward: bool
) -> None:
    app = state.app
    receivers = list(signal.receivers_for(app))
    if receivers:
        try:
            arguments = {name: _resolve(state, value) for name, value in kwargs.items()}
        except Exception:
            log.exception(
                "polysms signal %s not sent: its arguments could not be read", signal.name
            )
            arguments = None
        for receiver in receivers if arguments is not None else ():
            try:
                receiver(app, project_id=project_id, **arguments)
            except Exception:
                log.exception("a receiver of the polysms signal %s raised", signal.name)
    if forward:
        try:
            state.event_forwarder.forward(state, signal, project_id, kwargs)
        except Exception:
            log.exception("the polysms event %s was not forwarded", signal.name)


def forwardable(state: PolySMSState, kwargs: dict) -> tuple[dict[str, Any], dict[str, str]]:
    """An event's arguments for a forwarder: ``(arguments, conversations)``, every argument
    resolved except the conversations, which are None in ``arguments`` and named by their
    session id in ``conversations`` (read later with :func:`conversation_payload`, outside the
    request: a conversation is read with all its messages)."""
    arguments: dict[str, Any] = {}
    conversations: dict[str, str] = {}
    for name, value in kwargs.items():
        if isinstance(value, _Payload) and value.kind == "conversation":
            arguments[name] = None
            conversations[name] = value.value
        else:
            arguments[name] = _resolve(state, value)
    return arguments, conversations


def conversation_payload(state: PolySMSState, session_id: str) -> dict | None:
    """The ``conversation`` argument of an event as the signals give it, read now."""
    return _payloads["conversation"](state, session_id)


def _resolve(state: PolySMSState, value: Any) -> Any:
    if isinstance(value, _Payload):
        return _payloads[value.kind](state, value.value)
    return value


def opened(state: PolySMSState, session: Session) -> None:
    """Emit ``conversation_opened`` for a session just created."""
    emit(
        state,
        signals.conversation_opened,
        session.project_id,
        conversation=conversation_arg(session.id),
    )


def closed(state: PolySMSState, session: Session) -> None:
    """Emit ``conversation_closed`` for a session just closed."""
    emit(
        state,
        signals.conversation_closed,
        session.project_id,
        conversation=conversation_arg(session.id),
    )


def status_changed(state: PolySMSState, message: Message | None) -> None:
    """Emit ``message_status_changed`` for a message whose status was just changed (None: it
    was not, nothing is sent)."""
    if message is not None:
        emit(
            state, signals.message_status_changed, message.project_id, message=message_arg(message)
        )
