"""Serving the clinic: at the root of its own domain, or under a path of a shared one.

``gunicorn 'clinic.wsgi:serve()'`` serves it at the root; with ``CLINIC_MOUNT=/clinic`` it is
served under that path (the rest of the domain answers 404), as a reverse proxy forwarding
``example.org/clinic/*`` unchanged would expect.
"""

from __future__ import annotations

import os

from flask import Flask
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from . import create_app


def mount(app: Flask, prefix: str) -> DispatcherMiddleware:
    """A WSGI app that serves ``app`` under ``prefix`` and nothing elsewhere.

    ``app``'s ``APPLICATION_ROOT`` should be ``prefix`` too (cookie paths, URLs built outside a
    request)."""
    return DispatcherMiddleware(NotFound(), {prefix: app})


def serve(config: dict | None = None):
    """The WSGI app to serve: mounted under ``CLINIC_MOUNT`` when it is set."""
    prefix = os.environ.get("CLINIC_MOUNT", "").rstrip("/")
    app = create_app({**({"APPLICATION_ROOT": prefix} if prefix else {}), **(config or {})})
    return mount(app, prefix) if prefix else app
