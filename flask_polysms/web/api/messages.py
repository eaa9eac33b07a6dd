"""``GET /v1/messages/<id>`` and ``POST /v1/messages/<id>/cancel``: one message, scoped to the
caller's project and its connector's environment (:mod:`flask_polysms.services.scheduled`)."""

from __future__ import annotations

from ...records import Message
from ...services import scheduled
from ...services.conversation import message_dict
from ...services.state import get_state
from .auth import AUTH_PARAMETERS, authenticated
from .blueprint import Blueprint
from .errors import ErrorSchema
from .schemas import MessageSchema

URL_PREFIX = "/v1/messages"

blp = Blueprint("polysms_messages", __name__, description="Messages, and canceling scheduled ones")


def message_json(message: Message) -> dict:
    """A message as the API shows it (as in a conversation's ``messages``)."""
    return {**message_dict(message), "drop_reason": message.drop_reason}


@blp.route("/<message_id>", methods=["GET"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS)
@blp.response(200, MessageSchema)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such message in this environment")
def get_message(message_id, tenant):
    """One message of the connector's environment, with its status (`scheduled` and its
    `send_at` while it waits)."""
    return message_json(scheduled.find_message(get_state(), tenant, message_id))


@blp.route("/<message_id>/cancel", methods=["POST"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS)
@blp.response(200, MessageSchema)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such message in this environment")
@blp.alt_response(409, schema=ErrorSchema, description="the message went out or is going")
def cancel_message(message_id, tenant):
    """Cancel a scheduled message before its `send_at`: `status` `canceled` (`drop_reason`
    `canceled`), it never sends; a scheduled greeting's conversation closes (`end_reason`
    `canceled`). Canceling it again answers the same; a message that is no longer
    `scheduled` (queued, sending, sent...) is a 409."""
    return message_json(scheduled.cancel(get_state(), tenant, message_id))
