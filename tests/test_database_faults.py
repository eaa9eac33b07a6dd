"""A dropped PostgreSQL connection, as a database restart or a failover ends it: the request it
hits fails cleanly (a 503 with ``Retry-After``) and writes nothing, and the next request works,
with and without a connection pool.
"""

from __future__ import annotations

import uuid

import psycopg2
import pytest
from faults_migrations_support import AGENTS, USERS
from flask import Flask

from flask_polysms import PolySMS
from flask_polysms.services.state import get_state
from flask_polysms.testing import provision

pytestmark = pytest.mark.services


# -- the database connection dropped ---------------------------------------------------------------


def _terminate_other_backends(url: str) -> int:
    """Kill every other connection to the database (as a restart or a failover would)."""
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid()"
            )
            return cursor.rowcount
    finally:
        connection.close()


@pytest.fixture
def db_app(fresh_postgres_url):
    """An app on its own PostgreSQL database whose connection a test can kill mid-request."""

    def make(url: str):
        app = Flask(f"polysms_dbdrop_{uuid.uuid4().hex[:6]}")
        app.config.update(
            SECRET_KEY="db-drop",
            POLYSMS_PUBLIC_URL="http://localhost",
            POLYSMS_ENCRYPTION_KEYS=["dMNOlYNhCuKwH-ZYn7106kPfZ9WPjhBc5U2KtgI0sXw="],
            POLYSMS_STORAGE_URL=url,
            POLYSMS_GATEWAY="outbox",
            POLYSMS_SCHEDULER="manual",
        )
        PolySMS(app)
        store = get_state(app).store
        with app.app_context():
            store.create_schema()
        tenant = provision(app, numbers=AGENTS)
        kill = {"on": False, "killed": 0}

        @app.before_request
        def drop_the_connection():
            # Runs before the extension's own code: the request's connection is open and used,
            # then the server ends it, as a database restart does under a running app.
            if kill["on"]:
                store.connect()
                store.database.execute_sql("select 1")
                kill["killed"] += _terminate_other_backends(fresh_postgres_url)

        return app, tenant, kill

    return make


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+pool"])
def test_a_dropped_database_connection_fails_cleanly_and_the_next_request_works(
    db_app, fresh_postgres_url, scheme
):
    url = fresh_postgres_url.replace("postgresql", scheme, 1)
    app, tenant, kill = db_app(url)
    client = app.test_client()
    body = {"user_number": USERS[0], "message": "hello"}

    for method, path, payload in (
        ("get", "/v1/conversations", None),
        ("post", "/v1/outbound-sms", body),
        ("get", "/v1/sms-templates", None),
    ):
        kill["on"] = True
        response = client.open(path, method=method, json=payload, headers=tenant.headers)
        kill["on"] = False
        assert kill["killed"] >= 1
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.is_json and "database" in response.get_json()["detail"]
        # Ours is 1 s.
        assert int(response.headers["Retry-After"]) >= 0
        again = client.open(path, method=method, json=payload, headers=tenant.headers)
        assert again.status_code in (200, 202), again.get_json()
        kill["killed"] = 0

    # The connection dropped between requests (an idle one, a pooled one): reconnected, or a 503.
    _terminate_other_backends(fresh_postgres_url)
    first = client.get("/v1/conversations", headers=tenant.headers)
    assert first.status_code in (200, 503) and first.is_json
    assert client.get("/v1/conversations", headers=tenant.headers).status_code == 200
    # The failed requests wrote nothing: one conversation, from the one accepted outbound request.
    listed = client.get("/v1/conversations", headers=tenant.headers).get_json()["conversations"]
    assert [len(c["messages"]) for c in listed] == [1]
