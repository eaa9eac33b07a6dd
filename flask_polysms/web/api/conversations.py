"""``GET /v1/conversations`` and ``GET /v1/conversations/<id>``, scoped to the caller's project
and its connector's environment (:mod:`flask_polysms.services.conversation_reads`)."""

from __future__ import annotations

import marshmallow as ma

from ...records import Session
from ...services import conversation_reads
from ...services.cursors import MAX_CURSOR_LENGTH
from ...services.state import get_state
from .auth import AUTH_PARAMETERS, authenticated
from .blueprint import Blueprint
from .errors import ErrorSchema
from .schemas import E164, ConversationSchema

URL_PREFIX = "/v1/conversations"

blp = Blueprint("polysms_conversations", __name__, description="Conversation sessions")


class ConversationQuerySchema(ma.Schema):
    user_number = E164()
    state = ma.fields.String(
        validate=ma.validate.OneOf(["scheduled", "active", "warned", "closed"])
    )
    environment = ma.fields.String(
        validate=ma.validate.OneOf(["sandbox", "pre-release", "live"]),
        metadata={"description": "the connector's environment (another one is a 400)"},
    )
    cursor = ma.fields.String(
        validate=ma.validate.Length(max=MAX_CURSOR_LENGTH),
        metadata={"description": "the next_cursor of the previous page, unchanged"},
    )
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=200))


class ConversationPageSchema(ma.Schema):
    conversations = ma.fields.List(ma.fields.Nested(ConversationSchema))
    next_cursor = ma.fields.String(allow_none=True)


def conversation_dict(session: Session, *, with_messages: bool = True) -> dict:
    """A session as the API shows it, its messages read from the store (or none)."""
    messages = get_state().store.list_messages(session.id) if with_messages else []
    return conversation_reads.conversation_dict(session, messages)


@blp.route("/<conversation_id>", methods=["GET"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS)
@blp.response(200, ConversationSchema)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such conversation in this project")
def get_conversation(conversation_id, tenant):
    """One conversation of the connector's environment with every message and its send log."""
    session = conversation_reads.find_conversation(get_state(), tenant, conversation_id)
    return conversation_dict(session)


@blp.route("", methods=["GET"], parameters=AUTH_PARAMETERS)
@authenticated
@blp.arguments(ConversationQuerySchema(), location="query")
@blp.response(200, ConversationPageSchema)
@blp.alt_response(400, schema=ErrorSchema, description="bad filter or cursor")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def list_conversations(query, tenant):
    """The project's conversations in the connector's environment, newest first; follow
    `next_cursor` (opaque, valid for this project only) for the next page."""
    page = conversation_reads.list_conversations(
        get_state(),
        tenant,
        environment=query.get("environment"),
        user_number=query.get("user_number"),
        conversation_state=query.get("state"),
        cursor=query.get("cursor"),
        limit=query["limit"],
    )
    return {"conversations": conversation_reads.page_dicts(page), "next_cursor": page.next_cursor}
