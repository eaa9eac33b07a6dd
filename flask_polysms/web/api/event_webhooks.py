"""``/v1/webhooks``: the project's webhook subscriptions and their delivery logs
(:mod:`flask_polysms.services.webhook_subscriptions`).

Subscriptions belong to the project, whatever the connector's environment; another project's
are answered 404, as if absent.
"""

from __future__ import annotations

import marshmallow as ma

from ...records import WEBHOOK_EVENT_TYPES
from ...services import webhook_subscriptions as service
from ...services.state import get_state
from .auth import AUTH_PARAMETERS, authenticated
from .blueprint import Blueprint
from .errors import ErrorSchema

URL_PREFIX = "/v1/webhooks"

blp = Blueprint(
    "polysms_event_webhooks",
    __name__,
    description="Webhooks for the project's own systems (Standard Webhooks)",
)

SECURITY = [{"ApiKey": [], "Connector": []}]


class SubscriptionRequestSchema(ma.Schema):
    url = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=service.MAX_URL_LENGTH),
        metadata={"description": "https:// (http:// too in debug or testing)"},
    )
    events = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(WEBHOOK_EVENT_TYPES)),
        required=True,
        validate=ma.validate.Length(min=1, max=len(WEBHOOK_EVENT_TYPES)),
        metadata={"description": "event types, each once"},
    )


class SubscriptionSchema(ma.Schema):
    id = ma.fields.String()
    url = ma.fields.String()
    events = ma.fields.List(
        ma.fields.String(metadata={"enum": list(WEBHOOK_EVENT_TYPES)}),
    )
    created_at = ma.fields.DateTime()


class CreatedSubscriptionSchema(SubscriptionSchema):
    secret = ma.fields.String(
        metadata={"description": "whsec_...: verifies the signatures; shown only here, once"}
    )


class SubscriptionListSchema(ma.Schema):
    webhooks = ma.fields.List(ma.fields.Nested(SubscriptionSchema))


class DeliveryQuerySchema(ma.Schema):
    limit = ma.fields.Integer(load_default=100, validate=ma.validate.Range(min=1, max=500))


class DeliverySchema(ma.Schema):
    id = ma.fields.String()
    event_type = ma.fields.String(metadata={"enum": list(WEBHOOK_EVENT_TYPES)})
    webhook_id = ma.fields.String(metadata={"description": "the event's id, the same on retries"})
    attempt = ma.fields.Integer(metadata={"description": "1 for the first"})
    status_code = ma.fields.Integer(
        allow_none=True, metadata={"description": "null when the receiver did not answer"}
    )
    error = ma.fields.String(allow_none=True)
    created_at = ma.fields.DateTime()


class DeliveryListSchema(ma.Schema):
    deliveries = ma.fields.List(ma.fields.Nested(DeliverySchema))


@blp.route("", methods=["POST"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.arguments(SubscriptionRequestSchema())
@blp.response(201, CreatedSubscriptionSchema)
@blp.alt_response(400, schema=ErrorSchema, description="bad URL or event types")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def create_webhook(body, tenant):
    """Subscribe a URL to event types. Each event is POSTed as JSON `{"type", "timestamp",
    "data"}`, signed as the Standard Webhooks specification says (headers `webhook-id`,
    `webhook-timestamp`, `webhook-signature`) with the `secret` returned here, once; an answer
    other than 2xx is retried with growing waits for 24 h."""
    subscription, secret = service.subscribe(
        get_state(), tenant.project_id, body["url"], body["events"]
    )
    return {**_subscription(subscription), "secret": secret}


@blp.route("", methods=["GET"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.response(200, SubscriptionListSchema)
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
def list_webhooks(tenant):
    """The project's subscriptions, oldest first (their secrets are never shown again)."""
    found = service.subscriptions(get_state(), tenant.project_id)
    return {"webhooks": [_subscription(s) for s in found]}


@blp.route("/<subscription_id>", methods=["DELETE"])
@authenticated
@blp.doc(parameters=AUTH_PARAMETERS, security=SECURITY)
@blp.response(204, description="deleted, with its delivery log; its retries stop")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such subscription in the project")
def delete_webhook(subscription_id, tenant):
    """Delete a subscription: nothing more is sent to it."""
    service.unsubscribe(get_state(), tenant.project_id, subscription_id)


@blp.route("/<subscription_id>/deliveries", methods=["GET"])
@authenticated
@blp.doc(
    parameters=[*AUTH_PARAMETERS, {"in": "query", "schema": DeliveryQuerySchema}],
    security=SECURITY,
)
@blp.arguments(DeliveryQuerySchema(), location="query")
@blp.response(200, DeliveryListSchema)
@blp.alt_response(400, schema=ErrorSchema, description="bad limit")
@blp.alt_response(401, schema=ErrorSchema, description="missing or invalid API key")
@blp.alt_response(404, schema=ErrorSchema, description="no such subscription in the project")
def list_deliveries(query, subscription_id, tenant):
    """Every delivery attempt to the subscription, newest first (at most `limit`)."""
    found = service.deliveries(get_state(), tenant.project_id, subscription_id, query["limit"])
    return {"deliveries": found}


def _subscription(subscription) -> dict:
    return {
        "id": subscription.id,
        "url": subscription.url,
        "events": subscription.events,
        "created_at": subscription.created_at,
    }
