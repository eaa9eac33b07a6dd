"""``GET <POLYSMS_URL_PREFIX><POLYSMS_METRICS_ENDPOINT>``: Prometheus metrics, off by default.

Unauthenticated, like the probes, and tenant-blind: the figures are totals over every project
(see :mod:`flask_polysms.services.observability`), in Prometheus' text exposition format. Restrict
who
reaches the path where the app is exposed (a reverse proxy, a network policy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app

from ...config import ConfigError

if TYPE_CHECKING:
    from flask import Flask

    from ...services.observability import Observability
    from ...services.state import PolySMSState

#: Where an app keeps its :class:`~flask_polysms.services.observability.Observability`.
EXTENSION_KEY = "polysms_prometheus"


def register_metrics(app: Flask, state: PolySMSState) -> None:
    """With ``POLYSMS_METRICS_ENDPOINT`` set: build the app's registry, serve it at that path
    (under ``POLYSMS_URL_PREFIX``) and time the Twilio webhooks. Call after the webhooks'
    blueprint is registered. Without the setting, nothing is added and nothing is imported."""
    path = state.settings.metrics_endpoint
    if path is None:
        return
    try:
        from ...services import observability
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("prometheus_client"):
            raise
        raise ConfigError(
            "POLYSMS_METRICS_ENDPOINT needs the prometheus_client package: "
            "pip install 'flask-polysms[metrics]'"
        ) from exc
    found = observability.build(state)
    app.extensions[EXTENSION_KEY] = found
    # A blueprint per app: the route's path is the app's setting.
    bp = Blueprint("polysms_prometheus", __name__)
    bp.add_url_rule(path, "metrics", metrics, methods=["GET"])
    app.register_blueprint(bp, url_prefix=state.settings.url_prefix or None)
    for webhook, endpoint in observability.WEBHOOK_ENDPOINTS.items():
        view = app.view_functions.get(endpoint)
        if view is not None:
            app.view_functions[endpoint] = _timed(view, found, webhook)


def metrics() -> Response:
    """Every metric of this app, in Prometheus' text format (read now, never cached)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    found: Observability = current_app.extensions[EXTENSION_KEY]
    response = Response(generate_latest(found.registry), content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def _timed(view: Callable[..., Any], found: Observability, webhook: str) -> Callable[..., Any]:
    """``view``, its time observed in the webhook histogram (errors included)."""
    timer = found.webhook_seconds.labels(webhook=webhook)

    @functools.wraps(view)
    def timed(*args: Any, **kwargs: Any) -> Any:
        with timer.time():
            return view(*args, **kwargs)

    return timed
