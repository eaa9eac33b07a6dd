"""A real host app, ``tests/host_app`` (a clinic): its own /v1 API and error handlers,
Flask-SQLAlchemy and Flask-Migrate on the same PostgreSQL database as flask-polysms,
Flask-Login, a global CSRFProtect, Flask-Limiter's default limits, Flask-CORS and ProxyFix, served
at the root and under a DispatcherMiddleware mount point, with ``polysms.init_app(app)`` as the
README shows. Its own suite (pytest-flask, freezegun, our plugin's fixtures) runs in a process of
its own, from its folder, with its own pytest configuration."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HOST_APP = Path(__file__).parent / "host_app"
#: The host suite's tests: a change in the count means a test was lost or skipped.
EXPECTED_PASSED = 35


@pytest.mark.slow
def test_the_host_apps_own_suite_passes(postgres_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["POLYSMS_TEST_POSTGRES_URL"] = postgres_url
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=HOST_APP,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = output.strip().splitlines()[-1]
    assert re.fullmatch(rf"{EXPECTED_PASSED} passed in [\d.]+s( \([\d:]+\))?", summary), output
