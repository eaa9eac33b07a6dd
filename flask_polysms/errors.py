"""Errors the services raise, each carrying the HTTP status and the ``detail`` the API answers."""

from __future__ import annotations


class PolySMSError(Exception):
    """An error that answers ``{"detail": ..., "errors"?: {...}}`` with ``status``."""

    status = 400

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        errors: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict:
        body: dict = {"detail": self.detail}
        if self.errors:
            body["errors"] = self.errors
        return body


class InvalidInput(PolySMSError):
    status = 400


class Unauthorized(PolySMSError):
    status = 401


class Forbidden(PolySMSError):
    status = 403


class NotFoundError(PolySMSError):
    status = 404


class ConflictError(PolySMSError):
    status = 409


class NotConfigured(RuntimeError):
    """The extension is used on an app that never called ``init_app``."""
