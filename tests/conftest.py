"""Shared fixtures: the app factory and the real services (PostgreSQL, MariaDB, Redis).

A missing service skips its tests with the reason on a developer's machine; with CI=true it fails,
so CI can never turn green by skipping.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

# The shared helpers of several test modules: their asserts explain a failure as the tests' own do.
pytest.register_assert_rewrite(
    *sorted(path.stem for path in Path(__file__).parent.glob("*_support.py"))
)

from emulator_account import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN  # noqa: E402

PG_URL = os.environ.get("POLYSMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("POLYSMS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("POLYSMS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


# Host apps' suites, each run in a process of its own: host_style by test_request_identity.py (it
# pushes an app context at import, which must not reach this suite), host_app by test_host_app.py
# (its own pytest.ini, fixtures and database).
collect_ignore = ["host_style", "host_app"]

SERVICE_FIXTURES = {"postgres_url", "mysql_url", "redis_url", "redis_conn"}


def pytest_collection_modifyitems(config, items):
    """Tests that use a real server are marked ``services`` (tox: ``-e services``)."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, under CI, fail) when a service does not answer."""
    if _answers(host, port):
        return
    reason = f"{name} is not answering on {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI=true requires it")
    pytest.skip(reason)


@pytest.fixture
def postgres_url():
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return PG_URL


@pytest.fixture
def mysql_url():
    require_service("MariaDB/MySQL", "127.0.0.1", 3306)
    return MYSQL_URL


@pytest.fixture
def redis_url():
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def redis_conn(redis_url):
    """A real Redis connection on a test database, flushed before and after."""
    from redis import Redis

    conn = Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture
def unique():
    """A short unique string for names that must not clash between tests."""
    return uuid.uuid4().hex[:10]


# -- SMS flows: apps, a provisioned tenant, the Twilio emulator, a live server --------------------
# Fixtures for the outbound API, sending, webhooks, compliance and agent suites. Everything goes
# through HTTP: the API through the Flask test client, Twilio through the local emulator, whose
# status callbacks reach a real server.

import threading  # noqa: E402
from collections.abc import Callable, Iterator, Mapping  # noqa: E402
from typing import Any  # noqa: E402

from flask import Flask  # noqa: E402

from flask_polysms import PolySMS  # noqa: E402
from flask_polysms.services.state import get_state  # noqa: E402
from flask_polysms.testing import (  # noqa: E402
    Provisioned,
    TwilioEmulator,
    provision,
    sign_twilio_request,
)

#: Valid US numbers (phonenumbers agrees): the project's numbers first, then users.
AGENT_NUMBERS = ("+14155552671", "+14155552672", "+14155552673")
USER_NUMBERS = ("+14155552674", "+14155552675", "+14155552676", "+14155552677")


class SmsHarness:
    """One test app with a provisioned tenant, driven as an API client and as Twilio."""

    def __init__(self, app: Flask, polysms: PolySMS, tenant: Provisioned) -> None:
        self.app = app
        self.polysms = polysms
        self.tenant = tenant
        self.client = app.test_client()
        self._sid_counter = 0

    # -- state --------------------------------------------------------------------------------
    @property
    def state(self):
        return get_state(self.app)

    @property
    def store(self):
        return self.state.store

    @property
    def outbox(self) -> list[dict]:
        """Copies of what the outbox gateway received (POLYSMS_GATEWAY="outbox")."""
        return list(self.state.gateway.outbox)

    def provision(self, **kwargs: Any) -> Provisioned:
        """Another tenant on the same app (a new account unless ``account_id`` is given)."""
        kwargs.setdefault("numbers", ())
        return provision(self.app, **kwargs)

    def run_due_timers(self) -> int:
        with self.app.app_context():
            return self.polysms.run_due_timers()

    # -- the API ------------------------------------------------------------------------------
    def send(
        self, user_number: str, message: str = "Hello from the agent", *, tenant=None, **extra
    ):
        """POST /v1/outbound-sms; returns the response."""
        headers = (tenant or self.tenant).headers
        body = {"user_number": user_number, "message": message, **extra}
        return self.client.post("/v1/outbound-sms", json=body, headers=headers)

    def send_ok(self, user_number: str, message: str = "Hello from the agent", **kwargs) -> dict:
        response = self.send(user_number, message, **kwargs)
        assert response.status_code == 202, response.get_json()
        return response.get_json()

    def conversation(self, conversation_id: str, *, tenant=None) -> dict:
        response = self.client.get(
            f"/v1/conversations/{conversation_id}", headers=(tenant or self.tenant).headers
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def conversations(self, *, tenant=None, **query: Any) -> list[dict]:
        """Every conversation the tenant sees (all pages) matching ``query``."""
        found: list[dict] = []
        cursor = None
        while True:
            params = dict(query, **({"cursor": cursor} if cursor else {}))
            response = self.client.get(
                "/v1/conversations", query_string=params, headers=(tenant or self.tenant).headers
            )
            assert response.status_code == 200, response.get_json()
            page = response.get_json()
            found.extend(page["conversations"])
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    def metrics(self, *, tenant=None, **query: Any) -> dict:
        """GET /v1/sms/metrics (``start``/``end`` in ``query``; default: the last 30 days)."""
        response = self.client.get(
            "/v1/sms/metrics", query_string=query, headers=(tenant or self.tenant).headers
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    # -- Twilio -------------------------------------------------------------------------------
    def new_sid(self) -> str:
        self._sid_counter += 1
        return f"SM{self._sid_counter:032x}"

    def webhook_url(self, path: str) -> str:
        base = self.state.settings.public_url or "http://localhost"
        return f"{base}{path}"

    def post_signed(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        token: str | None = None,
        url: str | None = None,
        signature: str | None = None,
    ):
        """POST a form to a webhook signed as Twilio signs it (over ``url``, with ``token``)."""
        if signature is None:
            signature = sign_twilio_request(
                url or self.webhook_url(path), params, token or self.tenant.twilio_auth_token
            )
        return self.client.post(path, data=dict(params), headers={"X-Twilio-Signature": signature})

    def inbound_params(
        self, user_number: str, body: str, *, to: str | None = None, sid: str | None = None
    ) -> dict[str, str]:
        return {
            "MessageSid": sid or self.new_sid(),
            "AccountSid": self.tenant.twilio_account_sid,
            "From": user_number,
            "To": to or self.tenant.numbers[0],
            "Body": body,
            "NumMedia": "0",
        }

    def inbound(
        self,
        user_number: str,
        body: str,
        *,
        to: str | None = None,
        sid: str | None = None,
        token: str | None = None,
    ):
        """A user's SMS, posted to /v1/twilio/sms as Twilio does; returns the response."""
        params = self.inbound_params(user_number, body, to=to, sid=sid)
        response = self.post_signed("/v1/twilio/sms", params, token=token)
        return response

    def inbound_ok(self, user_number: str, body: str, **kwargs: Any) -> None:
        response = self.inbound(user_number, body, **kwargs)
        assert response.status_code == 200, response.get_data(as_text=True)

    def status_callback(
        self,
        message_sid: str,
        status: str,
        *,
        from_: str | None = None,
        to: str | None = None,
        error_code: int | None = None,
    ):
        params = {
            "MessageSid": message_sid,
            "SmsSid": message_sid,
            "AccountSid": self.tenant.twilio_account_sid,
            "From": from_ or self.tenant.numbers[0],
            "To": to or USER_NUMBERS[0],
            "MessageStatus": status,
            "SmsStatus": status,
            "ApiVersion": "2010-04-01",
        }
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return self.post_signed("/v1/twilio/status", params)


@pytest.fixture
def make_sms() -> Iterator[Callable[..., SmsHarness]]:
    """Build a testing app with its own PolySMS and a provisioned tenant.

    ``make_sms(agent=f, numbers=(...), environment="live", **config)``: config keys override the
    defaults (outbox gateway, manual scheduler since the app is testing).
    """
    built: list[SmsHarness] = []

    def make(
        *,
        agent: Callable | None = None,
        numbers: tuple[str, ...] = AGENT_NUMBERS[:1],
        environment: str = "live",
        twilio_account_sid: str | None = None,
        twilio_auth_token: str | None = None,
        **config: Any,
    ) -> SmsHarness:
        polysms = PolySMS()
        if agent is not None:
            polysms.agent(agent)
        app = Flask(f"polysms_test_{len(built)}")
        app.testing = True
        app.config.update(SECRET_KEY="test-secret-key", POLYSMS_GATEWAY="outbox")
        app.config.update(config)
        polysms.init_app(app)
        tenant = provision(
            app,
            environment=environment,
            numbers=numbers,
            twilio_account_sid=twilio_account_sid,
            twilio_auth_token=twilio_auth_token,
        )
        harness = SmsHarness(app, polysms, tenant)
        built.append(harness)
        return harness

    yield make
    for harness in built:
        state = get_state(harness.app)
        state.scheduler.stop()
        # Pooled connections stay open until the pool is closed: a suite of a few thousand apps
        # would otherwise hold hundreds of server connections at once.
        state.store.disconnect()


@pytest.fixture
def make_twilio_emulator() -> Iterator[Callable[..., TwilioEmulator]]:
    """Start Twilio emulators (with the account EMULATOR_ACCOUNT_SID registered); stopped after."""
    started: list[TwilioEmulator] = []

    def make(**options: Any) -> TwilioEmulator:
        options.setdefault("callbacks", "manual")
        options.setdefault("callback_delay", 0.01)
        emulator = TwilioEmulator(**options).start()
        emulator.add_account(EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN)
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def make_emulated_sms(make_sms, make_twilio_emulator):
    """An app whose gateway is the real twilio client talking to a fresh emulator.

    Returns ``(harness, emulator)``; emulator options go in ``emulator={...}``.
    """

    def make(*, emulator: dict | None = None, **kwargs: Any) -> tuple[SmsHarness, TwilioEmulator]:
        twilio = make_twilio_emulator(**(emulator or {}))
        kwargs.setdefault("POLYSMS_TWILIO_TIMEOUT", 2.0)
        harness = make_sms(
            POLYSMS_GATEWAY="twilio",
            POLYSMS_TWILIO_BASE_URL=twilio.base_url,
            twilio_account_sid=EMULATOR_ACCOUNT_SID,
            twilio_auth_token=EMULATOR_AUTH_TOKEN,
            **kwargs,
        )
        return harness, twilio

    return make


class _LateApp:
    """A WSGI app bound after the server is listening (the app's config needs the server URL)."""

    def __init__(self) -> None:
        self.app: Flask | None = None

    def __call__(self, environ, start_response):
        assert self.app is not None, "bind an app before sending requests"
        return self.app(environ, start_response)


@pytest.fixture
def live_server() -> Iterator[tuple[str, Callable[[Flask], None]]]:
    """A real threaded HTTP server on a free port: ``(base_url, bind)``; ``bind(app)`` serves it.

    The URL is known before the app is built, so the app can use it as POLYSMS_PUBLIC_URL and the
    emulator's signed status callbacks reach it.
    """
    from werkzeug.serving import make_server

    late = _LateApp()
    server = make_server("127.0.0.1", 0, late, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()

    def bind(app: Flask) -> None:
        late.app = app

    yield f"http://127.0.0.1:{server.server_port}", bind
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# -- reliability and security suites (issue 9) ----------------------------------------------------


@pytest.fixture
def fresh_postgres_url(postgres_url, unique):
    """An empty PostgreSQL database of this test's own, dropped afterwards.

    For tests that run worker processes or kill connections: nothing another test does to the
    shared database (dropping its tables, terminating its backends) can reach this one, and back.
    """
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    name = f"polysms_t_{unique}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(urlsplit(postgres_url)._replace(path=f"/{name}"))
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def fresh_mysql_url(mysql_url, unique):
    """An empty MariaDB/MySQL database of this test's own, dropped afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    import pymysql

    parts = urlsplit(mysql_url)
    name = f"polysms_t_{unique}"
    admin = pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
    )
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield urlunsplit(parts._replace(path=f"/{name}"))
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.close()


# -- browser tests: headless Chromium (Debian's /usr/bin/chromium) through Playwright --------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 15_000


def _require_browser() -> None:
    """Skip (or, under CI, fail) without Chromium or Playwright, as require_service does."""
    problem = None
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed (pip install -e '.[test]')"
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{problem}, and CI=true requires it")
    pytest.skip(problem)


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium) -> Iterator:
    from playwright.sync_api import expect

    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    # A CSP violation or a script error shows up here: the page must run clean.
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    page.problems = problems
    try:
        yield page
    finally:
        context.close()
