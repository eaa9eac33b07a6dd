"""``/v1/sms-templates``: a project's SMS templates.

The rules live in :mod:`flask_polysms.services.templates`; this module only parses, authenticates,
calls the
service and answers. The schemas repeat the form rules (lengths, tokens, sender form) so that the
OpenAPI document states them and one 400 names every field at fault; whether a sender is
provisioned for the project is checked by the service.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import url_for

from ...phone import MESSAGING_SERVICE_SID_PATTERN
from ...records import Template
from ...services import templates as service
from ...services.state import get_state
from ...services.tenancy import Tenant
from .auth import AUTH_PARAMETERS, authenticated
from .blueprint import Blueprint
from .errors import ErrorSchema

URL_PREFIX = "/v1/sms-templates"

blp = Blueprint(
    "polysms_templates",
    __name__,
    description="SMS templates: a title, a body with tokens, a sender per environment",
)

SECURITY = [{"ApiKey": [], "Connector": []}]
TOKENS_HELP = "tokens: ${attribute}, {{entity:name}}, {{vrbl:ID}}"


def _rule(check):
    """A marshmallow validator raising the messages of one of the service's field rules."""

    def validate(value: Any) -> None:
        problems = check(value)
        if problems:
            raise ma.ValidationError(problems)

    return validate


def _title_field(**kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        validate=_rule(service.title_problems),
        metadata={
            "description": "unique in the project; the name the agent's code sends it by",
            "example": "reservation_confirmation",
            "minLength": 1,
            "maxLength": service.TITLE_MAX_LENGTH,
        },
        **kwargs,
    )


def _body_field(**kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        validate=_rule(service.body_problems),
        metadata={
            "description": TOKENS_HELP,
            "example": "See you on {{entity:booking_date}} at ${property_name}.",
            "minLength": 1,
            "maxLength": service.BODY_MAX_LENGTH,
        },
        **kwargs,
    )


def _sender_field(**kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        validate=_rule(service.address_problems),
        metadata={
            "description": "an E.164 number provisioned for the project in this environment, "
            f"or a Messaging Service SID ({MESSAGING_SERVICE_SID_PATTERN})",
            "example": "+14155552671",
        },
        **kwargs,
    )


class EnvPhoneNumbersSchema(ma.Schema):
    """The sender per environment. ``live`` is required; without its own sender, sandbox and
    pre-release send from the session's number, never from the live sender."""

    live = _sender_field(required=True)
    sandbox = _sender_field(allow_none=True)
    # attribute: loaded and dumped under the environment's own name, which has a dash.
    pre_release = _sender_field(data_key="pre-release", attribute="pre-release", allow_none=True)


class TemplateCreateSchema(ma.Schema):
    title = _title_field(required=True)
    body = _body_field(required=True)
    env_phone_numbers = ma.fields.Nested(EnvPhoneNumbersSchema, required=True)


class TemplatePatchSchema(ma.Schema):
    """Only the fields given change; ``env_phone_numbers`` is replaced as a whole."""

    title = _title_field()
    body = _body_field()
    env_phone_numbers = ma.fields.Nested(EnvPhoneNumbersSchema)


class TemplateSchema(ma.Schema):
    id = ma.fields.String()
    title = ma.fields.String()
    body = ma.fields.String()
    env_phone_numbers = ma.fields.Nested(EnvPhoneNumbersSchema)
    created_at = ma.fields.DateTime()
    updated_at = ma.fields.DateTime()


class TemplateListSchema(ma.Schema):
    templates = ma.fields.List(ma.fields.Nested(TemplateSchema))


def _values_field(description: str) -> ma.fields.Dict:
    return ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Raw(allow_none=True),
        load_default=None,
        metadata={"description": description},
    )


class TemplatePreviewRequestSchema(ma.Schema):
    """Every part optional; a value that is null or absent is a missing token."""

    variant = _values_field(
        "values for ${attribute}; absent: the project's variant attributes for the connector's "
        "environment"
    )
    entities = _values_field("values for {{entity:name}}")
    variables = _values_field("values for {{vrbl:ID}}")


class TemplatePreviewSchema(ma.Schema):
    text = ma.fields.String(
        metadata={
            "description": "the body with the given values filled in; a token without a value is "
            "left as written (such a template would fail to send, see missing_tokens)"
        }
    )
    encoding = ma.fields.String(metadata={"enum": ["GSM-7", "UCS-2"]})
    segments = ma.fields.Integer(
        metadata={"description": "SMS segments of text as shown (an estimate with missing tokens)"}
    )
    missing_tokens = ma.fields.List(
        ma.fields.String(), metadata={"description": "tokens without a value, as written"}
    )


def template_dict(template: Template) -> dict[str, Any]:
    """A template as the API shows it."""
    return {
        "id": template.id,
        "title": template.title,
        "body": template.body,
        "env_phone_numbers": dict(template.env_phone_numbers),
        "created_at": template.created_at,
        "updated_at": template.updated_at,
    }


def _created(template: Template):
    location = url_for("polysms_templates.get_template", template_id=template.id)
    return template_dict(template), 201, {"Location": location}


UNAUTHORIZED = "missing or invalid API key"
FORBIDDEN = "the API key's account is not the connector's"
NOT_FOUND = "unknown connector, or no such template in this project"


@blp.route("", methods=["POST"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.arguments(TemplateCreateSchema())
@blp.response(201, TemplateSchema)
@blp.alt_response(400, schema=ErrorSchema, description="a field is invalid: see errors")
@blp.alt_response(401, schema=ErrorSchema, description=UNAUTHORIZED)
@blp.alt_response(403, schema=ErrorSchema, description=FORBIDDEN)
@blp.alt_response(404, schema=ErrorSchema, description="unknown connector")
@blp.alt_response(409, schema=ErrorSchema, description="the project has a template of this title")
def create_template(body: dict, tenant: Tenant):
    """Create a template.

    Every sender must be provisioned for the project in its environment (or be a Messaging
    Service SID); a body whose tokens do not parse is refused.
    """
    template = service.create_template(
        get_state(),
        tenant.project_id,
        title=body["title"],
        body=body["body"],
        env_phone_numbers=body["env_phone_numbers"],
    )
    return _created(template)


@blp.route("", methods=["GET"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.response(200, TemplateListSchema)
@blp.alt_response(401, schema=ErrorSchema, description=UNAUTHORIZED)
@blp.alt_response(403, schema=ErrorSchema, description=FORBIDDEN)
@blp.alt_response(404, schema=ErrorSchema, description="unknown connector")
def list_templates(tenant: Tenant):
    """The project's templates, ordered by title."""
    return {
        "templates": [
            template_dict(t) for t in service.list_templates(get_state(), tenant.project_id)
        ]
    }


@blp.route("/<template_id>", methods=["GET"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.response(200, TemplateSchema)
@blp.alt_response(401, schema=ErrorSchema, description=UNAUTHORIZED)
@blp.alt_response(403, schema=ErrorSchema, description=FORBIDDEN)
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
def get_template(template_id: str, tenant: Tenant):
    """One template of the project."""
    return template_dict(service.get_template(get_state(), tenant.project_id, template_id))


@blp.route("/<template_id>", methods=["PATCH"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.arguments(TemplatePatchSchema())
@blp.response(200, TemplateSchema)
@blp.alt_response(400, schema=ErrorSchema, description="a field is invalid: see errors")
@blp.alt_response(401, schema=ErrorSchema, description=UNAUTHORIZED)
@blp.alt_response(403, schema=ErrorSchema, description=FORBIDDEN)
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
@blp.alt_response(409, schema=ErrorSchema, description="another template has this title")
def update_template(body: dict, template_id: str, tenant: Tenant):
    """Change the given fields; `env_phone_numbers`, when given, replaces the senders as a whole
    (`live` again required). An empty body changes nothing."""
    return template_dict(
        service.update_template(get_state(), tenant.project_id, template_id, **body)
    )


@blp.route("/<template_id>", methods=["DELETE"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.response(204)
@blp.alt_response(401, schema=ErrorSchema, description=UNAUTHORIZED)
@blp.alt_response(403, schema=ErrorSchema, description=FORBIDDEN)
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
def delete_template(template_id: str, tenant: Tenant):
    """Delete a template."""
    service.delete_template(get_state(), tenant.project_id, template_id)


@blp.route("/<template_id>/duplicate", methods=["POST"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.response(201, TemplateSchema)
@blp.alt_response(401, schema=ErrorSchema, description=UNAUTHORIZED)
@blp.alt_response(403, schema=ErrorSchema, description=FORBIDDEN)
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
def duplicate_template(template_id: str, tenant: Tenant):
    """Copy a template under the first free title of `<title>_copy`, `<title>_copy2`, … (the
    end of a long title is cut so the new title stays within 100 characters)."""
    return _created(service.duplicate_template(get_state(), tenant.project_id, template_id))


@blp.route("/<template_id>/preview", methods=["POST"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.arguments(TemplatePreviewRequestSchema(), required=False)
@blp.response(200, TemplatePreviewSchema)
@blp.alt_response(400, schema=ErrorSchema, description="invalid body: see errors")
@blp.alt_response(401, schema=ErrorSchema, description=UNAUTHORIZED)
@blp.alt_response(403, schema=ErrorSchema, description=FORBIDDEN)
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
def preview_template(body: dict, template_id: str, tenant: Tenant):
    """The template filled with the given values, its encoding, segments and missing tokens.

    A token without a value stays in `text` as written and is listed in `missing_tokens`; a send
    with missing values fails rather than sending such a text.
    """
    preview = service.preview_template(
        get_state(),
        tenant.project_id,
        template_id,
        environment=tenant.environment,
        variant=body.get("variant"),
        entities=body.get("entities"),
        variables=body.get("variables"),
    )
    return {
        "text": preview.text,
        "encoding": preview.encoding,
        "segments": preview.segments,
        "missing_tokens": preview.missing_tokens,
    }
