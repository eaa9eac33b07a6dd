"""The extension object, its configuration checks and the backend registry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.backends import BackendError, backend_for, create_store, register_backend
from flask_polysms.backends.memory import MemoryStore
from flask_polysms.config import DEFAULTS, ConfigError, ConfigVars
from flask_polysms.errors import NotConfigured
from flask_polysms.ports.schedulers import ManualScheduler, RQScheduler, ThreadScheduler


def make_app(testing: bool = True, **config) -> Flask:
    app = Flask(__name__)
    app.testing = testing
    app.config.update(SECRET_KEY="test", **config)
    return app


def test_init_app_keeps_state_per_app_and_not_on_the_extension():
    polysms = PolySMS()
    first, second = make_app(), make_app()
    polysms.init_app(first)
    polysms.init_app(second)
    assert not hasattr(polysms, "app")
    assert get_state(first) is first.extensions["polysms"]
    assert get_state(first).store is not get_state(second).store


def test_constructor_with_app_initialises_it():
    app = make_app()
    PolySMS(app)
    assert "polysms" in app.extensions


def test_init_app_twice_on_one_app_raises():
    app = make_app()
    polysms = PolySMS(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        polysms.init_app(app)


def test_get_state_without_init_app_says_so():
    app = make_app()
    with app.app_context(), pytest.raises(NotConfigured, match="did you call polysms.init_app"):
        get_state()


def test_every_design_key_has_a_default():
    design_keys = {
        "POLYSMS_STORAGE_URL": "memory://",
        "POLYSMS_SCHEDULER": None,
        "POLYSMS_REDIS_URL": None,
        "POLYSMS_GATEWAY": "twilio",
        "POLYSMS_TWILIO_BASE_URL": None,
        "POLYSMS_PUBLIC_URL": None,
        "POLYSMS_URL_PREFIX": "",
        "POLYSMS_RATE_LIMIT": "20 per second",
        "POLYSMS_RATE_LIMIT_STORAGE_URL": "memory://",
        "POLYSMS_IDLE_TIMEOUT": timedelta(hours=24),
        "POLYSMS_GRACE_PERIOD": timedelta(minutes=10),
        "POLYSMS_CLOSING_MESSAGE": "I am going to end conversation now",
        "POLYSMS_VALIDATE_SIGNATURES": True,
        "POLYSMS_SECRET_KEY": None,
    }
    for key, value in design_keys.items():
        assert DEFAULTS[key] == value, key
    assert "POLYSMS_WARNING_MESSAGE" in DEFAULTS
    assert all(
        value.startswith("POLYSMS_")
        for value in vars(ConfigVars).values()
        if isinstance(value, str) and value.isupper()
    )


def test_defaults_are_written_into_app_config():
    # Outside debug and testing, start-up needs the public URL and the encryption keys.
    app = make_app(
        testing=False,
        POLYSMS_PUBLIC_URL="https://sms.example.com",
        POLYSMS_ENCRYPTION_KEYS="Zs7cL0GJ0aXJ0gqRZr3Hq9mJxUuS4uF0PpqX4O6Jc0Q=",
    )
    PolySMS(app)
    assert app.config["POLYSMS_SCHEDULER"] == "thread"
    assert app.config["POLYSMS_IDLE_TIMEOUT"] == timedelta(hours=24)
    assert isinstance(get_state(app).scheduler, ThreadScheduler)


def test_testing_app_defaults_to_manual_scheduler():
    app = make_app()
    PolySMS(app)
    assert isinstance(get_state(app).scheduler, ManualScheduler)


def test_rq_scheduler_is_built_from_redis_url():
    app = make_app(POLYSMS_SCHEDULER="rq", POLYSMS_REDIS_URL="redis://127.0.0.1:6379/15")
    PolySMS(app)
    assert isinstance(get_state(app).scheduler, RQScheduler)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"POLYSMS_SCHEDULER": "celery"}, "POLYSMS_SCHEDULER"),
        ({"POLYSMS_SCHEDULER": "rq"}, "POLYSMS_REDIS_URL"),
        ({"POLYSMS_GATEWAY": "smtp"}, "POLYSMS_GATEWAY"),
        ({"POLYSMS_RATE_LIMIT": "lots"}, "POLYSMS_RATE_LIMIT"),
        ({"POLYSMS_IDLE_TIMEOUT": "a day"}, "POLYSMS_IDLE_TIMEOUT"),
        ({"POLYSMS_GRACE_PERIOD": -5}, "POLYSMS_GRACE_PERIOD"),
        ({"POLYSMS_URL_PREFIX": "api/"}, "POLYSMS_URL_PREFIX"),
        ({"POLYSMS_PUBLIC_URL": "example.com"}, "POLYSMS_PUBLIC_URL"),
        ({"POLYSMS_SEND_MAX_ATTEMPTS": 0}, "POLYSMS_SEND_MAX_ATTEMPTS"),
        ({"POLYSMS_WARNING_MESSAGE": ""}, "POLYSMS_WARNING_MESSAGE"),
        ({"POLYSMS_STORAGE_URL": "mongodb://x"}, "POLYSMS_STORAGE_URL"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(config, key):
    app = make_app(**config)
    with pytest.raises((ConfigError, BackendError), match=key):
        PolySMS(app)
    assert "polysms" not in app.extensions


def test_missing_secret_key_fails_at_start():
    app = Flask(__name__)
    with pytest.raises(ConfigError, match="POLYSMS_SECRET_KEY"):
        PolySMS(app)


def test_url_prefix_moves_every_route():
    app = make_app(POLYSMS_URL_PREFIX="/sms-api")
    PolySMS(app)
    client = app.test_client()
    assert client.get("/sms-api/v1/openapi.json").status_code == 200
    assert client.post("/sms-api/v1/outbound-sms", json={}).status_code == 401
    assert client.post("/v1/outbound-sms", json={}).status_code == 404


def test_host_app_error_pages_are_left_alone():
    app = make_app()
    PolySMS(app)

    @app.errorhandler(404)
    def not_found(error):
        return "host 404 page", 404

    response = app.test_client().get("/no-such-page")
    assert response.status_code == 404
    assert response.get_data(as_text=True) == "host 404 page"


def test_backend_registry_by_scheme_and_register_backend():
    assert backend_for("memory://") is MemoryStore
    with pytest.raises(BackendError, match="no backend"):
        backend_for("cassandra://x")

    class CustomStore(MemoryStore):
        schemes = ("custom",)

    register_backend("custom", CustomStore)
    assert isinstance(create_store("custom://anything"), CustomStore)
    register_backend("lazy", "flask_polysms.backends.memory:MemoryStore")
    assert backend_for("lazy://") is MemoryStore


def test_peewee_schemes_resolve_to_the_peewee_store():
    peewee_store = pytest.importorskip("flask_polysms.backends.peewee").PeeweeStore
    for url in ("sqlite:///x.db", "postgresql://u@h/db", "mysql://root@h/db"):
        assert backend_for(url) is peewee_store


def test_host_error_handlers_by_class_and_blueprint_still_apply():
    """Outside /v1 every error page is exactly what the host app gives without the extension."""
    from flask import Blueprint
    from werkzeug.exceptions import HTTPException

    def host_app(with_polysms: bool) -> Flask:
        app = make_app()
        app.config["PROPAGATE_EXCEPTIONS"] = False
        shop = Blueprint("shop", __name__, url_prefix="/shop")

        @shop.route("/item")
        def item():
            raise RuntimeError("shop bug")

        @shop.errorhandler(HTTPException)
        def shop_error(error):
            return f"shop page {error.code}", error.code

        @app.errorhandler(HTTPException)
        def host_error(error):
            return f"host page {error.code}", error.code

        app.register_blueprint(shop)
        if with_polysms:
            PolySMS(app)
        return app

    plain, mounted = host_app(False).test_client(), host_app(True).test_client()
    for method, path in [("get", "/nowhere"), ("post", "/shop/item"), ("get", "/shop/item")]:
        expected = getattr(plain, method)(path)
        got = getattr(mounted, method)(path)
        assert (got.status_code, got.get_data()) == (expected.status_code, expected.get_data())
    assert mounted.get("/shop/item").get_data(as_text=True) == "shop page 500"
    api = mounted.get("/v1/nowhere")
    assert api.status_code == 404 and "detail" in api.json


def test_the_readmes_configuration_table_is_the_config_table():
    from pathlib import Path

    from flask_polysms.config import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme


def test_every_key_reads_from_the_environment_as_the_app_would_take_it():
    from flask_polysms.config import KEYS, from_environ, load_settings

    environ = {
        "POLYSMS_IDLE_TIMEOUT": "90",
        "POLYSMS_TWILIO_TIMEOUT": "2.5",
        "POLYSMS_SEND_MAX_ATTEMPTS": "3",
        "POLYSMS_DASHBOARD": "true",
        "POLYSMS_VALIDATE_SIGNATURES": "0",
        "POLYSMS_ENCRYPTION_KEYS": "dMNOlYNhCuKwH-ZYn7106kPfZ9WPjhBc5U2KtgI0sXw=",
        "POLYSMS_PUBLIC_URL": "https://sms.example.com",
        "NOT_OURS": "x",
    }
    config = from_environ(environ)
    assert set(config) == {k for k in environ if k.startswith("POLYSMS_")}
    settings = load_settings(config, testing=False)
    assert settings.idle_timeout == timedelta(seconds=90)
    assert settings.twilio_timeout == 2.5 and settings.send_max_attempts == 3
    assert settings.dashboard is True and settings.validate_signatures is False
    assert len(settings.encryption_keys) == 1
    assert all(key.config_name.startswith("POLYSMS_") for key in KEYS)
    with pytest.raises(ConfigError, match="POLYSMS_SEND_MAX_ATTEMPTS"):
        from_environ({"POLYSMS_SEND_MAX_ATTEMPTS": "many"})
