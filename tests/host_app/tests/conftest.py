"""The clinic's test setup, as a host app writes it: pytest-flask's ``app``/``client``
fixtures on the app factory, a PostgreSQL database of the suite's own (migrated with
``flask db upgrade``, flask-polysms' tables made with ``flask polysms init-db``), and
flask-polysms' pytest plugin fixtures (``polysms_tenant``, ``sms_phone``) on top.

``POLYSMS_TEST_POSTGRES_URL`` names the server (and credentials) to use; the suite creates a
database of its own there and drops it at the end. Without PostgreSQL the suite is skipped, or
fails when ``CI=true``.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from clinic import create_app, db
from clinic.config import sqlalchemy_url
from clinic.models import User
from clinic.wsgi import mount
from flask import g
from werkzeug.test import Client

from flask_polysms import get_state
from flask_polysms.testing import sign_twilio_request

SERVER_URL = os.environ.get(
    "POLYSMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MOUNT = "/clinic"
PASSWORD = "correct horse battery staple"


def _require_postgres() -> None:
    parts = urlsplit(SERVER_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        reason = f"PostgreSQL is not answering on {host}:{port}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI=true requires it")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def database_url():
    """An empty database of this run's own on the test server, dropped at the end."""
    _require_postgres()
    name = f"clinic_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(SERVER_URL)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(SERVER_URL)._replace(path=f"/{name}"))
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def clinic_config(database_url: str, **overrides) -> dict:
    """What the clinic's tests run with: testing, CSRF on (as in production), its database.

    No POLYSMS_GATEWAY: a testing app records its texts in ``polysms.outbox``."""
    return {
        "TESTING": True,
        "SECRET_KEY": "clinic-test-secret",
        "WTF_CSRF_ENABLED": True,
        "SQLALCHEMY_DATABASE_URI": sqlalchemy_url(database_url),
        "POLYSMS_STORAGE_URL": database_url,
        "RATELIMIT_STORAGE_URI": "memory://",
        **overrides,
    }


def dispose(app) -> None:
    """Give back every connection the app holds (its pools outlive it otherwise)."""
    with app.app_context():
        db.engine.dispose()
    get_state(app).store.disconnect()


@pytest.fixture(scope="session")
def migrated(database_url):
    """The schema, made as a deployment makes it: the clinic's migrations, then ours."""
    app = create_app(clinic_config(database_url))
    runner = app.test_cli_runner()
    upgrade = runner.invoke(args=["db", "upgrade"])
    assert upgrade.exit_code == 0, upgrade.output
    init_db = runner.invoke(args=["polysms", "init-db"])
    assert init_db.exit_code == 0, init_db.output
    dispose(app)
    return database_url


@pytest.fixture
def mount_point() -> str:
    """Where the app is served: "" at the root (tests can serve it elsewhere)."""
    return ""


@pytest.fixture
def app(migrated, mount_point):
    """A fresh app per test on the migrated database (pytest-flask's ``client`` uses it)."""
    extra = {"APPLICATION_ROOT": mount_point} if mount_point else {}
    app = create_app(clinic_config(migrated, **extra))

    @app.before_request
    def _as_in_production() -> None:
        # pytest-flask pushes one app context for the whole test, so `g` outlives each request;
        # Flask-Login caches the user and flask-wtf the CSRF token there. In production every
        # request has a context of its own: start each one without them.
        g.pop("_login_user", None)
        g.pop("csrf_token", None)

    yield app
    dispose(app)
    empty_tables(migrated)


def empty_tables(database_url: str) -> None:
    """Every row of the clinic's and flask-polysms' tables gone (the schema stays), so each test
    starts from an empty database as the first one did."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        tables = [row[0] for row in cursor.fetchall()]
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    connection.close()


class Site:
    """The app as a browser (or Twilio) reaches it: at the root, or under a mount point through
    the DispatcherMiddleware a deployment serves."""

    def __init__(self, app, mount_point: str) -> None:
        self.app = app
        self.mount_point = mount_point
        self.client = Client(mount(app, mount_point)) if mount_point else app.test_client()

    def url(self, path: str) -> str:
        return f"{self.mount_point}{path}"

    def public_url(self, path: str) -> str:
        """The URL Twilio calls (and signs) for ``path``."""
        return f"http://localhost{self.mount_point}{path}"

    def get(self, path: str, **kwargs):
        return self.client.get(self.url(path), **kwargs)

    def post(self, path: str, **kwargs):
        return self.client.post(self.url(path), **kwargs)

    def inbound(self, tenant, body: str, *, user: str, sid: str, signed_over: str | None = None):
        """A user's SMS to the tenant's first number, posted as Twilio does and signed over the
        URL it calls (or over ``signed_over``)."""
        params = {
            "MessageSid": sid,
            "AccountSid": tenant.twilio_account_sid,
            "From": user,
            "To": tenant.numbers[0],
            "Body": body,
        }
        signature = sign_twilio_request(
            signed_over or self.public_url("/v1/twilio/sms"), params, tenant.twilio_auth_token
        )
        return self.post("/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})


@pytest.fixture
def site(app, mount_point) -> Site:
    return Site(app, mount_point)


@pytest.fixture
def staff(app) -> User:
    """A member of staff in the clinic's own table."""
    with app.app_context():
        user = User(email=f"nurse-{uuid.uuid4().hex[:8]}@clinic.example", name="Nurse Joy")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
        db.session.refresh(user)
        db.session.expunge(user)
    return user


def csrf_token_in(page: str, field: str = "csrf_token") -> str:
    """The hidden CSRF field of the first form on ``page``."""
    found = re.search(rf'name="{field}"[^>]*value="([^"]+)"', page) or re.search(
        rf'value="([^"]+)"[^>]*name="{field}"', page
    )
    assert found, f"no {field} in the page"
    return found.group(1)


def sign_in(http, user: User, password: str = PASSWORD):
    """Sign in through the clinic's login form, its CSRF token included (``http``: a test
    client or a :class:`Site`)."""
    page = http.get("/login").get_data(as_text=True)
    return http.post(
        "/login",
        data={"email": user.email, "password": password, "csrf_token": csrf_token_in(page)},
    )
