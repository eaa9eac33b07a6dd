"""``Idempotency-Key`` on a route: ``@idempotent(blp)`` under ``@authenticated``.

A repeat of a request with the same key (same project and route) answers the first response,
status and body, and runs nothing; another body under the key is 422, a repeat while the first
runs is 409, a key that is empty or over 255 characters is 400. A request that fails (any
4xx or 5xx) has written nothing: its key is released (see :mod:`...services.idempotency`).
"""

from __future__ import annotations

import logging
from functools import wraps

from flask import Response, request

from ...services import idempotency
from ...services.state import get_state
from ...services.units import unit_of_work
from .auth import AUTH_PARAMETERS
from .errors import ErrorSchema

log = logging.getLogger("flask_polysms.api")

IDEMPOTENCY_KEY_PARAMETER = {
    "in": "header",
    "name": idempotency.KEY_HEADER,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH},
    "description": (
        "Makes a retry safe: a repeat with this key (within 24 h) answers the first response "
        "and does nothing again."
    ),
}
#: Set on a response answered again from the key's first request.
REPLAYED_HEADER = "Idempotent-Replayed"
# Headers of the first response that are answered again with it.
KEPT_HEADERS = ("Location", "Retry-After")


class _Failed(Exception):
    """A view that answered an error without raising: its transaction is rolled back too."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def idempotent(blp):
    """Give the authenticated route of ``blp`` below it the ``Idempotency-Key`` header, with its
    OpenAPI entry (the header and the auth headers, 409 and 422): the view runs in one
    transaction with the record of its response. Declare no other ``parameters`` in the route's
    ``@blp.doc`` (put them on ``@blp.route``): this decorator's would replace them."""

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            key = request.headers.get(idempotency.KEY_HEADER)
            if key is None:
                return view(*args, **kwargs)
            # Under @authenticated(caller=True) the view gets the Caller: the key needs its project.
            tenant = kwargs["caller"].tenant() if "caller" in kwargs else kwargs["tenant"]
            return _run_once(view, args, kwargs, tenant.project_id, key)

        wrapper._apidoc = getattr(view, "_apidoc", {})  # keep flask-smorest's docs
        documented = blp.doc(parameters=[*AUTH_PARAMETERS, IDEMPOTENCY_KEY_PARAMETER])(wrapper)
        documented = blp.alt_response(
            409,
            schema=ErrorSchema,
            description="the first request with this Idempotency-Key is still being handled",
        )(documented)
        return blp.alt_response(
            422,
            schema=ErrorSchema,
            description="this Idempotency-Key was used for another request (another body)",
        )(documented)

    return decorate


def _run_once(view, args, kwargs, project_id: str, key: str) -> Response:
    state = get_state()
    idempotency.check_key(key)
    asked = idempotency.fingerprint(
        request.method,
        request.path,
        request.get_data(cache=True),
        request.get_json(silent=True) if request.is_json else None,
    )
    held = idempotency.claim(state, project_id, request.url_rule.endpoint, key, asked)
    if held.response is not None:
        return _replay(held.response)

    def work() -> Response:
        response = view(*args, **kwargs)
        if response.status_code >= 400:
            raise _Failed(response)
        idempotency.finish(state, held, _snapshot(response))
        return response

    try:
        return unit_of_work(state, work)
    except _Failed as failed:
        _release(state, held)
        return failed.response
    except BaseException:
        _release(state, held)
        raise


def _release(state, held) -> None:
    try:
        idempotency.release(state, held)
    except Exception:  # the database may be what failed: the key is taken over later
        log.warning("idempotency key %s not released; taken over after a while", held.id[:12])


def _snapshot(response: Response) -> dict:
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    return {
        "status": response.status_code,
        "body": response.get_data(as_text=True),
        "content_type": response.content_type,
        "headers": headers,
    }


def _replay(saved: dict) -> Response:
    response = Response(saved["body"], status=saved["status"], content_type=saved["content_type"])
    response.headers.update(saved["headers"])
    response.headers[REPLAYED_HEADER] = "true"
    return response
