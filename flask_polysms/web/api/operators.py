"""Operator routes on one conversation: hand it to a person, write to the user, give it back to
the agent, end it (:mod:`flask_polysms.services.operators`). Scoped like every conversation
route: another project's or environment's conversation is a 404."""

from __future__ import annotations

import marshmallow as ma

from ...services import operators
from ...services.conversation_reads import api_message_dict, find_conversation
from ...services.state import get_state
from .auth import AUTH_PARAMETERS, authenticated
from .blueprint import Blueprint
from .conversations import conversation_dict
from .errors import ErrorSchema
from .idempotency import idempotent
from .schemas import ConversationSchema, MediaUrls, MessageSchema

URL_PREFIX = "/v1/conversations"

blp = Blueprint(
    "polysms_operators",
    __name__,
    description="Operators: hand a conversation to a person, write, resume, end",
)


class HandoffRequestSchema(ma.Schema):
    reason = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=ma.validate.Length(max=500),
        metadata={"description": "why a person takes over (shown in `handoff.reason`)"},
    )


class HumanMessageRequestSchema(ma.Schema):
    message = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=1600))
    media_urls = MediaUrls()


@blp.route("/<conversation_id>/handoff", methods=["POST"], parameters=AUTH_PARAMETERS)
@authenticated
@blp.arguments(HandoffRequestSchema())
@blp.response(200, ConversationSchema)
@blp.alt_response(400, schema=ErrorSchema, description="invalid body")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such conversation in this environment")
@blp.alt_response(409, schema=ErrorSchema, description="the conversation is closed")
def hand_off(body, conversation_id, tenant):
    """Hand the conversation to a person: the agent is not given the user's messages (they are
    recorded), and the inactivity warning and close wait until `resume`. Already handed off:
    unchanged. The conversation's `handoff` is then `{"reason", "since"}`."""
    state = get_state()
    session = find_conversation(state, tenant, conversation_id)
    return conversation_dict(operators.hand_off(state, session.id, body.get("reason")))


@blp.route("/<conversation_id>/messages", methods=["POST"])
@authenticated
@idempotent(blp)  # Idempotency-Key, with its documentation (and the auth headers')
@blp.arguments(HumanMessageRequestSchema())
@blp.response(202, MessageSchema)
@blp.alt_response(400, schema=ErrorSchema, description="invalid body")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such conversation in this environment")
@blp.alt_response(409, schema=ErrorSchema, description="the conversation is closed")
@blp.alt_response(429, schema=ErrorSchema, description="project rate limit; see Retry-After")
def send_message(body, conversation_id, tenant):
    """Send a person's message (kind `human`) to the conversation's user from its agent number,
    with or without a handoff. Counts against the project's outbound rate limit; a user opted
    out of that number gets nothing (the message is `suppressed`)."""
    state = get_state()
    session = find_conversation(state, tenant, conversation_id)
    message = operators.send_human_message(state, session, body["message"], body.get("media_urls"))
    return api_message_dict(message), 202


@blp.route("/<conversation_id>/resume", methods=["POST"], parameters=AUTH_PARAMETERS)
@authenticated
@blp.response(200, ConversationSchema)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such conversation in this environment")
@blp.alt_response(409, schema=ErrorSchema, description="the conversation is closed")
def resume(conversation_id, tenant):
    """Give the conversation back to the agent: it answers the next user message, and the
    inactivity timer starts again now. Not handed off: unchanged."""
    state = get_state()
    session = find_conversation(state, tenant, conversation_id)
    return conversation_dict(operators.resume(state, session.id))


@blp.route("/<conversation_id>/end", methods=["POST"], parameters=AUTH_PARAMETERS)
@authenticated
@blp.response(200, ConversationSchema)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such conversation in this environment")
@blp.alt_response(409, schema=ErrorSchema, description="the conversation is already closed")
def end(conversation_id, tenant):
    """Close the conversation now: `end_reason` `api`, no closing text sent."""
    state = get_state()
    session = find_conversation(state, tenant, conversation_id)
    return conversation_dict(operators.end_by_operator(state, session.id))
