"""``/v1/opt-outs``: the project's current opt-outs, opting a pair out or back in, and a user
number's history (:mod:`flask_polysms.services.opt_outs`).

Opt-outs cover the project's senders of every environment. Another project's records are never
shown: its senders are not the caller's (400 to opt out, 404 to opt in) and its lists are not
read.
"""

from __future__ import annotations

import marshmallow as ma

from ...records import OPT_OUT_SOURCES
from ...services import opt_outs as service
from ...services.cursors import MAX_CURSOR_LENGTH
from ...services.state import get_state
from .auth import AUTH_PARAMETERS, authenticated
from .blueprint import Blueprint
from .errors import ErrorSchema
from .schemas import E164

URL_PREFIX = "/v1/opt-outs"

blp = Blueprint("polysms_opt_outs", __name__, description="Opt-outs and their history")

SECURITY = [{"ApiKey": [], "Connector": []}]


def _sender(**kwargs) -> ma.fields.String:
    return ma.fields.String(
        validate=ma.validate.Length(min=1, max=100),
        metadata={"description": "one of the project's senders: E.164 number or MG SID"},
        **kwargs,
    )


def _cursor() -> ma.fields.String:
    return ma.fields.String(
        validate=ma.validate.Length(max=MAX_CURSOR_LENGTH),
        metadata={"description": "the next_cursor of the previous page, unchanged"},
    )


def _limit() -> ma.fields.Integer:
    return ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=200))


class OptOutQuerySchema(ma.Schema):
    user_number = E164()
    sender = _sender()
    cursor = _cursor()
    limit = _limit()


class OptOutSchema(ma.Schema):
    user_number = ma.fields.String()
    sender = ma.fields.String()
    keyword = ma.fields.String(
        allow_none=True, metadata={"description": "as the user wrote it; null for API changes"}
    )
    source = ma.fields.String(allow_none=True, metadata={"enum": list(OPT_OUT_SOURCES)})
    created_at = ma.fields.DateTime()


class OptOutPageSchema(ma.Schema):
    opt_outs = ma.fields.List(ma.fields.Nested(OptOutSchema))
    next_cursor = ma.fields.String(allow_none=True)


class PairSchema(ma.Schema):
    user_number = E164(required=True)
    sender = _sender(required=True)


class HistoryQuerySchema(ma.Schema):
    user_number = E164(required=True)
    cursor = _cursor()
    limit = _limit()


class OptOutEventSchema(OptOutSchema):
    action = ma.fields.String(metadata={"enum": ["opt_out", "opt_in"]})
    api_key_id = ma.fields.String(
        allow_none=True, metadata={"description": "the API key that made an api change"}
    )


class HistoryPageSchema(ma.Schema):
    events = ma.fields.List(ma.fields.Nested(OptOutEventSchema))
    next_cursor = ma.fields.String(allow_none=True)


# The query schemas are named again in @blp.doc: flask-smorest's manual doc replaces the parameter
# list that @blp.arguments(location="query") built.
@blp.route("", methods=["GET"])
@authenticated
@blp.doc(
    parameters=[*AUTH_PARAMETERS, {"in": "query", "schema": OptOutQuerySchema}],
    security=SECURITY,
)
@blp.arguments(OptOutQuerySchema(), location="query")
@blp.response(200, OptOutPageSchema)
@blp.alt_response(400, schema=ErrorSchema, description="bad filter or cursor")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def list_opt_outs(query, tenant):
    """The project's current opt-outs, in the order the pairs opted out; follow `next_cursor`
    (opaque, valid for this project only) for the next page."""
    page = service.list_opt_outs(
        get_state(),
        tenant,
        user_number=query.get("user_number"),
        sender=query.get("sender"),
        cursor=query.get("cursor"),
        limit=query["limit"],
    )
    return {"opt_outs": page.items, "next_cursor": page.next_cursor}


@blp.route("", methods=["POST"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.arguments(PairSchema())
@blp.response(201, OptOutSchema, description="opted out now (source api)")
@blp.alt_response(200, schema=OptOutSchema, description="opted out already: the existing record")
@blp.alt_response(400, schema=ErrorSchema, description="bad number, or not a sender of the project")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(409, schema=ErrorSchema, description="the pair kept changing meanwhile; retry")
def create_opt_out(body, tenant):
    """Opt a user number out of one of the project's senders; every send to the pair is then
    suppressed until it opts back in."""
    record, created = service.opt_out(get_state(), tenant, body["user_number"], body["sender"])
    return record, (201 if created else 200)


@blp.route("", methods=["DELETE"])
@authenticated
@blp.doc(
    parameters=[*AUTH_PARAMETERS, {"in": "query", "schema": PairSchema}],
    security=SECURITY,
)
@blp.arguments(PairSchema(), location="query")
@blp.response(204, description="opted back in (source api, kept in the history)")
@blp.alt_response(400, schema=ErrorSchema, description="bad number or sender")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="the pair is not opted out")
def delete_opt_out(query, tenant):
    """Opt a user number back into one of the project's senders."""
    service.opt_in(get_state(), tenant, query["user_number"], query["sender"])


@blp.route("/history", methods=["GET"])
@authenticated
@blp.doc(
    parameters=[*AUTH_PARAMETERS, {"in": "query", "schema": HistoryQuerySchema}],
    security=SECURITY,
)
@blp.arguments(HistoryQuerySchema(), location="query")
@blp.response(200, HistoryPageSchema)
@blp.alt_response(400, schema=ErrorSchema, description="bad number or cursor")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def opt_out_history(query, tenant):
    """Every opt-out and opt-in of a user number in the project, oldest first, with its source
    (keyword, carrier, api, import) and, for api changes, the id of the API key."""
    page = service.history(
        get_state(), tenant, query["user_number"], cursor=query.get("cursor"), limit=query["limit"]
    )
    return {"events": page.items, "next_cursor": page.next_cursor}
