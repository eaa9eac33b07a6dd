"""The clinic's settings, read from the environment (tests give their own on top)."""

from __future__ import annotations

import os


def from_environment() -> dict:
    """A deployment's settings: one database for the clinic and its SMS conversations."""
    database_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/clinic")
    public_url = os.environ.get("PUBLIC_URL")  # e.g. https://clinic.example (Twilio calls it)
    redis_url = os.environ.get("REDIS_URL")
    settings = {
        "SECRET_KEY": os.environ.get("SECRET_KEY"),
        "SQLALCHEMY_DATABASE_URI": sqlalchemy_url(database_url),
        "SESSION_COOKIE_SECURE": bool(public_url and public_url.startswith("https://")),
        "RATELIMIT_STORAGE_URI": redis_url or "memory://",
        "CORS_ORIGINS": os.environ.get("CORS_ORIGINS", "https://staff.clinic.example").split(),
        # flask-polysms, on the same database; its tables are the ones named clinic_sms_*.
        "POLYSMS_STORAGE_URL": database_url,
        "POLYSMS_TABLE_PREFIX": "clinic_sms_",
        "POLYSMS_PUBLIC_URL": public_url,
        # Fernet keys for the stored Twilio Auth Tokens (newest first, comma-separated).
        "POLYSMS_ENCRYPTION_KEYS": os.environ.get("POLYSMS_ENCRYPTION_KEYS"),
        "POLYSMS_DASHBOARD": True,
        # /dashboard is the clinic's own staff page.
        "POLYSMS_DASHBOARD_URL": "/sms-dashboard",
    }
    if redis_url:
        settings.update(
            POLYSMS_SCHEDULER="rq",
            POLYSMS_REDIS_URL=redis_url,
            POLYSMS_RATE_LIMIT_STORAGE_URL=redis_url,
        )
    return settings


def sqlalchemy_url(database_url: str) -> str:
    """The same database for SQLAlchemy, through psycopg2 (the driver flask-polysms' PostgreSQL
    store uses): SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3."""
    scheme, sep, rest = database_url.partition("://")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg2://{rest}"
    return database_url
