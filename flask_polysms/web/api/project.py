"""``/v1/project``: the caller's project settings (its own keywords, keyword replies per language,
who answers keywords, quiet hours).

The rules live in :mod:`flask_polysms.services.consent`; the schemas state the shapes so that the
OpenAPI document shows them and one 400 names every field at fault.
"""

from __future__ import annotations

import marshmallow as ma

from ...services import consent
from ...services.state import get_state
from .auth import AUTH_PARAMETERS, authenticated
from .blueprint import Blueprint
from .errors import ErrorSchema

URL_PREFIX = "/v1/project"

blp = Blueprint("polysms_project", __name__, description="The project's consent settings")

SECURITY = [{"ApiKey": [], "Connector": []}]


def _language(value: str) -> None:
    problem = consent.language_problem(value)
    if problem is not None:
        raise ma.ValidationError(problem)


def _language_field(**kwargs) -> ma.fields.String:
    return ma.fields.String(
        validate=_language,
        metadata={
            "description": "a language tag (en, fr, es-MX)",
            "pattern": consent.LANGUAGE_PATTERN,
            "maxLength": consent.LANGUAGE_MAX_LENGTH,
        },
        **kwargs,
    )


class KeywordSchema(ma.Schema):
    keyword = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=consent.KEYWORD_MAX_LENGTH),
        metadata={
            "description": "matched against the whole message like the built-in keywords "
            "(whitespace around and one trailing . ! ? , ; ignored; any case); a built-in "
            "keyword is refused"
        },
    )
    action = ma.fields.String(required=True, validate=ma.validate.OneOf(consent.REPLY_FIELDS))
    language = _language_field(
        load_default=consent.DEFAULT_LANGUAGE,
        dump_default=consent.DEFAULT_LANGUAGE,
    )


def _reply_text() -> ma.fields.String:
    return ma.fields.String(validate=ma.validate.Length(min=1, max=consent.REPLY_MAX_LENGTH))


class RepliesSchema(ma.Schema):
    opt_out = _reply_text()
    opt_in = _reply_text()
    help = _reply_text()


class QuietHoursSchema(ma.Schema):
    start = ma.fields.String(
        required=True,
        validate=ma.validate.Regexp(consent.TIME_PATTERN.replace("$", r"\Z"), error="HH:MM"),
        metadata={"example": "21:00", "description": "HH:MM, the recipient's local time"},
    )
    end = ma.fields.String(
        required=True,
        validate=ma.validate.Regexp(consent.TIME_PATTERN.replace("$", r"\Z"), error="HH:MM"),
        metadata={"example": "08:00", "description": "HH:MM, the recipient's local time"},
    )


class ProjectSettingsSchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    keywords = ma.fields.List(
        ma.fields.Nested(KeywordSchema),
        metadata={"description": "the project's own keywords, added to the built-in ones"},
    )
    replies = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Nested(RepliesSchema),
        metadata={"description": "replies per language; en holds the defaults until changed"},
    )
    keyword_replies = ma.fields.String(metadata={"enum": list(consent.KEYWORD_REPLIES)})
    quiet_hours = ma.fields.Nested(QuietHoursSchema, allow_none=True)


class ProjectUpdateSchema(ma.Schema):
    keywords = ma.fields.List(
        ma.fields.Nested(KeywordSchema),
        validate=ma.validate.Length(max=consent.MAX_KEYWORDS),
        metadata={"description": "replaces the project's own keywords ([] removes them all)"},
    )
    replies = ma.fields.Dict(
        keys=_language_field(),
        values=ma.fields.Nested(RepliesSchema, allow_none=True),
        validate=ma.validate.Length(max=consent.MAX_LANGUAGES),
        metadata={
            "description": "the languages to change: each text given replaces that text; a new "
            "language needs all three; null removes a language (en returns to the defaults)"
        },
    )
    keyword_replies = ma.fields.String(
        validate=ma.validate.OneOf(consent.KEYWORD_REPLIES),
        metadata={
            "description": "ours: we answer keywords; twilio: Twilio's opt-out handling answers "
            "and we only record the opt-out or opt-in"
        },
    )
    quiet_hours = ma.fields.Nested(
        QuietHoursSchema,
        allow_none=True,
        metadata={"description": "hold business-initiated messages in these hours; null: off"},
    )


@blp.route("", methods=["GET"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.response(200, ProjectSettingsSchema)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def get_project(tenant):
    """The caller's project settings."""
    return consent.settings_dict(tenant.project)


@blp.route("", methods=["PATCH"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.arguments(ProjectUpdateSchema())
@blp.response(200, ProjectSettingsSchema)
@blp.alt_response(400, schema=ErrorSchema, description="a field is invalid: see errors")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def update_project(body, tenant):
    """Change the given settings (an empty body changes nothing); answers every setting.

    The built-in keywords (STOP, START, HELP and their synonyms) always apply and cannot be
    redefined; a keyword is answered in its language, whose replies must be set.
    """
    return consent.update_settings(get_state(), tenant.project_id, body)
