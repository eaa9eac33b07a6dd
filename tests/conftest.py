"""Shared fixtures: the app factory and the real services (PostgreSQL, MariaDB, Redis).

A missing service skips its tests with the reason on a developer's machine; with CI=true it fails,
so CI can never turn green by skipping.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

PG_URL = os.environ.get("POLYSMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("POLYSMS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("POLYSMS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


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
