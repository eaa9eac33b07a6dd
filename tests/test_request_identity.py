"""Identity is per request and the test helpers work anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from freezegun import freeze_time

from flask_polysms import PolySMS
from flask_polysms.errors import NotConfigured
from flask_polysms.testing import provision

USER = "+14155552674"
HOST_SUITE = Path(__file__).parent / "host_style"


def _app(polysms: PolySMS, name: str = "identity") -> Flask:
    app = Flask(name)
    app.config.update(TESTING=True, SECRET_KEY="s", POLYSMS_GATEWAY="outbox")
    polysms.init_app(app)
    return app


def test_a_host_suite_with_pytest_flask_and_a_pushed_context_passes():
    """pytest-flask's ``client``, a module-level ``app.app_context().push()``, our fixtures."""
    pytest.importorskip("pytest_flask")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HOST_SUITE)],
        cwd=HOST_SUITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_outbox_and_timers_work_without_an_app_context():
    polysms = PolySMS()
    polysms.agent(lambda conv, text: None)
    app = _app(polysms)
    tenant = provision(app, numbers=("+14155552671",))
    with freeze_time("2026-03-02 09:00:00") as clock:
        response = app.test_client().post(
            "/v1/outbound-sms", json={"user_number": USER, "message": "Hi"}, headers=tenant.headers
        )
        assert response.status_code == 202
        # No app context here: the one app this object serves is used.
        assert [m["body"] for m in polysms.outbox] == ["Hi"]
        clock.tick(timedelta(hours=25))
        assert polysms.run_due_timers() == 1  # the unengaged session closes


def test_helpers_outside_a_context_name_the_context_to_push_when_several_apps_are_served():
    polysms = PolySMS()
    first, second = _app(polysms, "first"), _app(polysms, "second")
    with pytest.raises(NotConfigured, match="app_context") as raised:
        polysms.run_due_timers()
    assert "'first'" in str(raised.value) and "'second'" in str(raised.value)
    with pytest.raises(NotConfigured, match="app_context"):
        polysms.outbox  # noqa: B018
    with second.app_context():
        assert polysms.outbox == []
        assert polysms.run_due_timers() == 0
    del first


def test_helpers_of_an_object_serving_no_app_say_init_app():
    with pytest.raises(NotConfigured, match="init_app"):
        PolySMS().run_due_timers()


def test_one_authorisation_rule_for_the_api_the_dashboard_and_the_store():
    """The API's refusals, in order, come from the one rule the store and dashboard also use."""
    from datetime import datetime

    from flask_polysms import authorisation
    from flask_polysms.errors import Forbidden, InvalidInput, NotFoundError, Unauthorized
    from flask_polysms.ports import store
    from flask_polysms.records import ApiKey, Connector, Project
    from flask_polysms.web.dashboard import access

    at = datetime(2026, 1, 1)
    key = ApiKey(id="key_1", account_id="acc_1", key_hash="h", prefix="pk_", created_at=at)
    project = Project(id="prj_1", account_id="acc_1", name="p", created_at=at)
    connector = Connector(id="con_1", project_id="prj_1", environment="live", created_at=at)
    other = Project(id="prj_2", account_id="acc_2", name="q", created_at=at)
    revoked = ApiKey(
        id="key_2", account_id="acc_1", key_hash="h2", prefix="pk_", created_at=at, revoked_at=at
    )
    cases = [
        ((None, connector, project), Unauthorized),
        ((revoked, connector, project), Unauthorized),
        ((key, None, None), NotFoundError),
        ((key, connector, other), Forbidden),
    ]
    for credentials, error in cases:
        assert isinstance(authorisation.refusal(*credentials), error)
        assert not authorisation.authorises(*credentials)
    assert isinstance(authorisation.refusal(key, None, None, connector_named=False), InvalidInput)
    assert authorisation.refusal(key, connector, project) is None
    assert store.authorises is authorisation.authorises
    assert access.authorises is authorisation.authorises
