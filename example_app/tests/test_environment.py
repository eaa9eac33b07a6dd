"""The example app takes every POLYSMS_* key of the configuration table from the environment, and
never overrides an exported value."""

from __future__ import annotations

from datetime import timedelta

from example_app import create_app
from flask_polysms import get_state
from flask_polysms.config import KEYS


def test_every_exported_key_reaches_the_app_unchanged(monkeypatch, tmp_path):
    monkeypatch.setenv("EXAMPLE_APP_INSTANCE", str(tmp_path))
    monkeypatch.setenv("SECRET_KEY", "s3cret-for-the-dashboard")
    exported = {
        "POLYSMS_STORAGE_URL": "memory://",
        "POLYSMS_REDIS_URL": "redis://127.0.0.1:6379/9",
        "POLYSMS_SCHEDULER": "manual",  # exported: Redis being set must not turn on rq
        "POLYSMS_RATE_LIMIT_STORAGE_URL": "memory://",
        "POLYSMS_TWILIO_BASE_URL": "http://127.0.0.1:9",
        "POLYSMS_STUCK_AFTER": "30",
        "POLYSMS_TWILIO_TIMEOUT": "2.5",
        "POLYSMS_SEND_MAX_ATTEMPTS": "3",
        "POLYSMS_DASHBOARD": "false",
        "POLYSMS_PUBLIC_URL": "https://sms.example.com",
        "POLYSMS_ENCRYPTION_KEYS": "dMNOlYNhCuKwH-ZYn7106kPfZ9WPjhBc5U2KtgI0sXw=",
    }
    for name, value in exported.items():
        monkeypatch.setenv(name, value)
    app = create_app({"TESTING": True})
    settings = get_state(app).settings
    assert settings.scheduler == "manual"
    assert settings.rate_limit_storage_url == "memory://"
    assert settings.twilio_base_url == "http://127.0.0.1:9"
    assert settings.stuck_after == timedelta(seconds=30)
    assert settings.twilio_timeout == 2.5 and settings.send_max_attempts == 3
    assert settings.dashboard is False
    assert settings.public_url == "https://sms.example.com"
    assert {key.config_name for key in KEYS} >= set(exported)


def test_redis_alone_turns_on_rq_and_shared_limits(monkeypatch, tmp_path):
    monkeypatch.setenv("EXAMPLE_APP_INSTANCE", str(tmp_path))
    monkeypatch.setenv("SECRET_KEY", "s3cret-for-the-dashboard")
    monkeypatch.setenv("POLYSMS_STORAGE_URL", "memory://")
    monkeypatch.setenv("POLYSMS_REDIS_URL", "redis://127.0.0.1:6379/9")
    settings = get_state(create_app({"TESTING": True})).settings
    assert settings.scheduler == "rq"
    assert settings.rate_limit_storage_url == "redis://127.0.0.1:6379/9"


def test_the_browsers_favicon_request_finds_an_icon(app):
    with app.test_client().get("/favicon.ico") as response:
        assert response.status_code == 200
        assert response.mimetype == "image/svg+xml"
