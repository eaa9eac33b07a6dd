"""The embedded demo as a newcomer meets it: the URL of the server being started, a banner only
when a server starts, a demo that can be asked for again or reset, tenants made with the CLI that
send through the emulator, and secret files private from their first moment.

These build the real embedded app (SQLite in a temporary instance folder, the thread scheduler, the
in-process Twilio emulator); the real server and browser are in tests/test_newcomer_browser.py.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.cli import FlaskGroup, run_command

from example_app import create_app
from example_app.demo import REMINDER, announcing, served_url
from flask_polysms import get_state
from flask_polysms.cli import polysms_cli

ACCOUNT_SID = "AC" + "7c" * 16
AUTH_TOKEN = "cli-made-auth-token-0123456789ab"


@pytest.fixture
def environment(tmp_path, monkeypatch) -> Path:
    """A newcomer's shell: nothing configured, the instance folder a temporary one."""
    for name in list(os.environ):
        if name.startswith(("POLYSMS_", "TWILIO_", "FLASK_", "WERKZEUG_", "EXAMPLE_APP_")):
            monkeypatch.delenv(name)
    instance = tmp_path / "instance"
    monkeypatch.setenv("EXAMPLE_APP_INSTANCE", str(instance))
    return instance


@pytest.fixture
def embedded(environment) -> Iterator[Callable[[], Flask]]:
    """``embedded()`` builds the app as ``flask --app example_app`` would; stopped afterwards."""
    built: list[Flask] = []

    def build() -> Flask:
        app = create_app()
        built.append(app)
        return app

    yield build
    for app in built:
        state = get_state(app)
        state.scheduler.stop()
        state.emulator.stop()


def flask_cli(embedded, *args: str, env: dict | None = None):
    """Run ``flask --app example_app ARGS`` in-process: the app is built by the command."""
    group = FlaskGroup(create_app=lambda: embedded(), load_dotenv=False)
    return CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)


def run_context(*args: str) -> click.Context:
    """The click context of ``flask run ARGS`` as the flask command parses it (FLASK_RUN_* too)."""
    return run_command.make_context("run", list(args), auto_envvar_prefix="FLASK_RUN")


# -- where the server runs ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "url"),
    [
        ((), {}, "http://127.0.0.1:5000"),
        (("--port", "5123"), {}, "http://127.0.0.1:5123"),
        ((), {"FLASK_RUN_PORT": "5124"}, "http://127.0.0.1:5124"),
        (("--port", "5125"), {"FLASK_RUN_PORT": "5124"}, "http://127.0.0.1:5125"),
        (("--host", "0.0.0.0", "--port", "5126"), {}, "http://127.0.0.1:5126"),
        (("--host", "localhost", "--port", "5127"), {}, "http://localhost:5127"),
        (("--host", "::", "--port", "5128"), {}, "http://[::1]:5128"),
        (("--host", "::1", "--port", "5129"), {}, "http://[::1]:5129"),
        (("--port", "5130", "--cert", "adhoc"), {}, "https://127.0.0.1:5130"),
        (
            ("--port", "5131"),
            {"POLYSMS_PUBLIC_URL": "https://abc.tunnel.example/"},
            "https://abc.tunnel.example",
        ),
    ],
)
def test_the_url_is_where_flask_run_listens(environment, monkeypatch, args, env, url):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with run_context(*args):
        assert served_url() == url


def test_outside_flask_run_the_url_comes_from_the_environment(environment, monkeypatch):
    assert served_url() == "http://127.0.0.1:5000"
    monkeypatch.setenv("FLASK_RUN_PORT", "5140")
    monkeypatch.setenv("FLASK_RUN_HOST", "0.0.0.0")
    assert served_url() == "http://127.0.0.1:5140"


def test_the_banners_curl_status_callbacks_and_simulator_use_the_servers_port(embedded):
    with run_context("--port", "5150"):
        app = embedded()
    state = get_state(app)
    assert app.config["POLYSMS_PUBLIC_URL"] == "http://127.0.0.1:5150"
    assert state.settings.public_url == "http://127.0.0.1:5150"
    record = json.loads((Path(app.instance_path) / "demo.json").read_text())
    with app.test_request_context(base_url="http://localhost:9999"):  # the request plays no part
        from flask_polysms.services.sending import status_callback_url
        from flask_polysms.web.dashboard.simulator import webhook_url

        assert status_callback_url(state) == "http://127.0.0.1:5150/v1/twilio/status"
        assert webhook_url(state, "http://localhost:9999/") == (
            "http://127.0.0.1:5150/v1/twilio/sms"
        )
    assert record["api_key"]


def test_other_flask_commands_use_where_flask_run_last_listened(embedded, monkeypatch):
    with run_context("--port", "5155"):
        embedded()
    later = embedded()  # e.g. `flask --app example_app polysms demo`, while the server runs
    assert later.config["POLYSMS_PUBLIC_URL"] == "http://127.0.0.1:5155"
    demo = flask_cli(embedded, "polysms", "demo")
    assert "curl -X POST http://127.0.0.1:5155/v1/outbound-sms " in demo.output
    monkeypatch.setenv("FLASK_RUN_PORT", "5156")  # said outright: that wins
    assert embedded().config["POLYSMS_PUBLIC_URL"] == "http://127.0.0.1:5156"


# -- the banner -----------------------------------------------------------------------------------
def test_banner_only_when_a_server_starts(environment, monkeypatch):
    with run_context("--port", "5160"):
        assert announcing()
    assert announcing()  # a WSGI server importing create_app()
    with polysms_cli.make_context("polysms", ["init-db"]):
        assert not announcing()
    monkeypatch.setenv("EXAMPLE_APP_QUIET", "1")
    with run_context("--port", "5160"):
        assert not announcing()


def test_with_the_reloader_only_the_serving_child_prints_the_banner(environment, monkeypatch):
    with run_context("--port", "5161", "--reload"):
        assert not announcing()  # the watching parent
        monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")
        assert announcing()  # the child that serves


def test_cli_commands_print_no_banner_and_no_key(embedded):
    result = flask_cli(embedded, "polysms", "create-account", "Acme")
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("acc_")
    assert len(result.output.strip().splitlines()) == 1
    assert "pk_" not in result.output and "flask-polysms demo" not in result.output


def test_the_banner_when_the_app_is_built_to_serve(embedded, capsys):
    with run_context("--port", "5162"):
        app = embedded()
    banner = capsys.readouterr().err
    record = json.loads((Path(app.instance_path) / "demo.json").read_text())
    assert "Dashboard:       http://127.0.0.1:5162/dashboard" in banner
    curl = "curl -X POST http://127.0.0.1:5162/v1/outbound-sms -H 'X-PolyAi-Auth-Token: "
    assert curl + record["api_key"] + "'" in banner
    assert "EXAMPLE_APP_QUIET=1" in banner


# -- the demo again, and over --------------------------------------------------------------------
def test_demo_prints_the_running_demo_tenant_again_and_reset_starts_over(embedded):
    first = flask_cli(embedded, "polysms", "demo")
    assert first.exit_code == 0, first.output
    record = json.loads((Path(embedded().instance_path) / "demo.json").read_text())
    assert first.output.startswith("demo project " + record["project_id"])
    assert record["api_key"] in first.output and json.dumps(REMINDER) in first.output
    assert flask_cli(embedded, "polysms", "demo").output == first.output

    reset = flask_cli(embedded, "polysms", "demo", "--reset")
    assert reset.exit_code == 0, reset.output
    assert reset.output.startswith("new demo project")
    new = json.loads((Path(embedded().instance_path) / "demo.json").read_text())
    assert new["project_id"] != record["project_id"] and new["api_key"] in reset.output
    app = embedded()
    with app.app_context():
        store = get_state(app).store
        titles = {t.title for t in store.list_templates(new["project_id"])}
        assert "appointment_confirmed" in titles  # the example's data comes with the new tenant
        assert store.get_project(new["project_id"]).name == "Appointment reminders"
    client = app.test_client()
    old_headers = {"X-PolyAi-Auth-Token": record["api_key"], "X-TOKEN-ID": record["connector_id"]}
    new_headers = {"X-PolyAi-Auth-Token": new["api_key"], "X-TOKEN-ID": new["connector_id"]}
    body = {"user_number": "+14155552672", "message": "hi"}
    assert client.post("/v1/outbound-sms", json=body, headers=old_headers).status_code == 401
    assert client.post("/v1/outbound-sms", json=body, headers=new_headers).status_code == 202


# -- tenants made with the CLI --------------------------------------------------------------------
def wait_for_send(app, headers: dict, conversation_id: str) -> dict:
    """The conversation's greeting once the thread scheduler has tried to send it."""
    client = app.test_client()
    deadline = time.monotonic() + 15
    while True:
        conversation = client.get(f"/v1/conversations/{conversation_id}", headers=headers).json
        message = conversation["messages"][0]
        if message["status"] not in ("queued", "sending") or time.monotonic() > deadline:
            return message
        time.sleep(0.05)


def test_a_tenant_made_with_the_cli_sends_through_the_embedded_emulator(embedded, monkeypatch):
    monkeypatch.setenv("FLASK_RUN_PORT", "9")  # nothing listens: callbacks are not the point
    app = embedded()
    runner = app.test_cli_runner()

    def cli(*args: str) -> str:
        result = runner.invoke(args=["polysms", *args])
        assert result.exit_code == 0, result.output
        return result.output.strip()

    account = cli("create-account", "Acme")
    project = cli("create-project", account, "Reminders")
    cli("connect-twilio", project, ACCOUNT_SID, "--auth-token", AUTH_TOKEN)
    cli("add-number", project, "+14155550123")
    connector = cli("create-connector", project)
    _, key = cli("create-api-key", account).split()
    headers = {"X-PolyAi-Auth-Token": key, "X-TOKEN-ID": connector}

    accepted = app.test_client().post(
        "/v1/outbound-sms",
        json={"user_number": "+14155552672", "message": "Your table is ready"},
        headers=headers,
    )
    assert accepted.status_code == 202, accepted.json
    message = wait_for_send(app, headers, accepted.json["conversation_id"])
    assert message["status"] == "sent", message
    emulator = get_state(app).emulator
    sent = [m for m in emulator.messages if m["account_sid"] == ACCOUNT_SID]
    assert [(m["from"], m["body"]) for m in sent] == [("+14155550123", "Your table is ready")]


# -- secret files ---------------------------------------------------------------------------------
def test_secret_files_are_private_from_their_first_moment(embedded, monkeypatch):
    # Any file created with the default mode would be world-readable now, and a chmod after the
    # write (a moment too late) fails the test.
    def no_chmod(*args, **kwargs):
        raise AssertionError("made private after it was written")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old_umask = os.umask(0)
    try:
        app = embedded()
    finally:
        os.umask(old_umask)
    instance = Path(app.instance_path)
    for name in ("secret_key", "encryption_key", "demo.json"):
        assert stat.S_IMODE((instance / name).stat().st_mode) == 0o600, name
    assert not [p.name for p in instance.iterdir() if p.name.startswith(".")]


def test_a_restart_keeps_the_secrets_and_the_demo_tenant(embedded):
    first = embedded()
    instance = Path(first.instance_path)
    saved = {name: (instance / name).read_text() for name in ("secret_key", "demo.json")}
    second = embedded()
    assert second.config["SECRET_KEY"] == first.config["SECRET_KEY"]
    assert {name: (instance / name).read_text() for name in saved} == saved
