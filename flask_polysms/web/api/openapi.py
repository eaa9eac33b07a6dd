"""The OpenAPI document's common parts: the error responses every operation can give."""

from __future__ import annotations

from apispec import BasePlugin

from ...services.tenancy import AUTH_HEADER


class CommonErrorResponses(BasePlugin):
    """Document, on every operation, the errors every route can answer, where the route's own
    decorators did not: so a client (or a fuzzer) finds each status it can get in the document.

    Every route: 400 (e.g. NUL characters), 413 (body cap), 503 (database unavailable).
    Authenticated routes: 401, 403 and 404 (the API key and connector rules)
    and 429 (the project's request budget).
    """

    EVERY_ROUTE = {
        "400": "invalid input",
        "413": "request body over the size cap",
        "503": "the database is unavailable; retry (see Retry-After)",
    }
    AUTHENTICATED = {
        "401": "missing or invalid API key",
        "403": "the API key's account is not the connector's",
        "404": "unknown connector, or no such resource in this project",
        "429": "the project's request budget is spent (POLYSMS_READ_RATE_LIMIT); see Retry-After",
    }

    _path_parameters: frozenset = frozenset()

    def path_helper(self, path=None, operations=None, parameters=None, **kwargs) -> None:
        # Called just before operation_helper for the same path: its parameters (the auth
        # headers of routes declaring them with ``@blp.route(parameters=...)``) apply to each
        # operation of the path.
        self._path_parameters = frozenset(
            p.get("name") for p in (parameters or []) if isinstance(p, dict)
        )

    def operation_helper(self, path=None, operations=None, **kwargs) -> None:
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for operation in (operations or {}).values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            names = {p.get("name") for p in operation.get("parameters", []) if isinstance(p, dict)}
            names |= self._path_parameters
            extra = dict(self.EVERY_ROUTE)
            if AUTH_HEADER in names:
                extra.update(self.AUTHENTICATED)
            for status, description in extra.items():
                operation["responses"].setdefault(
                    status, {"description": description, "content": error}
                )
