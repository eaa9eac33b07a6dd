"""``/healthz`` and ``/readyz``: unauthenticated, under the URL prefix, and
``readyz`` says which of the database and Redis is down."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state


def _app(**config) -> Flask:
    app = Flask("health")
    app.config.update(TESTING=True, SECRET_KEY="k", **config)
    PolySMS(app)
    return app


def test_healthz_answers_while_the_process_serves():
    response = _app().test_client().get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_ready_with_the_memory_store_and_no_broker():
    response = _app().test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {"database": True, "redis": None}


def test_both_probes_live_under_the_url_prefix():
    client = _app(POLYSMS_URL_PREFIX="/sms").test_client()
    assert client.get("/sms/healthz").status_code == 200
    assert client.get("/sms/readyz").status_code == 200
    assert client.get("/healthz").status_code == 404


def test_not_ready_names_a_database_that_does_not_answer():
    client = _app(POLYSMS_STORAGE_URL="postgresql://postgres@127.0.0.1:9/none").test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json == {"database": False, "redis": None}


def test_not_ready_names_a_redis_that_does_not_answer():
    client = _app(POLYSMS_SCHEDULER="rq", POLYSMS_REDIS_URL="redis://127.0.0.1:9/0").test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json == {"database": True, "redis": False}


def test_not_ready_before_the_schema_exists_then_ready(fresh_postgres_url):
    app = _app(POLYSMS_STORAGE_URL=fresh_postgres_url)
    assert app.test_client().get("/readyz").status_code == 503
    get_state(app).store.create_schema()
    assert app.test_client().get("/readyz").status_code == 200


@pytest.mark.usefixtures("redis_conn")
def test_ready_with_postgresql_and_redis(fresh_postgres_url, redis_url):
    app = _app(
        POLYSMS_STORAGE_URL=fresh_postgres_url, POLYSMS_SCHEDULER="rq", POLYSMS_REDIS_URL=redis_url
    )
    get_state(app).store.create_schema()
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {"database": True, "redis": True}


def test_a_host_with_its_own_probes_turns_ours_off():
    app = Flask("own_probes")
    app.config.update(TESTING=True, SECRET_KEY="k", POLYSMS_HEALTH_ROUTES=False)

    @app.get("/healthz")
    def host_health():
        return "the host's"

    PolySMS(app)
    assert app.test_client().get("/healthz").get_data(as_text=True) == "the host's"
    assert app.test_client().get("/readyz").status_code == 404
