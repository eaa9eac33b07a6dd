"""``/v1/senders``: the caller's senders, their compliance reports, their registration state and
the Messaging Service a number belongs to.

Scoped to the authenticated project, across its environments (a sender's facts do not depend on the
connector's environment); another project's sender answers 404. ``<sender>`` is an E.164 number
(``+14155552671``, or URL-encoded ``%2B14155552671``) or a Messaging Service SID.
"""

from __future__ import annotations

import marshmallow as ma
from webargs.fields import DelimitedList

from ...records import ENVIRONMENTS, canonical_environment
from ...services.sender_facts import NUMBER_TYPES, REGISTRATION_STATES
from ...services.senders import (
    CAMPAIGN_ID_MAX_LENGTH,
    UNSET,
    change_sender,
    find_sender,
    list_project_senders,
    sender_compliance,
    sender_dict,
)
from ...services.state import get_state
from .auth import AUTH_PARAMETERS, authenticated
from .blueprint import Blueprint
from .errors import ErrorSchema

URL_PREFIX = "/v1/senders"

blp = Blueprint("polysms_senders", __name__, description="Senders and their compliance")

_SENDER_PATH = {
    "in": "path",
    "name": "sender",
    "required": True,
    "description": "An E.164 number (the + may be sent as %2B) or a Messaging Service SID",
    "schema": {"type": "string"},
}


def _known_environment(value: str) -> bool:
    if canonical_environment(value) is None:
        raise ma.ValidationError(f"one of {', '.join(ENVIRONMENTS)} (or dev)")
    return True


class SenderQuerySchema(ma.Schema):
    environment = ma.fields.String(
        validate=_known_environment,
        metadata={"description": "only this environment's senders (dev means sandbox)"},
    )


class SenderSchema(ma.Schema):
    address = ma.fields.String(metadata={"description": "E.164 number or Messaging Service SID"})
    environment = ma.fields.String(metadata={"enum": list(ENVIRONMENTS)})
    kind = ma.fields.String(metadata={"enum": ["number", "messaging_service"]})
    country = ma.fields.String(
        allow_none=True, metadata={"description": "ISO 3166 alpha-2; null when unknown"}
    )
    number_type = ma.fields.String(allow_none=True, metadata={"enum": list(NUMBER_TYPES)})
    registration = ma.fields.String(metadata={"enum": list(REGISTRATION_STATES)})
    campaign_id = ma.fields.String(allow_none=True)
    messaging_service_sid = ma.fields.String(
        allow_none=True,
        metadata={"description": "the Messaging Service this number belongs to; null for none"},
    )


class SenderListSchema(ma.Schema):
    senders = ma.fields.List(ma.fields.Nested(SenderSchema))


class SenderUpdateSchema(ma.Schema):
    registration = ma.fields.String(
        validate=ma.validate.OneOf(REGISTRATION_STATES),
        metadata={"description": "the sender's registration state"},
    )
    campaign_id = ma.fields.String(
        allow_none=True,
        validate=ma.validate.Length(min=1, max=CAMPAIGN_ID_MAX_LENGTH),
        metadata={
            "description": "A2P 10DLC campaign id; only with `registered` (required then for a US "
            "long code); null clears it"
        },
    )
    messaging_service_sid = ma.fields.String(
        allow_none=True,
        # \Z, not $: Regexp uses re.match, and $ also matches before a trailing newline.
        validate=ma.validate.Regexp(
            r"\AMG[0-9a-fA-F]{32}\Z", error="a Messaging Service SID: MG + 32 hex characters"
        ),
        metadata={
            "description": "the Messaging Service (a sender provisioned for the project) this "
            "number belongs to: a STOP through any of its numbers opts the user out of all of "
            "them; null: none",
            "pattern": "^MG[0-9a-fA-F]{32}$",
        },
    )


class ComplianceQuerySchema(ma.Schema):
    destinations = DelimitedList(
        ma.fields.String(
            # \Z, not $: Regexp uses re.match, and $ also matches before a trailing newline.
            validate=ma.validate.Regexp(r"\A[A-Za-z]{2}\Z", error="an ISO 3166 alpha-2 code")
        ),
        metadata={
            "description": "comma-separated countries to check (GB,US) instead of those of the "
            "users the sender has talked to"
        },
    )


class ThroughputSchema(ma.Schema):
    mps = ma.fields.Integer(allow_none=True, metadata={"description": "0: blocked; null: unknown"})
    note = ma.fields.String()


class ProblemSchema(ma.Schema):
    severity = ma.fields.String(metadata={"enum": ["error", "warning"]})
    message = ma.fields.String()


class DestinationSchema(ma.Schema):
    country = ma.fields.String()
    two_way = ma.fields.Boolean(allow_none=True, metadata={"description": "null: unknown"})
    note = ma.fields.String()


class ComplianceReportSchema(ma.Schema):
    sender = ma.fields.String()
    environment = ma.fields.String()
    kind = ma.fields.String()
    country = ma.fields.String(allow_none=True)
    number_type = ma.fields.String(allow_none=True)
    registration = ma.fields.String()
    campaign_id = ma.fields.String(allow_none=True)
    missing = ma.fields.List(ma.fields.String(), metadata={"description": "requirements not met"})
    throughput = ma.fields.Nested(ThroughputSchema)
    problems = ma.fields.List(ma.fields.Nested(ProblemSchema))
    blocked = ma.fields.Boolean(
        metadata={"description": "whether the send-time guard blocks this sender"}
    )
    guard_enabled = ma.fields.Boolean(
        metadata={"description": "whether the guard runs for this project"}
    )
    destinations = ma.fields.List(ma.fields.Nested(DestinationSchema))
    destinations_source = ma.fields.String(metadata={"enum": ["sessions", "request"]})
    destinations_truncated = ma.fields.Boolean(
        metadata={"description": "only the newest sessions were read for destinations"}
    )


# The query schemas are named again in @blp.doc because flask-smorest's manual doc *replaces* the
# parameter list that @blp.arguments(location="query") built: without them the OpenAPI document
# would show the auth headers only.
@blp.route("", methods=["GET"])
@authenticated
@blp.doc(parameters=[*AUTH_PARAMETERS, {"in": "query", "schema": SenderQuerySchema}])
@blp.arguments(SenderQuerySchema(), location="query")
@blp.response(200, SenderListSchema)
@blp.alt_response(400, schema=ErrorSchema, description="unknown environment")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def list_senders(query, tenant):
    """The project's senders (every environment unless one is named) with their facts."""
    senders = list_project_senders(get_state(), tenant.project_id, query.get("environment"))
    return {"senders": [sender_dict(s) for s in senders]}


@blp.route("/<sender>", methods=["PATCH"])
@authenticated
@blp.doc(parameters=[*AUTH_PARAMETERS, _SENDER_PATH])
@blp.arguments(SenderUpdateSchema())
@blp.response(200, SenderSchema)
@blp.alt_response(
    400, schema=ErrorSchema, description="bad state, campaign id or Messaging Service"
)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such sender in this project")
def update_sender(body, sender, tenant):
    """Record the sender's registration state, A2P 10DLC campaign id and Messaging Service."""
    updated = change_sender(
        get_state(),
        sender,
        registration=body.get("registration"),
        campaign_id=body.get("campaign_id", UNSET),
        messaging_service_sid=body.get("messaging_service_sid", UNSET),
        project_id=tenant.project_id,
    )
    return sender_dict(updated)


@blp.route("/<sender>/compliance", methods=["GET"])
@authenticated
@blp.doc(
    parameters=[*AUTH_PARAMETERS, _SENDER_PATH, {"in": "query", "schema": ComplianceQuerySchema}]
)
@blp.arguments(ComplianceQuerySchema(), location="query")
@blp.response(200, ComplianceReportSchema)
@blp.alt_response(400, schema=ErrorSchema, description="bad destinations")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such sender in this project")
def get_compliance(query, sender, tenant):
    """What the sender lacks, the throughput to expect, whether the guard blocks it, and whether
    its destination countries support two-way SMS."""
    state = get_state()
    record = find_sender(state, sender, tenant.project_id)
    return sender_compliance(state, record, query.get("destinations"))
