"""``GET /v1/conversations`` and ``GET /v1/conversations/<id>``, scoped to the caller's project."""

from __future__ import annotations

import marshmallow as ma

from ..conversation import message_dict
from ..errors import InvalidInput, NotFoundError
from ..extension import get_state
from ..records import OUTBOUND, Session
from . import AUTH_PARAMETERS, Blueprint, ErrorSchema, authenticated
from .schemas import E164, ConversationSchema

URL_PREFIX = "/v1/conversations"

blp = Blueprint("polysms_conversations", __name__, description="Conversation sessions")


class ConversationQuerySchema(ma.Schema):
    user_number = E164()
    state = ma.fields.String(validate=ma.validate.OneOf(["active", "warned", "closed"]))
    environment = ma.fields.String(validate=ma.validate.OneOf(["sandbox", "pre-release", "live"]))
    cursor = ma.fields.String()
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=200))


class ConversationPageSchema(ma.Schema):
    conversations = ma.fields.List(ma.fields.Nested(ConversationSchema))
    next_cursor = ma.fields.String(allow_none=True)


def conversation_dict(session: Session, *, with_messages: bool = True) -> dict:
    """A session as the API shows it; ``metadata.sms_sends`` is derived from its outbound
    messages so the log can never disagree with them."""
    messages = get_state().store.list_messages(session.id) if with_messages else []
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
        "messages": [{**message_dict(m), "drop_reason": m.drop_reason} for m in messages],
        "metadata": {"sms_sends": sends, "warnings": session.metadata.get("warnings", [])},
    }


@blp.route("/<conversation_id>", methods=["GET"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS)
@blp.response(200, ConversationSchema)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such conversation in this project")
def get_conversation(conversation_id, tenant):
    """One conversation with every message and its send log."""
    session = get_state().store.get_session(conversation_id)
    if session is None or session.project_id != tenant.project_id:
        raise NotFoundError("conversation not found")
    return conversation_dict(session)


@blp.route("", methods=["GET"], parameters=AUTH_PARAMETERS)
@authenticated
@blp.arguments(ConversationQuerySchema(), location="query")
@blp.response(200, ConversationPageSchema)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def list_conversations(query, tenant):
    """The project's conversations, newest first; follow `next_cursor` for the next page."""
    try:
        sessions, next_cursor = get_state().store.list_sessions(
            tenant.project_id,
            environment=query.get("environment"),
            user_number=query.get("user_number"),
            state=query.get("state"),
            cursor=query.get("cursor"),
            limit=query["limit"],
        )
    except ValueError as exc:
        raise InvalidInput("invalid cursor", errors={"cursor": [str(exc)]}) from exc
    return {
        "conversations": [conversation_dict(s) for s in sessions],
        "next_cursor": next_cursor,
    }
