"""A clinic's web app, a host of flask-polysms like any other.

Staff sign in (Flask-Login) and use the clinic's pages and its JSON API under ``/v1`` (Flask-CORS
for the staff's single-page app); its tables live in PostgreSQL (Flask-SQLAlchemy, Flask-Migrate);
every form is CSRF-protected (flask-wtf's ``CSRFProtect``) and every route rate limited
(Flask-Limiter's default limits). flask-polysms adds the SMS conversations with patients, on the
same database, with ``polysms.init_app(app)`` as its README shows.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, abort, redirect, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from . import config
from .extensions import cors, csrf, db, limiter, login_manager, migrate, polysms

__all__ = ["create_app", "db", "polysms"]

_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def create_app(overrides: dict | None = None) -> Flask:
    """The app factory (``flask --app clinic``); ``overrides`` go on top of the environment's."""
    app = Flask(__name__)
    app.config.update(config.from_environment())
    app.config.update(overrides or {})
    # One proxy (the load balancer) in front: the client's address, scheme and host from it.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(_MIGRATIONS))
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.unauthorized_handler(_unauthorized)
    csrf.init_app(app)
    polysms.init_app(app)
    limiter.init_app(app)
    cors.init_app(
        app,
        resources={r"/v1/*": {"origins": app.config["CORS_ORIGINS"]}},
        supports_credentials=True,
    )

    from . import api, auth, errors, models, pages, sms

    del models, sms  # imported for their registrations (user loader, SMS agent)
    app.register_blueprint(pages.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(api.bp)
    errors.register(app)
    return app


def _unauthorized():
    """The API answers 401; pages send the visitor to the sign-in page."""
    if request.blueprint == "api":
        abort(401, "sign in first")
    # The path inside the app: the sign-in page adds the mount point back.
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
