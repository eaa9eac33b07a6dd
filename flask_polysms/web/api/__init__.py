"""The HTTP API: flask-smorest blueprints mounted on the host app, one error shape.

Blueprints only parse, authenticate and call the services. Every error of every route answers
``{"detail": ..., "errors"?: {field: [messages]}}``; invalid input is 400, never 422. The parts:
``blueprint`` (our Blueprint and parser), ``errors`` (the error shape and handlers), ``guards``
(what every request goes through), ``auth`` (the caller and its budget), ``openapi`` (the
document's common responses), then a module per group of routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...services.rate_limits import ProjectRateLimit
from ...services.tenancy import AUTH_HEADER, CONNECTOR_HEADER
from .blueprint import API_CONFIG_PREFIX, PolySMSApi
from .errors import register_routing_errors
from .openapi import CommonErrorResponses

if TYPE_CHECKING:
    from flask import Flask

    from ...services.state import PolySMSState


def register_api(app: Flask, state: PolySMSState) -> None:
    """Mount every blueprint on ``app`` and serve the OpenAPI document and its browsable view."""
    from . import (
        conversations,
        docs,
        event_webhooks,
        health,
        messages,
        metrics,
        operators,
        opt_outs,
        outbound,
        project,
        prometheus,
        senders,
        templates,
        webhooks,
    )

    prefix = state.settings.url_prefix
    config = app.config
    config.setdefault("POLYSMS_API_TITLE", "flask-polysms")
    config.setdefault("POLYSMS_API_VERSION", "v1")
    config.setdefault("POLYSMS_OPENAPI_VERSION", "3.0.3")
    config.setdefault("POLYSMS_OPENAPI_URL_PREFIX", f"{prefix}/v1")
    config.setdefault("POLYSMS_OPENAPI_JSON_PATH", "openapi.json")
    api = PolySMSApi(
        app,
        config_prefix=API_CONFIG_PREFIX,
        spec_kwargs={
            "components": {
                "securitySchemes": {
                    "ApiKey": {"type": "apiKey", "in": "header", "name": AUTH_HEADER},
                    "Connector": {"type": "apiKey", "in": "header", "name": CONNECTOR_HEADER},
                }
            },
            "extra_plugins": [CommonErrorResponses()],
        },
    )
    state.limiter = ProjectRateLimit(
        state.settings.rate_limit, state.settings.rate_limit_storage_url
    )
    state.read_limiter = ProjectRateLimit(
        state.settings.read_rate_limit,
        storage=state.limiter.storage,
        namespace="requests",
        what="request budget",
        fail_open=True,
    )
    modules = (
        outbound,
        conversations,
        operators,
        messages,
        metrics,
        senders,
        templates,
        project,
        opt_outs,
        webhooks,
        event_webhooks,
    )
    api.deferring_docs(True)
    for module in modules:
        api.register_blueprint(module.blp, url_prefix=prefix + module.URL_PREFIX)
    api.deferring_docs(False)
    # The browsable reference, from installed packages only (flask-smorest's loads a CDN).
    app.register_blueprint(docs.bp, url_prefix=f"{prefix}/v1")
    if state.settings.health_routes:
        app.register_blueprint(health.bp, url_prefix=prefix or None)
    prometheus.register_metrics(app, state)  # POLYSMS_METRICS_ENDPOINT; times the webhooks
    register_routing_errors(app, prefix + "/v1")
