"""One JSON error shape for the whole clinic app: ``{"error": {"status", "message"}}``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("clinic")


def _error(status: int, message: str):
    return jsonify(error={"status": status, "message": message}), status


def register(app: Flask) -> None:
    @app.errorhandler(404)
    def not_found(error: HTTPException):
        return _error(404, error.description or "not found")

    @app.errorhandler(405)
    def method_not_allowed(error: HTTPException):
        response, status = _error(405, "method not allowed")
        response.headers["Allow"] = ", ".join(error.valid_methods or ())
        return response, status

    @app.errorhandler(500)
    def server_error(error: HTTPException):
        return _error(500, "something went wrong on our side")

    @app.errorhandler(Exception)
    def any_exception(error: Exception):
        if isinstance(error, HTTPException):  # CSRF (400), 401, 429 from the limiter...
            response = error.get_response()
            body, status = _error(error.code or 500, error.description or error.name)
            for name in ("Retry-After", "WWW-Authenticate"):
                if name in response.headers:
                    body.headers[name] = response.headers[name]
            return body, status
        log.exception("unhandled error")
        return _error(500, "something went wrong on our side")
