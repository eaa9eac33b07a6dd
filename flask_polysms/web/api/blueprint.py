"""The blueprint and request parser of every API route, and flask-smorest's Api without its
app-wide error handler."""

from __future__ import annotations

import threading
from typing import Any

from flask_smorest import Api
from flask_smorest import Blueprint as SmorestBlueprint
from webargs.flaskparser import FlaskParser

from ...errors import InvalidInput
from .errors import ErrorSchema, register_handlers
from .guards import check_request

#: flask-smorest reads its settings from app.config keys with this prefix.
API_CONFIG_PREFIX = "POLYSMS_"


class Parser(FlaskParser):
    """webargs parser answering 400 (the product's API reference), not webargs' 422."""

    DEFAULT_VALIDATION_STATUS = 400

    def load_json(self, req, schema):
        """The JSON body; a body sent as anything but JSON is a 400 that says so.

        webargs reads a non-JSON body as "no body", which would answer a form-encoded request
        with "field missing" for every required field.
        """
        # content_length first: a form body may have been read (and its stream consumed) already.
        if not req.is_json and (req.content_length or req.get_data(cache=True)):
            raise InvalidInput(
                f"the request body must be JSON, sent with Content-Type: application/json "
                f"(got {req.mimetype or 'no Content-Type'})"
            )
        try:
            return super().load_json(req, schema)
        except RecursionError as exc:  # parsed again here, deeper in the stack than at the edge
            raise InvalidInput("invalid JSON body: nested too deeply") from exc


class Blueprint(SmorestBlueprint):
    """A flask-smorest blueprint with our parser and our error handlers."""

    ARGUMENTS_PARSER = Parser()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        register_handlers(self)
        self.before_request(check_request)

    def register_views_in_doc(self, api, app, spec, *, name, parameters) -> None:
        """Describe the routes in ``spec`` now, or when the document is first read if ``api``
        defers it (see :meth:`PolySMSApi.deferring_docs`)."""
        if isinstance(api, PolySMSApi) and api.defer(self, app, spec, name, parameters):
            return
        super().register_views_in_doc(api, app, spec, name=name, parameters=parameters)


class PolySMSApi(Api):
    """flask-smorest's Api without its app-wide error handler: the host app keeps its own error
    pages; our blueprints carry ours.

    The routes are described in the OpenAPI document when it is first read (``spec``), not when
    the app is built: describing them is most of what building an app costs, and a test suite
    builds an app per test while few of them read the document.
    """

    ERROR_SCHEMA = ErrorSchema

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._deferred: list[tuple] = []
        self._deferring = False
        self._describing = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def spec(self) -> Any:
        """The OpenAPI document (apispec's ``APISpec``), every route described."""
        spec = self.__dict__["spec"]
        if self._deferred and not self._deferring:
            with self._describing:
                while self._deferred:
                    blueprint, app, name, parameters = self._deferred[0]
                    SmorestBlueprint.register_views_in_doc(
                        blueprint, self, app, spec, name=name, parameters=parameters
                    )
                    # Taken off only once described: a reader that finds the list empty finds
                    # every route in the document, never one still being described.
                    self._deferred.pop(0)
        return spec

    @spec.setter
    def spec(self, value: Any) -> None:
        self.__dict__["spec"] = value

    def deferring_docs(self, deferring: bool) -> None:
        """While true, blueprints registered wait to be described until ``spec`` is read."""
        self._deferring = deferring

    def defer(self, blueprint: SmorestBlueprint, app: Any, spec: Any, name: str, parameters: Any):
        """Keep a blueprint's description for later (in this Api's own ``spec``); False when not
        deferring."""
        if not self._deferring:
            return False
        self._deferred.append((blueprint, app, name, parameters))
        return True

    def _register_error_handlers(self) -> None:
        return None
