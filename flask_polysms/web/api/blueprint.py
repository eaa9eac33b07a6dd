"""The blueprint and request parser of every API route, and flask-smorest's Api without its
app-wide error handler."""

from __future__ import annotations

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


class PolySMSApi(Api):
    """flask-smorest's Api without its app-wide error handler: the host app keeps its own error
    pages; our blueprints carry ours."""

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        return None
