"""What a caller may read of conversations: one conversation, a page of them, and their JSON.

A connector's environment scopes conversations and their messages: a conversation
of another environment, like one of another project, is not found (404, as if absent), and a list
filter naming another environment is a 400. The API and the dashboard read through here, so both
are scoped alike; a route that acts on a conversation (a send, an operator action) finds it with
:func:`find_conversation` first.

A page costs two queries whatever its size: its sessions, then the messages of all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFoundError
from ..records import OUTBOUND, Message, Session, canonical_environment
from . import events
from .conversation import message_dict
from .cursors import CursorScope, open_cursor, seal_cursor

if TYPE_CHECKING:
    from .state import PolySMSState
    from .tenancy import Tenant

#: The name conversation cursors are bound to (a cursor of another list is refused).
CONVERSATIONS = "conversations"


@dataclass
class ConversationPage:
    """A page of conversations: the sessions, newest first, the messages of each (by session
    id, in recording order) and the cursor of the next page (None on the last)."""

    sessions: list[Session]
    messages: dict[str, list[Message]] = field(default_factory=dict)
    next_cursor: str | None = None


def in_scope(tenant: Tenant, session: Session | None) -> bool:
    """Whether the caller may see ``session``: its project, and its connector's environment."""
    return (
        session is not None
        and session.project_id == tenant.project_id
        and session.environment == tenant.environment
    )


def find_conversation(state: PolySMSState, tenant: Tenant, conversation_id: str) -> Session:
    """The caller's conversation with this id. Raises NotFoundError (404) when there is none in
    the caller's project and environment: another project's or environment's is not revealed."""
    session = state.store.get_session(conversation_id)
    if not in_scope(tenant, session):
        raise NotFoundError("conversation not found")
    return session


def scoped_environment(tenant: Tenant, environment: str | None) -> str:
    """The environment a list reads: the connector's. Raises InvalidInput (400) when the
    caller's filter names another one (``dev`` names ``sandbox``)."""
    if environment is None or environment == "":
        return tenant.environment
    if canonical_environment(environment) != tenant.environment:
        raise InvalidInput(
            f"this connector reads the {tenant.environment} environment only",
            errors={"environment": [f"must be {tenant.environment} (the connector's)"]},
        )
    return tenant.environment


def list_conversations(
    state: PolySMSState,
    tenant: Tenant,
    *,
    environment: str | None = None,
    user_number: str | None = None,
    conversation_state: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
    with_messages: bool = True,
) -> ConversationPage:
    """A page of the caller's conversations, newest first, in its connector's environment.

    ``cursor`` is a ``next_cursor`` this caller was given for this list (InvalidInput, 400,
    otherwise); the page's ``next_cursor`` is sealed for the caller the same way. With
    ``with_messages`` every session's messages are read in one more query.
    """
    scope = CursorScope(CONVERSATIONS, tenant.project_id, tenant.environment)
    env = scoped_environment(tenant, environment)
    after = open_cursor(state.settings, scope, cursor)
    try:
        sessions, next_position = state.store.list_sessions(
            tenant.project_id,
            environment=env,
            user_number=user_number,
            state=conversation_state,
            cursor=after,
            limit=limit,
        )
    except ValueError as exc:
        raise InvalidInput("invalid page request", errors={"cursor": [str(exc)]}) from exc
    messages = (
        state.store.list_messages_of_sessions([s.id for s in sessions]) if with_messages else {}
    )
    return ConversationPage(
        sessions=sessions,
        messages=messages,
        next_cursor=seal_cursor(state.settings, scope, next_position),
    )


def conversation_dict(session: Session, messages: list[Message]) -> dict[str, Any]:
    """A session and its messages as the API shows them; ``metadata.sms_sends`` is derived from
    the outbound messages so the log can never disagree with them."""
    sends = [
        {
            "message_id": m.id,
            "template": m.template,
            "to": m.to,
            "from_": m.from_ or m.messaging_service_sid,
            "status": m.status,
            "twilio_sid": m.twilio_sid,
            "time": m.created_at,
        }
        for m in messages
        if m.direction == OUTBOUND
    ]
    return {
        "id": session.id,
        "environment": session.environment,
        "channel": "sms",
        "user_number": session.user_number,
        "agent_number": session.agent_number,
        "state": session.state,
        "engaged": session.engaged,
        "created_at": session.created_at,
        "last_activity_at": session.last_activity_at,
        "closed_at": session.closed_at,
        "end_reason": session.end_reason,
        "handoff": handoff_dict(session),
        "messages": [api_message_dict(m) for m in messages],
        "metadata": {"sms_sends": sends, "warnings": session.metadata.get("warnings", [])},
    }


def handoff_dict(session: Session) -> dict[str, Any] | None:
    """The conversation's ``handoff``: ``{"reason", "since"}`` while handed off, else None."""
    handoff = session.handoff
    if not handoff:
        return None
    return {"reason": handoff.get("reason"), "since": datetime.fromisoformat(handoff["since"])}


def page_dicts(page: ConversationPage) -> list[dict[str, Any]]:
    """Every conversation of a page as :func:`conversation_dict` shows it."""
    return [conversation_dict(s, page.messages.get(s.id, [])) for s in page.sessions]


def _conversation_payload(state: PolySMSState, session_id: str) -> dict[str, Any] | None:
    session = state.store.get_session(session_id)
    if session is None:
        return None
    return conversation_dict(session, state.store.list_messages(session.id))


def api_message_dict(message: Message) -> dict[str, Any]:
    """A message as the conversation API shows it."""
    return {**message_dict(message), "drop_reason": message.drop_reason}


# Signals carry the API's dicts (events sits below this module: it is told how to build them).
events.use_payloads(_conversation_payload, lambda state, message: api_message_dict(message))
