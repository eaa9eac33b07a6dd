"""A host whose factory registers its blueprints after ``polysms.init_app`` (a common order):
a URL both serve is refused at the first request, as ``init_app`` refuses it when the host's
route came first, instead of being silently served by whichever rule Werkzeug meets first."""

from __future__ import annotations

import logging

import pytest
from flask import Blueprint, Flask

from flask_polysms import PolySMS
from flask_polysms.config import ConfigError


def _host(**config) -> Flask:
    app = Flask("late_routes")
    app.config.update(TESTING=True, SECRET_KEY="k", **config)
    PolySMS(app)  # first, as many factories do with their extensions
    pages = Blueprint("pages", __name__)
    pages.add_url_rule("/dashboard", "staff_dashboard", lambda: "the host's dashboard")
    pages.add_url_rule("/v1/reports", "reports", lambda: "the host's reports")
    app.register_blueprint(pages)
    return app


def test_a_clash_with_a_route_added_after_init_app_is_refused_at_every_request(caplog):
    app = _host(POLYSMS_DASHBOARD=True)
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="flask_polysms"):
        for path in ("/dashboard", "/v1/reports", "/dashboard"):
            with pytest.raises(ConfigError) as raised:
                client.get(path)
            message = str(raised.value)
            assert "'pages.staff_dashboard'" in message
            assert "'polysms_dashboard.overview'" in message
            assert "POLYSMS_DASHBOARD_URL" in message
        # On our routes our error handler answers, as for any failure there.
        ours = client.post("/v1/outbound-sms", json={})
        assert ours.status_code == 500 and set(ours.json) == {"detail"}
    # Logged: a host's catch-all error handler may turn the raise into a plain 500.
    assert any("pages.staff_dashboard" in record.getMessage() for record in caplog.records)


def test_routes_added_after_init_app_that_clash_with_nothing_are_served():
    app = _host(POLYSMS_DASHBOARD=True, POLYSMS_DASHBOARD_URL="/sms-dashboard")
    client = app.test_client()
    assert client.get("/dashboard").get_data(as_text=True) == "the host's dashboard"
    assert client.get("/v1/reports").get_data(as_text=True) == "the host's reports"
    assert client.get("/sms-dashboard/sign-in").status_code == 200
