"""``POST /v1/outbound-sms``: open a conversation whose first message is the given text."""

from __future__ import annotations

import marshmallow as ma
from flask import request

from ...services.events import about_project
from ...services.outbound import start_outbound
from ...services.scheduled import send_at_problem
from ...services.state import get_state
from . import conversations
from .auth import authenticated
from .blueprint import Blueprint
from .errors import ErrorSchema
from .idempotency import idempotent
from .schemas import E164, MediaUrls, Rfc3339DateTime

URL_PREFIX = "/v1"

blp = Blueprint(
    "polysms_outbound",
    __name__,
    description="Send an SMS that opens a conversation with the agent",
)


class OutboundRequestSchema(ma.Schema):
    user_number = E164(required=True, metadata={"example": "+14155552671"})
    message = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=1600))
    agent_number = E164(load_default=None, metadata={"description": "a provisioned number"})
    media_urls = MediaUrls()
    send_at = Rfc3339DateTime(
        load_default=None,
        allow_none=True,
        metadata={
            "description": "send later: an RFC 3339 time with its offset, 1 minute to 35 days "
            "ahead; the greeting and the conversation are `scheduled` until then",
            "example": "2026-12-24T09:00:00+01:00",
        },
    )

    @ma.validates("send_at")
    def _send_at_ahead(self, value, **kwargs):
        problem = send_at_problem(value) if value is not None else None
        if problem:
            raise ma.ValidationError(problem)


class OutboundResponseSchema(ma.Schema):
    conversation_id = ma.fields.String()
    agent_number = ma.fields.String()
    user_number = ma.fields.String()
    status = ma.fields.String()


@blp.route("/outbound-sms", methods=["POST"])
@authenticated(caller=True)  # with the senders in one read, the limits in one count
@idempotent(blp)  # Idempotency-Key, with its documentation (and the auth headers')
@blp.doc(security=[{"ApiKey": [], "Connector": []}])
@blp.arguments(OutboundRequestSchema())
@blp.response(202, OutboundResponseSchema)
@blp.alt_response(400, schema=ErrorSchema, description="invalid body or agent_number")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(403, schema=ErrorSchema, description="key's account is not the connector's")
@blp.alt_response(404, schema=ErrorSchema, description="unknown connector or no numbers")
@blp.alt_response(413, schema=ErrorSchema, description="body over 64 KB")
@blp.alt_response(429, schema=ErrorSchema, description="project rate limit; see Retry-After")
def send_outbound(body, caller):
    """Create a conversation session and queue its greeting.

    The number is the request's `agent_number`, else the number already talking to this user,
    else one spread across the environment's numbers. A recipient opted out of that number is
    accepted too: the message is recorded as `suppressed` and never sent.

    With `send_at`, the greeting (`status` `scheduled`) and the conversation wait until then;
    `POST /v1/messages/<id>/cancel` cancels it before. The opt-out is checked again when it
    goes out; the rate limit counts it when accepted.

    With `Idempotency-Key`, a repeat within 24 h answers the first response (status and body)
    and sends nothing; a request that failed kept nothing, and may be tried again with its key.
    """
    state = get_state()
    tenant, senders = caller.tenant_with_senders(body["user_number"])
    # start_outbound counts the project's POLYSMS_RATE_LIMIT (429), as for every other caller,
    # here with the request budget. The project as authenticated tells whether its events go to
    # webhooks.
    with about_project(tenant.project):
        session, message = start_outbound(
            state,
            tenant,
            body["user_number"],
            body["message"],
            body.get("agent_number"),
            media_urls=body.get("media_urls"),
            send_at=body.get("send_at"),
            senders=senders,
            count_with=caller.count_budget,
        )
    # The path of GET /v1/conversations/<id>, as url_for would build it (ids are URL-safe):
    # a third of the cost of url_for, on the route the API serves most.
    prefix = request.script_root + state.settings.url_prefix + conversations.URL_PREFIX
    location = f"{prefix}/{session.id}"
    return (
        {
            "conversation_id": session.id,
            "agent_number": session.agent_number,
            "user_number": session.user_number,
            "status": message.status,
        },
        202,
        {"Location": location},
    )
