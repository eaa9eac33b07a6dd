"""The API's OpenAPI document and docs page, and its one error shape on every route, next to the
host app's own error pages."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from outbound_support import (
    AGENT_NUMBERS,
    USER,
    assert_error,
    sms_fixture,  # noqa: F401
)

from flask_polysms.services.state import get_state
from flask_polysms.services.tenancy import AUTH_HEADER, CONNECTOR_HEADER

# -- the OpenAPI document, error shapes everywhere -------------------------------------------------


def _v1_paths(app) -> set[str]:
    paths = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/") or rule.endpoint.split(".")[0].endswith("docs"):
            continue
        paths.add(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule))
    return paths


def test_openapi_document_lists_every_v1_path(sms):
    response = sms.client.get("/v1/openapi.json")

    assert response.status_code == 200
    document = json.loads(response.get_data(as_text=True))
    assert document["openapi"].startswith("3.")
    documented = set(document["paths"])
    served = _v1_paths(sms.app)
    assert {
        "/v1/outbound-sms",
        "/v1/conversations",
        "/v1/conversations/{conversation_id}",
        "/v1/sms/metrics",
        "/v1/twilio/sms",
        "/v1/twilio/status",
    } <= served
    assert served <= documented
    post = document["paths"]["/v1/outbound-sms"]["post"]
    assert {"202", "400", "401", "403", "404", "413", "429"} <= set(post["responses"])


def test_the_api_object_and_threads_reading_at_once_get_every_path(make_sms):
    # The routes are described when the document is first read: through flask-smorest's own Api
    # object (as its `flask openapi` commands read it) and by threads that ask at the same time.
    sms = make_sms()
    api = sms.app.extensions["flask-smorest"]["apis"]["POLYSMS_"]["ext_obj"]
    served = _v1_paths(sms.app)
    assert served <= set(api.spec.to_dict()["paths"])

    other = make_sms()
    start = threading.Barrier(4)

    def read() -> dict:
        start.wait()
        with other.app.test_client() as client:
            return client.get("/v1/openapi.json").get_json()

    with ThreadPoolExecutor(4) as pool:
        documents = list(pool.map(lambda _: read(), range(4)))
    assert all(document == documents[0] for document in documents)
    assert served <= set(documents[0]["paths"])
    assert documents[0]["paths"] == api.spec.to_dict()["paths"]


def test_docs_page_is_html_that_loads_nothing_from_another_host(sms):
    response = sms.client.get("/v1/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "/v1/openapi.json" in page
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(loaded) == 5  # favicon, stylesheet, three scripts
    for url in loaded:
        assert url.startswith("/v1/docs/"), url
        with sms.client.get(url) as asset:  # a file response: closed when read
            assert asset.status_code == 200, url


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/outbound-sms"),
        ("delete", "/v1/conversations"),
        ("get", "/v1/twilio/sms"),
    ],
)
def test_a_wrong_method_on_an_api_route_has_the_error_shape(sms, method, path):
    response = getattr(sms.client, method)(path, headers=sms.tenant.headers)

    assert_error(response, 405)


def test_an_unknown_v1_path_has_the_error_shape(sms):
    assert_error(sms.client.get("/v1/no-such-thing", headers=sms.tenant.headers), 404)


def test_an_unexpected_failure_has_the_error_shape_and_hides_the_cause(make_sms, monkeypatch):
    sms = make_sms(numbers=AGENT_NUMBERS[:1], PROPAGATE_EXCEPTIONS=False)

    def broken(*args, **kwargs):
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(sms.store, "get_metrics", broken)

    body = assert_error(sms.client.get("/v1/sms/metrics", headers=sms.tenant.headers), 500)
    assert "hunter2" not in body["detail"]


def test_the_host_apps_own_404_pages_are_left_alone(sms):
    response = sms.client.get("/not-the-api")

    assert response.status_code == 404
    assert response.mimetype == "text/html"


def test_the_host_apps_own_error_handlers_keep_working():
    from flask import Flask

    from flask_polysms import PolySMS

    app = Flask("host_with_handlers")
    app.testing = True
    app.config.update(SECRET_KEY="k", PROPAGATE_EXCEPTIONS=False)

    @app.errorhandler(404)
    def not_found(error):
        return "host 404", 404

    @app.errorhandler(500)
    def crashed(error):
        return "host 500", 500

    @app.get("/crash")
    def crash():
        raise RuntimeError("host bug")

    PolySMS(app)
    client = app.test_client()

    assert client.get("/nowhere").get_data(as_text=True) == "host 404"
    assert client.get("/crash").get_data(as_text=True) == "host 500"
    # The API's own paths still answer in the API's shape.
    assert_error(client.get("/v1/nowhere"), 404)


@pytest.mark.parametrize(
    "path", ["/v1/conversations", "/v1/conversations/conv_x", "/v1/sms/metrics"]
)
def test_every_authenticated_route_answers_401_403_404_in_the_error_shape(sms, path):
    other = sms.provision(numbers=("+14155552678",))

    assert_error(sms.client.get(path), 401)
    assert_error(sms.client.get(path, headers={AUTH_HEADER: "nope"}), 401)
    foreign = {AUTH_HEADER: other.api_key, CONNECTOR_HEADER: sms.tenant.connector_id}
    assert_error(sms.client.get(path, headers=foreign), 403)
    unknown = {**sms.tenant.headers, CONNECTOR_HEADER: "con_nope"}
    assert_error(sms.client.get(path, headers=unknown), 404)


def test_the_state_is_untouched_by_rejected_requests(sms):
    # A sweep of rejected requests of every kind leaves no session, message or counter behind.
    bad = [
        {"user_number": "14155552674", "message": "hi"},
        {"user_number": USER, "message": ""},
        {"user_number": USER, "message": "hi", "agent_number": "+14155552679"},
        {"user_number": USER, "message": "hi", "extra": 1},
    ]
    for body in bad:
        assert (
            sms.client.post("/v1/outbound-sms", json=body, headers=sms.tenant.headers).status_code
            == 400
        )

    with sms.app.app_context():
        assert get_state(sms.app).store.list_sessions(sms.tenant.project_id)[0] == []
    metrics = sms.metrics()
    assert metrics["conversations"] == 0 and metrics["sent"] == 0
    assert metrics["api_failures"] == 0
