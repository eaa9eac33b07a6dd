"""flask-polysms in a host app that has its own CSRF protection, rate limiter, `/v1` blueprint
and error handlers: neither side changes what the other answers, whichever is set up first."""

from __future__ import annotations

import logging
import re

import pytest
from flask import Blueprint, Flask, jsonify

from flask_polysms import PolySMS
from flask_polysms.config import ConfigError
from flask_polysms.testing import provision, sign_twilio_request

AGENT = "+14155552671"
USER = "+14155552674"
ORDERS = ["host extensions first", "polysms first"]


def _host(
    order: str, *, dashboard: bool = False, host_limit: str = "2 per hour"
) -> tuple[Flask, object]:
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address
    from flask_wtf.csrf import CSRFProtect

    app = Flask(f"host_{order.split()[0]}")
    app.config.update(
        TESTING=True,
        SECRET_KEY="host-secret",
        POLYSMS_GATEWAY="outbox",
        POLYSMS_DASHBOARD=dashboard,
        WTF_CSRF_ENABLED=True,  # what production runs with, unlike many test setups
        RATELIMIT_STORAGE_URI="memory://",
    )

    @app.post("/host/form")
    def host_form():
        return "host form accepted"

    @app.get("/host/page")
    def host_page():
        return "host page"

    csrf, limiter, polysms = (
        CSRFProtect(),
        Limiter(get_remote_address, default_limits=[host_limit]),
        PolySMS(),
    )
    if order == "host extensions first":
        csrf.init_app(app)
        limiter.init_app(app)
        polysms.init_app(app)
    else:
        polysms.init_app(app)
        csrf.init_app(app)
        limiter.init_app(app)
    return app, provision(app, numbers=(AGENT,))


@pytest.mark.parametrize("order", ORDERS)
def test_the_hosts_csrf_and_default_limits_leave_our_api_and_webhooks_alone(order):
    app, tenant = _host(order)
    client = app.test_client()
    for n in range(4):  # over the host's 2 per hour
        sent = client.post(
            "/v1/outbound-sms",
            json={"user_number": USER, "message": f"hello {n}"},
            headers=tenant.headers,
        )
        assert sent.status_code == 202, sent.get_data(as_text=True)
        params = {
            "MessageSid": f"SM{n:032x}",
            "AccountSid": tenant.twilio_account_sid,
            "From": USER,
            "To": AGENT,
            "Body": f"reply {n}",
        }
        signature = sign_twilio_request(
            "http://localhost/v1/twilio/sms", params, tenant.twilio_auth_token
        )
        inbound = client.post(
            "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
        )
        assert inbound.status_code == 200, inbound.get_data(as_text=True)
    # The host's own routes keep the host's protection.
    assert client.post("/host/form").status_code == 400  # CSRF token missing
    statuses = [client.get("/host/page").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize("order", ORDERS)
def test_the_dashboard_keeps_its_own_csrf_beside_the_hosts(order):
    # The dashboard keeps the host's limits (its sign-in form benefits): a limit it stays within.
    app, tenant = _host(order, dashboard=True, host_limit="20 per hour")
    client = app.test_client()
    page = client.get("/dashboard/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = {"api_key": tenant.api_key, "connector_id": tenant.connector_id}
    assert client.post("/dashboard/sign-in", data=form).status_code == 400  # ours refuses
    signed = client.post("/dashboard/sign-in", data={**form, "csrf_token": token})
    assert signed.status_code == 302, signed.get_data(as_text=True)


def _host_with_handlers(order: str) -> Flask:
    app = Flask(f"handlers_{order.split()[0]}")
    app.config.update(
        TESTING=True, PROPAGATE_EXCEPTIONS=False, SECRET_KEY="k", POLYSMS_GATEWAY="outbox"
    )
    host_v1 = Blueprint("host_v1", __name__, url_prefix="/v1")

    @host_v1.get("/items")
    def items():
        return jsonify(items=[])

    @host_v1.get("/boom")
    def boom():
        raise RuntimeError("host bug")

    def register_host_handlers() -> None:
        @app.errorhandler(404)
        def host_404(error):
            return jsonify(host_error="not found"), 404

        @app.errorhandler(405)
        def host_405(error):
            return jsonify(host_error="method"), 405

        @app.errorhandler(Exception)
        def host_exception(error):
            return jsonify(host_error="crash"), 500

    app.register_blueprint(host_v1)
    if order == "host extensions first":
        register_host_handlers()
        PolySMS(app)
    else:
        PolySMS(app)
        register_host_handlers()
    return app


@pytest.mark.parametrize("order", ORDERS)
def test_error_handlers_answer_for_their_own_routes_in_either_order(order, caplog, monkeypatch):
    app = _host_with_handlers(order)
    tenant = provision(app, numbers=(AGENT,))
    client = app.test_client()

    # Ours: a wrong method and an unknown path beside our routes, in our shape.
    wrong = client.get("/v1/outbound-sms", headers=tenant.headers)
    assert wrong.status_code == 405 and set(wrong.json) == {"detail"}
    assert "POST" in wrong.headers["Allow"]
    unknown = client.get("/v1/conversations/conv_x/nothing", headers=tenant.headers)
    assert unknown.status_code == 404 and set(unknown.json) == {"detail"}

    # The host's: its wrong method, its unknown path, its crash, in its shape.
    assert client.post("/v1/items").json == {"host_error": "method"}
    assert client.get("/v1/host-nothing").json == {"host_error": "not found"}
    assert client.get("/elsewhere").json == {"host_error": "not found"}
    assert client.get("/v1/boom").json == {"host_error": "crash"}

    # An unexpected failure in one of our views: ours, logged with the id the client is given.
    from flask_polysms.services.state import get_state

    def broken(*args, **kwargs):
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(get_state(app).store, "get_metrics", broken)
    with caplog.at_level(logging.ERROR, logger="flask_polysms.api"):
        crashed = client.get("/v1/sms/metrics", headers=tenant.headers)
    assert crashed.status_code == 500 and set(crashed.json) == {"detail"}
    assert "hunter2" not in crashed.json["detail"]
    request_id = crashed.headers["X-Request-ID"]
    assert request_id in crashed.json["detail"]
    assert any(request_id in record.getMessage() for record in caplog.records)


def test_a_url_the_host_serves_already_is_refused_naming_both_endpoints():
    app = Flask("clash")
    app.config.update(TESTING=True, SECRET_KEY="k")

    @app.get("/v1/conversations")
    def host_conversations():
        return "the host's"

    with pytest.raises(ConfigError) as raised:
        PolySMS(app)
    message = str(raised.value)
    assert "host_conversations" in message and "polysms_conversations" in message
    assert "POLYSMS_URL_PREFIX" in message

    moved = Flask("moved")
    moved.config.update(TESTING=True, SECRET_KEY="k", POLYSMS_URL_PREFIX="/sms")
    moved.add_url_rule("/v1/conversations", "host_conversations", host_conversations)
    PolySMS(moved)
    assert moved.test_client().get("/v1/conversations").get_data(as_text=True) == "the host's"


def test_the_hosts_own_openapi_command_is_kept():
    import click

    app = Flask("cli_host")
    app.config.update(TESTING=True, SECRET_KEY="k")

    @app.cli.command("openapi")
    def host_openapi():
        click.echo("the host's openapi")

    PolySMS(app)
    result = app.test_cli_runner().invoke(args=["openapi"])
    assert result.output.strip() == "the host's openapi"


def test_a_testing_app_records_sends_in_the_outbox_unless_it_names_a_gateway():
    testing = Flask("testing_default")
    testing.config.update(TESTING=True, SECRET_KEY="k")
    PolySMS(testing)
    named = Flask("testing_named")
    named.config.update(TESTING=True, SECRET_KEY="k", POLYSMS_GATEWAY="twilio")
    PolySMS(named)
    from flask_polysms.services.state import get_state

    assert get_state(testing).settings.gateway == "outbox"
    assert get_state(named).settings.gateway == "twilio"


def test_the_hosts_secret_key_is_not_copied_into_our_config():
    app = Flask("secret_once")
    app.config.update(TESTING=True, SECRET_KEY="the host's secret")
    PolySMS(app)
    assert app.config["POLYSMS_SECRET_KEY"] is None
    assert "the host's secret" not in [v for k, v in app.config.items() if k.startswith("POLYSMS_")]


@pytest.mark.parametrize(
    "config",
    [
        {"PREFERRED_URL_SCHEME": "https"},
        {"SERVER_NAME": "sms.example.test", "PREFERRED_URL_SCHEME": "https"},
        {"SERVER_NAME": "sms.example.test", "APPLICATION_ROOT": "/shop"},
        {"POLYSMS_PUBLIC_URL": "https://public.example.test", "POLYSMS_URL_PREFIX": "/sms"},
    ],
)
def test_the_plugins_phone_signs_the_url_the_app_checks(config):
    from flask_polysms.pytest_plugin import Phone

    app = Flask("phone_host")
    app.config.update(TESTING=True, SECRET_KEY="k", **config)
    PolySMS(app)
    tenant = provision(app, numbers=(AGENT,))
    assert Phone(app, tenant).send("hello").status_code == 200


def test_loading_the_pytest_plugin_imports_nothing_heavy():
    """Every pytest run loads the plugin: it must not import the package's modules or twilio."""
    import subprocess
    import sys

    code = (
        "import sys, flask_polysms.pytest_plugin\n"
        "heavy = [m for m in ('flask', 'twilio', 'flask_polysms.extension') if m in sys.modules]\n"
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_a_relative_sqlite_url_lands_in_the_instance_folder(tmp_path):
    app = Flask("instance_host", instance_path=str(tmp_path / "instance"))
    app.config.update(TESTING=True, SECRET_KEY="k", POLYSMS_STORAGE_URL="sqlite:///sms.db")
    PolySMS(app)
    provision(app, numbers=(AGENT,))
    assert (tmp_path / "instance" / "sms.db").exists()


def test_the_table_prefix_names_every_table(tmp_path):
    import sqlite3

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    app = Flask("prefixed")
    app.config.update(
        TESTING=True, SECRET_KEY="k", POLYSMS_STORAGE_URL=url, POLYSMS_TABLE_PREFIX="sms_"
    )
    PolySMS(app)
    provision(app, numbers=(AGENT,))
    with sqlite3.connect(tmp_path / "shared.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables and all(name.startswith("sms_") for name in tables), tables
    with pytest.raises(ConfigError, match="POLYSMS_TABLE_PREFIX"):
        PolySMS(_configured(POLYSMS_TABLE_PREFIX="sms-; drop"))


def _configured(**config) -> Flask:
    app = Flask("configured")
    app.config.update(TESTING=True, SECRET_KEY="k", **config)
    return app


def test_the_dashboard_path_is_configurable_and_a_host_path_is_never_taken():
    app = _configured(POLYSMS_DASHBOARD=True, POLYSMS_DASHBOARD_URL="/sms-admin")
    PolySMS(app)
    assert app.test_client().get("/sms-admin/sign-in").status_code == 200

    host = _configured(POLYSMS_DASHBOARD=True)
    host.add_url_rule("/dashboard", "host_dashboard", lambda: "the host's dashboard")
    with pytest.raises(ConfigError, match="host_dashboard"):
        PolySMS(host)


def test_alembic_autogenerate_leaves_our_tables_alone(tmp_path):
    """A host's Alembic autogenerate on the shared database, with and without the filter."""
    alembic = pytest.importorskip("alembic")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from flask_polysms import alembic_include_name

    del alembic
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    app = _configured(POLYSMS_STORAGE_URL=url)
    PolySMS(app)
    provision(app, numbers=(AGENT,))

    host_metadata = sqlalchemy.MetaData()
    sqlalchemy.Table(
        "users", host_metadata, sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True)
    )
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection, app.app_context():
        unfiltered = compare_metadata(MigrationContext.configure(connection), host_metadata)
        filtered = compare_metadata(
            MigrationContext.configure(connection, opts={"include_name": alembic_include_name}),
            host_metadata,
        )
    engine.dispose()
    assert any(diff[0] == "remove_table" for diff in unfiltered)  # what hurt before
    assert [diff[0] for diff in filtered] == ["add_table"]  # only the host's own model
