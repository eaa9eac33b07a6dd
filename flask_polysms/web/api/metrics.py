"""``GET /v1/sms/metrics``: delivery figures for the caller's project and environment."""

from __future__ import annotations

from datetime import date

import marshmallow as ma

from ...clock import utcnow
from ...errors import InvalidInput
from ...services.metrics import summarise
from ...services.state import get_state
from .auth import AUTH_PARAMETERS, authenticated
from .blueprint import Blueprint
from .errors import ErrorSchema

URL_PREFIX = "/v1/sms"
MAX_DAYS = 366

blp = Blueprint("polysms_metrics", __name__, description="SMS delivery metrics")


class MetricsQuerySchema(ma.Schema):
    start = ma.fields.Date(metadata={"description": "first day (UTC), default 30 days ago"})
    end = ma.fields.Date(metadata={"description": "last day (UTC), default today"})


class DayFiguresSchema(ma.Schema):
    date = ma.fields.String()
    sent = ma.fields.Integer()
    delivered = ma.fields.Integer()
    undelivered = ma.fields.Integer()
    failed = ma.fields.Integer()
    suppressed = ma.fields.Integer()
    api_failures = ma.fields.Integer()
    conversations = ma.fields.Integer()
    agent_errors = ma.fields.Integer()
    inbound = ma.fields.Integer()
    inbound_dropped = ma.fields.Integer()
    delivery_rate = ma.fields.Float(allow_none=True)


class MetricsSchema(DayFiguresSchema):
    start = ma.fields.String()
    end = ma.fields.String()
    environment = ma.fields.String()
    by_day = ma.fields.List(ma.fields.Nested(DayFiguresSchema))


@blp.route("/metrics", methods=["GET"], parameters=AUTH_PARAMETERS)
@authenticated
@blp.arguments(MetricsQuerySchema(), location="query")
@blp.response(200, MetricsSchema)
@blp.alt_response(400, schema=ErrorSchema, description="bad date range")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def get_metrics(query, tenant):
    """Sent, delivered, undelivered, failed, suppressed, API failures and delivery rate."""
    today = utcnow().date()
    end = query.get("end") or today
    # Not before 0001-01-01, the first day a date can be.
    start = query.get("start") or date.fromordinal(max(1, end.toordinal() - 29))
    if start > end:
        raise InvalidInput("start is after end", errors={"start": ["must be on or before end"]})
    if (end - start).days >= MAX_DAYS:
        raise InvalidInput(f"at most {MAX_DAYS} days at once", errors={"start": ["range too long"]})
    return summarise(get_state(), tenant.project_id, tenant.environment, start, end)
