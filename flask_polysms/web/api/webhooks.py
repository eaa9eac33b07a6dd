"""Twilio webhooks: inbound SMS and delivery-status callbacks, authenticated by signature."""

from __future__ import annotations

import marshmallow as ma
from flask import Response, request
from twilio.request_validator import RequestValidator

from ...errors import Forbidden, InvalidInput
from ...media import received_media
from ...records import Project
from ...services.events import about_project
from ...services.inbound import handle_inbound, handle_status
from ...services.pools import note_membership
from ...services.state import get_state
from .blueprint import Blueprint
from .errors import ErrorSchema

URL_PREFIX = "/v1/twilio"

blp = Blueprint("polysms_twilio", __name__, description="Twilio webhooks (X-Twilio-Signature)")

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
SIGNATURE_HEADER = "X-Twilio-Signature"


# SIDs and addresses are stored in 100-character key columns (a Twilio SID has 34 characters): a
# longer value is refused here with a 400, not by the database with a 500.
_KEY_LENGTH = ma.validate.Length(min=1, max=100)


class InboundSmsSchema(ma.Schema):
    """The parameters we use; Twilio adds others without notice, so unknown ones are accepted
    (and still covered by the signature, which is checked over the raw form)."""

    class Meta:
        unknown = ma.EXCLUDE

    MessageSid = ma.fields.String(required=True, validate=_KEY_LENGTH)
    AccountSid = ma.fields.String()
    From = ma.fields.String(required=True, validate=_KEY_LENGTH)
    To = ma.fields.String()
    MessagingServiceSid = ma.fields.String()
    Body = ma.fields.String(load_default="")
    # Pictures (MMS): MediaUrl{i} and MediaContentType{i} for i below NumMedia, read by
    # received_media (their names are not fixed); documented here for the first one.
    NumMedia = ma.fields.String()
    MediaUrl0 = ma.fields.String()
    MediaContentType0 = ma.fields.String()
    # Twilio's Advanced Opt-Out classification (STOP, START, HELP): honoured as that keyword.
    OptOutType = ma.fields.String()


class StatusCallbackSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    MessageSid = ma.fields.String(required=True, validate=_KEY_LENGTH)
    # Twilio's statuses are short lower-case words; lower() of other letters can grow ("İ").
    # \Z, not $: Regexp uses re.match, and $ also matches before a trailing newline.
    MessageStatus = ma.fields.String(
        required=True, validate=ma.validate.Regexp(r"\A[A-Za-z_-]{1,32}\Z", error="not a status")
    )
    ErrorCode = ma.fields.String()
    From = ma.fields.String()
    To = ma.fields.String()


# Schemas hold no per-request state: built once, not per webhook.
INBOUND_SMS = InboundSmsSchema()
STATUS_CALLBACK = StatusCallbackSchema()


def public_url() -> str:
    """The URL Twilio called, from configuration (``POLYSMS_PUBLIC_URL`` or ``SERVER_NAME``).

    Only in debug and testing, where start-up allows neither, is it the request's own URL.
    """
    settings = get_state().settings
    if settings.public_url:
        path = request.full_path if request.query_string else request.path
        return settings.public_url + path
    return request.url


def verify_signature(project: Project | None) -> None:
    """403 unless X-Twilio-Signature is valid for the project's Auth Token."""
    state = get_state()
    if not state.settings.validate_signatures:
        return
    signature = request.headers.get(SIGNATURE_HEADER)
    if project is None or not project.twilio_auth_token_encrypted:
        raise Forbidden("unknown destination: the request cannot be verified")
    if not signature:
        raise Forbidden(f"missing {SIGNATURE_HEADER}")
    token = state.cipher.decrypt(project.twilio_auth_token_encrypted)
    # Twilio signs each value of a repeated parameter: the validator reads every one of them from
    # the MultiDict itself (getlist); a plain dict with list values makes it raise TypeError.
    if not RequestValidator(token).validate(public_url(), request.form, signature):
        raise Forbidden(f"invalid {SIGNATURE_HEADER}")


def twiml() -> Response:
    return Response(EMPTY_TWIML, status=200, mimetype="text/xml")


def _form_doc(schema: type[ma.Schema]) -> dict:
    fields = schema._declared_fields
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {name: {"type": "string"} for name in fields},
                        "required": [n for n, f in fields.items() if f.required],
                    }
                }
            },
        }
    }


def _load(schema: ma.Schema) -> dict:
    # Parsed after the signature check, so an unsigned request is a 403 whatever its content.
    try:
        return schema.load(request.form.to_dict())
    except ma.ValidationError as exc:
        raise InvalidInput("invalid webhook parameters", errors=exc.messages) from exc


@blp.route("/sms", methods=["POST"])
@blp.doc(**_form_doc(InboundSmsSchema))
@blp.response(200, description="empty TwiML <Response/>")
@blp.alt_response(400, schema=ErrorSchema, description="a required parameter is missing")
@blp.alt_response(403, schema=ErrorSchema, description="bad or missing signature")
def inbound_sms():
    """An SMS from a user to one of our numbers (Twilio's inbound webhook)."""
    state = get_state()
    raw = request.form
    sender = project = None
    for address in (raw.get("To"), raw.get("MessagingServiceSid")):
        if address and sender is None:
            sender, project = state.store.get_sender_with_project(address)
    verify_signature(project)
    form = _load(INBOUND_SMS)
    media, problems = received_media(raw)
    if problems:
        raise InvalidInput("invalid webhook parameters", errors=problems)
    sender = note_membership(state, sender, form.get("MessagingServiceSid"))
    # The project as read for the signature tells whether its events go to webhooks.
    with about_project(project):
        handle_inbound(
            state,
            sender,
            form["From"],
            form.get("Body", ""),
            form["MessageSid"],
            project=project,
            media=media,
            opt_out_type=form.get("OptOutType"),
        )
    return twiml()


@blp.route("/status", methods=["POST"])
@blp.doc(**_form_doc(StatusCallbackSchema))
@blp.response(200, description="empty TwiML <Response/>")
@blp.alt_response(400, schema=ErrorSchema, description="a required parameter is missing")
@blp.alt_response(403, schema=ErrorSchema, description="bad or missing signature")
def status_callback():
    """A delivery-status update for a message we sent."""
    state = get_state()
    raw = request.form
    message = state.store.get_message_by_sid(raw.get("MessageSid", ""))
    project_id = message.project_id if message else None
    for address in (raw.get("From"), raw.get("MessagingServiceSid")):
        if project_id is None and address:
            sender = state.store.get_sender(address)
            project_id = sender.project_id if sender else None
    project = state.store.get_project(project_id) if project_id else None
    verify_signature(project)
    form = _load(STATUS_CALLBACK)
    with about_project(project):
        handle_status(state, form)
    return twiml()
