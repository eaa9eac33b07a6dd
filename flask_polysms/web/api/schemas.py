"""marshmallow schemas shared by the blueprints (marshmallow 4: unknown fields raise)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import marshmallow as ma

from ...media import MAX_MEDIA, MAX_URL_LENGTH, https_url_problem
from ...phone import validate_e164


class E164(ma.fields.String):
    """A strict E.164 phone number (phonenumbers plus the E.164 pattern)."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        try:
            return validate_e164(value)
        except ValueError as exc:
            raise ma.ValidationError(str(exc)) from exc


# RFC 3339's date-time: a full date and time, seconds included, and an offset (Z or ±hh:mm).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z"
)


class Rfc3339DateTime(ma.fields.DateTime):
    """An RFC 3339 date-time with its offset (``2026-12-24T09:00:00+01:00``), as an aware
    UTC datetime; a time without an offset is refused (whose 9 o'clock would it be?)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not _RFC3339.match(value):
            raise ma.ValidationError(
                "not an RFC 3339 date-time with an offset, e.g. 2026-12-24T09:00:00+01:00"
            )
        text = value.replace("z", "Z").replace("t", "T")
        # fromisoformat reads at most microseconds: cut finer fractions.
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
        except ValueError as exc:  # 2026-02-30, 25:00:00, an offset over 24 h
            raise ma.ValidationError(f"not a valid date-time: {exc}") from exc


class HttpsUrl(ma.fields.String):
    """A picture's URL for Twilio to fetch: absolute ``https://``, at most 2048 characters."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        problem = https_url_problem(value)
        if problem is not None:
            raise ma.ValidationError(problem)
        return value


class MediaUrls(ma.fields.List):
    """``media_urls``: 1 to 10 pictures (an MMS); null or absent for none."""

    def __init__(self, **kwargs):
        super().__init__(
            HttpsUrl(
                metadata={"format": "uri", "pattern": "^https://", "maxLength": MAX_URL_LENGTH}
            ),
            load_default=None,
            allow_none=True,
            validate=ma.validate.Length(min=1, max=MAX_MEDIA),
            metadata={
                "description": f"pictures to send as an MMS: 1 to {MAX_MEDIA} https:// URLs",
                "example": ["https://example.org/map.png"],
            },
            **kwargs,
        )


class MediaSchema(ma.Schema):
    url = ma.fields.String()
    content_type = ma.fields.String(
        allow_none=True, metadata={"description": "as Twilio reported it; null when we sent it"}
    )


class LastErrorSchema(ma.Schema):
    code = ma.fields.Integer(
        allow_none=True, metadata={"description": "Twilio's error code; null for a timeout"}
    )
    message = ma.fields.String(allow_none=True)
    at = ma.fields.DateTime()


class MessageSchema(ma.Schema):
    id = ma.fields.String()
    direction = ma.fields.String(metadata={"enum": ["outbound", "inbound"]})
    kind = ma.fields.String(
        metadata={
            "enum": ["greeting", "agent", "user", "compliance", "warning", "closing", "human"]
        }
    )
    body = ma.fields.String()
    status = ma.fields.String()
    error_code = ma.fields.Integer(allow_none=True)
    error_message = ma.fields.String(allow_none=True)
    twilio_sid = ma.fields.String(allow_none=True)
    segments = ma.fields.Integer()
    encoding = ma.fields.String()
    template = ma.fields.String(allow_none=True)
    drop_reason = ma.fields.String(
        allow_none=True,
        metadata={
            "description": "why the message was not sent (suppressed) or not handed to the agent "
            "(dropped): opted_out, blocked, duplicate_text, sender_rate_limited, "
            "project_rate_limited; null for every other message"
        },
    )
    created_at = ma.fields.DateTime()
    attempts = ma.fields.Integer(metadata={"description": "sends tried"})
    last_error = ma.fields.Nested(
        LastErrorSchema,
        allow_none=True,
        metadata={"description": "the last failed send attempt, kept after a successful retry"},
    )
    media = ma.fields.List(
        ma.fields.Nested(MediaSchema), metadata={"description": "pictures (MMS); [] for none"}
    )
    send_at = ma.fields.DateTime(
        allow_none=True,
        metadata={"description": "when a scheduled message goes out; null unless scheduled"},
    )


class SmsSendSchema(ma.Schema):
    message_id = ma.fields.String()
    template = ma.fields.String(allow_none=True)
    to = ma.fields.String()
    from_ = ma.fields.String(data_key="from", allow_none=True)
    status = ma.fields.String()
    twilio_sid = ma.fields.String(allow_none=True)
    time = ma.fields.DateTime()


class ConversationMetadataSchema(ma.Schema):
    sms_sends = ma.fields.List(ma.fields.Nested(SmsSendSchema))
    warnings = ma.fields.List(ma.fields.String())


class HandoffSchema(ma.Schema):
    reason = ma.fields.String(allow_none=True)
    since = ma.fields.DateTime()


class ConversationSchema(ma.Schema):
    id = ma.fields.String()
    environment = ma.fields.String()
    channel = ma.fields.String()
    user_number = ma.fields.String()
    agent_number = ma.fields.String()
    state = ma.fields.String(metadata={"enum": ["scheduled", "active", "warned", "closed"]})
    engaged = ma.fields.Boolean()
    created_at = ma.fields.DateTime()
    last_activity_at = ma.fields.DateTime()
    closed_at = ma.fields.DateTime(allow_none=True)
    end_reason = ma.fields.String(allow_none=True)
    handoff = ma.fields.Nested(
        HandoffSchema,
        allow_none=True,
        metadata={"description": "null, or while a person answers instead of the agent"},
    )
    messages = ma.fields.List(ma.fields.Nested(MessageSchema))
    metadata = ma.fields.Nested(ConversationMetadataSchema)
