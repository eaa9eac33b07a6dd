"""``GET /healthz`` and ``GET /readyz``: probes for a load balancer or an orchestrator.

Both are unauthenticated and say nothing about any tenant: ``healthz`` that the process serves,
``readyz`` whether what a request needs answers now (the database; Redis when the scheduler
uses it), as ``{"database": bool, "redis": bool | null}`` with 200 or 503.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from ...services.state import get_state

log = logging.getLogger("flask_polysms.api")

bp = Blueprint("polysms_health", __name__)


@bp.get("/healthz")
def healthz():
    """200 while the process serves requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """200 when the database (and Redis, if used) answer; 503 naming what is down."""
    state = get_state()
    database = state.store.available()
    redis = state.scheduler.broker_available()
    ready = database and redis is not False
    if not ready:
        log.warning("not ready: database %s, redis %s", database, redis)
    response = jsonify(database=database, redis=redis)
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response
