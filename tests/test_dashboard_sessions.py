"""Dashboard sign-ins are server-side records: the cookie holds a random secret (the record is
found by its digest), signing out ends the record wherever the cookie was copied, idle and
absolute timeouts end it, and the dashboard's cookie carries its own flags without touching the
host app's session cookie settings. The Store's sign-in methods run on every backend."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import store_backends
from freezegun import freeze_time

from flask_polysms import backends
from flask_polysms.ports.store import Conflict, DashboardSignIn, Store
from flask_polysms.web.dashboard.access import COOKIE_NAME, LEGACY_SESSION_KEYS

AGENT = "+14155552671"
USER = "+14155552674"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)

BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mysql", marks=pytest.mark.services),
]


def _server_url(request: pytest.FixtureRequest, backend: str) -> str:
    return request.getfixturevalue({"postgresql": "postgres_url", "mysql": "mysql_url"}[backend])


# -- the Store's sign-in records on every backend --------------------------------------------------
@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> Iterator[Store]:
    url = store_backends.storage_url(request, request.param, tmp_path)
    store = backends.create_store(url, table_prefix=store_backends.PREFIX)
    store.create_schema()
    yield store
    store.disconnect()


def a_sign_in(**fields) -> DashboardSignIn:
    values = {
        "id": hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
        "api_key_id": "key_1",
        "connector_id": "con_1",
        "created_at": T0,
        "last_seen_at": T0,
    }
    return DashboardSignIn(**{**values, **fields})


def test_store_keeps_sign_ins(store):
    record = store.add_dashboard_sign_in(a_sign_in())
    assert store.get_dashboard_sign_in(record.id) == record
    assert record.ended_at is None and record.end_reason is None
    assert store.get_dashboard_sign_in("0" * 64) is None
    with pytest.raises(Conflict):
        store.add_dashboard_sign_in(a_sign_in(id=record.id))


def test_store_touches_a_live_sign_in_only(store):
    record = store.add_dashboard_sign_in(a_sign_in())
    later = T0 + timedelta(minutes=5, microseconds=7)
    assert store.touch_dashboard_sign_in(record.id, later)
    assert store.get_dashboard_sign_in(record.id).last_seen_at == later
    assert not store.touch_dashboard_sign_in("0" * 64, later)
    assert store.end_dashboard_sign_in(record.id, later, "signed_out")
    assert not store.touch_dashboard_sign_in(record.id, later + timedelta(minutes=1))
    assert store.get_dashboard_sign_in(record.id).last_seen_at == later


def test_store_ends_a_sign_in_once(store):
    record = store.add_dashboard_sign_in(a_sign_in())
    first = T0 + timedelta(hours=1)
    assert store.end_dashboard_sign_in(record.id, first, "signed_out")
    assert not store.end_dashboard_sign_in(record.id, first + timedelta(hours=1), "idle")
    ended = store.get_dashboard_sign_in(record.id)
    assert (ended.ended_at, ended.end_reason) == (first, "signed_out")
    assert not store.end_dashboard_sign_in("0" * 64, first, "signed_out")
    # Another sign-in is untouched.
    other = store.add_dashboard_sign_in(a_sign_in())
    assert store.get_dashboard_sign_in(other.id).ended_at is None


def test_create_schema_adds_the_sign_in_table_to_an_existing_database(tmp_path):
    """A database made before sign-ins were records (0.1.0's tables, no migration history) gets
    the table from create_schema (the init-db of an upgrade), its rows untouched."""
    from flask_polysms.backends.peewee_migrations import SchemaMigrations

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = backends.create_store(url)
    SchemaMigrations(old.database, "polysms_").upgrade("0001_initial")  # 0.1.0's tables
    account = old.create_account("kept")
    old.database.execute_sql('DROP TABLE "polysms_schema_migration"')  # 0.1.0 kept none
    old.disconnect()
    upgraded = backends.create_store(url)
    upgraded.create_schema()
    assert upgraded.get_account(account.id) == account
    record = upgraded.add_dashboard_sign_in(a_sign_in())
    assert upgraded.get_dashboard_sign_in(record.id) == record
    upgraded.disconnect()


# -- the dashboard -------------------------------------------------------------------------------
class Browser:
    """A browser at the dashboard (the Flask test client), reading CSRF tokens from the pages."""

    def __init__(self, sms, **client_kwargs) -> None:
        self.sms = sms
        self.client = sms.app.test_client()
        self.base = client_kwargs

    def get(self, path: str):
        return self.client.get("/dashboard" + path, **self.base)

    def token(self) -> str:
        for path in ("/sign-in", "/opt-outs"):  # the sign-in page redirects once signed in
            found = CSRF_RE.search(self.get(path).get_data(as_text=True))
            if found:
                return found.group(1)
        raise AssertionError("no CSRF token on the pages")

    def post(self, path: str, **form: str):
        data = {**form, "csrf_token": self.token()}
        return self.client.post("/dashboard" + path, data=data, **self.base)

    def sign_in(self, tenant=None):
        tenant = tenant or self.sms.tenant
        response = self.post("/sign-in", api_key=tenant.api_key, connector_id=tenant.connector_id)
        assert response.status_code == 302, response.get_data(as_text=True)
        return response

    def signed_in(self) -> bool:
        response = self.get("/")
        assert response.status_code in (200, 302)
        return response.status_code == 200

    def cookie(self) -> str | None:
        found = self.client.get_cookie(COOKIE_NAME, path="/dashboard/")
        return found.value if found else None

    def copy_to(self, other: Browser) -> None:
        """Put this browser's sign-in cookie into ``other`` (a stolen or shared cookie)."""
        other.client.set_cookie(COOKIE_NAME, self.cookie(), path="/dashboard/")


def record_of(sms, browser: Browser) -> DashboardSignIn | None:
    digest = hashlib.sha256(browser.cookie().encode()).hexdigest()
    return sms.store.get_dashboard_sign_in(digest)


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path) -> dict:
    """The app's storage on each backend (the app's own table names on this test's servers)."""
    if request.param == "memory":
        return {}
    return {"POLYSMS_STORAGE_URL": store_backends.storage_url(request, request.param, tmp_path)}


@pytest.fixture
def make_dashboard(make_sms):
    built = []

    def make(**config):
        sms = make_sms(POLYSMS_DASHBOARD=True, numbers=(AGENT,), **config)
        built.append(sms)
        return sms

    yield make
    for sms in built:
        sms.store.disconnect()


def test_sign_out_ends_the_sign_in_wherever_the_cookie_was_copied(make_dashboard, storage):
    sms = make_dashboard(**storage)
    mine, copy = Browser(sms), Browser(sms)
    mine.sign_in()
    mine.copy_to(copy)
    assert copy.signed_in()  # the copy works while the sign-in lasts

    mine.post("/sign-out")

    assert not mine.signed_in()
    assert not copy.signed_in()
    assert mine.cookie() is None and copy.cookie() is None
    # Even replaying the cookie by hand opens nothing: the record has ended.
    stolen = Browser(sms)
    stolen.client.set_cookie(COOKIE_NAME, "replayed", path="/dashboard/")
    assert not stolen.signed_in()


def test_the_cookie_holds_only_a_random_secret_and_the_store_its_digest(make_dashboard):
    sms = make_dashboard()
    browser = Browser(sms)
    browser.sign_in()
    secret = browser.cookie()
    assert len(secret) >= 43  # 32 random bytes, URL-safe base64
    record = record_of(sms, browser)
    assert record is not None and record.ended_at is None
    assert record.connector_id == sms.tenant.connector_id
    assert sms.store.get_dashboard_sign_in(secret) is None  # the secret itself is not stored
    for value in (sms.tenant.api_key, sms.tenant.connector_id, record.api_key_id):
        assert value not in secret
    # A new sign-in is a new secret, and ends the earlier one: no fixation, no second life.
    first = record
    browser.sign_in()
    assert browser.cookie() != secret
    ended = sms.store.get_dashboard_sign_in(first.id)
    assert (ended.end_reason, ended.ended_at is not None) == ("signed_out", True)


def test_sign_out_records_when_and_why(make_dashboard):
    sms = make_dashboard()
    browser = Browser(sms)
    browser.sign_in()
    digest = record_of(sms, browser).id
    browser.post("/sign-out")
    record = sms.store.get_dashboard_sign_in(digest)
    assert record.end_reason == "signed_out" and record.ended_at is not None


# Freeze at the current time: the limits library's memory storage expires on real time.
NOW = datetime.now(UTC).replace(microsecond=0)


def test_idle_timeout(make_dashboard):
    sms = make_dashboard()
    browser = Browser(sms)
    with freeze_time(NOW) as clock:
        browser.sign_in()
        digest = record_of(sms, browser).id
        for _ in range(3):  # activity keeps it alive past the idle timeout's length
            clock.tick(timedelta(minutes=20))
            assert browser.signed_in()
        clock.tick(timedelta(minutes=30))
        assert not browser.signed_in()
        record = sms.store.get_dashboard_sign_in(digest)
        assert record.end_reason == "idle"
        # Ended for good: activity afterwards does not bring it back.
        assert not browser.signed_in()


def test_absolute_timeout(make_dashboard):
    sms = make_dashboard()
    browser = Browser(sms)
    with freeze_time(NOW) as clock:
        browser.sign_in()
        digest = record_of(sms, browser).id
        for _ in range(35):  # 11 h 40 min of clicks, never idle
            clock.tick(timedelta(minutes=20))
            assert browser.signed_in()
        clock.tick(timedelta(minutes=20))
        assert not browser.signed_in()
        assert sms.store.get_dashboard_sign_in(digest).end_reason == "expired"


def test_the_timeouts_are_configured(make_dashboard):
    sms = make_dashboard(
        POLYSMS_DASHBOARD_IDLE_TIMEOUT=timedelta(minutes=2), POLYSMS_DASHBOARD_ABSOLUTE_TIMEOUT=300
    )
    idle, busy = Browser(sms), Browser(sms)
    with freeze_time(NOW) as clock:
        idle.sign_in()
        busy.sign_in()
        clock.tick(timedelta(minutes=1, seconds=30))
        assert idle.signed_in() and busy.signed_in()
        clock.tick(timedelta(minutes=2))
        assert not idle.signed_in()
        assert busy.signed_in() is False  # 3.5 min without a click: idle too
        busy.sign_in()
        for _ in range(5):
            clock.tick(timedelta(seconds=59))
            assert busy.signed_in()
        clock.tick(timedelta(seconds=10))  # 5 min 5 s after signing in
        assert not busy.signed_in()


@pytest.mark.parametrize(
    ("key", "value"),
    [("POLYSMS_DASHBOARD_IDLE_TIMEOUT", 0), ("POLYSMS_DASHBOARD_ABSOLUTE_TIMEOUT", "12h")],
)
def test_a_bad_timeout_fails_at_start_naming_the_key(make_sms, key, value):
    from flask_polysms.config import ConfigError

    with pytest.raises(ConfigError, match=key):
        make_sms(POLYSMS_DASHBOARD=True, **{key: value})


def test_a_revoked_key_ends_the_sign_in_record(make_dashboard):
    from flask_polysms.crypto import hash_api_key
    from flask_polysms.services.tenancy import revoke_api_key

    sms = make_dashboard()
    browser = Browser(sms)
    browser.sign_in()
    digest = record_of(sms, browser).id
    key = sms.store.get_api_key_by_hash(hash_api_key(sms.tenant.api_key))
    revoke_api_key(sms.store, key.id)
    assert not browser.signed_in()
    assert sms.store.get_dashboard_sign_in(digest).end_reason == "revoked"


def test_a_0_1_session_cookie_signs_nobody_in(make_dashboard):
    """0.1 kept the key's and connector's ids in the host's session: such a cookie (still
    validly signed after the upgrade) is no sign-in now."""
    sms = make_dashboard()
    browser = Browser(sms)
    key_id_key, connector_key = LEGACY_SESSION_KEYS
    from flask_polysms.crypto import hash_api_key

    key = sms.store.get_api_key_by_hash(hash_api_key(sms.tenant.api_key))
    with browser.client.session_transaction() as session:
        session[key_id_key] = key.id
        session[connector_key] = sms.tenant.connector_id
    assert not browser.signed_in()


# -- cookie flags ---------------------------------------------------------------------------------
def _cookie_header(response, name: str) -> str:
    headers = [h for h in response.headers.getlist("Set-Cookie") if h.startswith(name + "=")]
    assert len(headers) == 1, response.headers.getlist("Set-Cookie")
    return headers[0]


def test_the_sign_in_cookie_flags_over_http(make_dashboard):
    sms = make_dashboard()
    response = Browser(sms).sign_in()
    header = _cookie_header(response, COOKIE_NAME)
    assert "HttpOnly" in header
    assert "SameSite=Lax" in header
    assert "Path=/dashboard/" in header
    assert "Secure" not in header  # over http the browser would drop a Secure cookie
    assert "Expires" not in header and "Max-Age" not in header  # ends with the browser


def test_the_sign_in_cookie_is_secure_over_https(make_dashboard):
    sms = make_dashboard()
    browser = Browser(sms, base_url="https://sms.example.com")
    header = _cookie_header(browser.sign_in(), COOKIE_NAME)
    assert "Secure" in header and "HttpOnly" in header and "SameSite=Lax" in header
    assert browser.client.get("/dashboard/", base_url="https://sms.example.com").status_code == 200
    sign_out = browser.post("/sign-out")
    deleted = _cookie_header(sign_out, COOKIE_NAME)
    assert "Secure" in deleted and ("Max-Age=0" in deleted or "Expires=Thu, 01 Jan 1970" in deleted)


def test_the_host_apps_session_cookie_settings_are_left_alone(make_dashboard):
    sms = make_dashboard(SESSION_COOKIE_SAMESITE=None, SESSION_COOKIE_SECURE=False)
    before = {k: v for k, v in sms.app.config.items() if k.startswith("SESSION_COOKIE")}
    response = Browser(sms).sign_in()
    assert {k: v for k, v in sms.app.config.items() if k.startswith("SESSION_COOKIE")} == before
    host = _cookie_header(response, sms.app.config["SESSION_COOKIE_NAME"])
    assert "SameSite" not in host and "Secure" not in host  # the host's own choice


def test_the_cookie_path_follows_the_url_prefix(make_sms):
    sms = make_sms(POLYSMS_DASHBOARD=True, POLYSMS_URL_PREFIX="/sms")
    client = sms.app.test_client()
    token = CSRF_RE.search(client.get("/sms/dashboard/sign-in").get_data(as_text=True))[1]
    response = client.post(
        "/sms/dashboard/sign-in",
        data={
            "api_key": sms.tenant.api_key,
            "connector_id": sms.tenant.connector_id,
            "csrf_token": token,
        },
    )
    assert "Path=/sms/dashboard/" in _cookie_header(response, COOKIE_NAME)
    assert client.get("/sms/dashboard/").status_code == 200
    # Not sent elsewhere: the API never sees it.
    assert client.get_cookie(COOKIE_NAME, path="/") is None
