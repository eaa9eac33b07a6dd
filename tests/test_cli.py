"""`flask polysms ...`: tenant set-up commands, their errors, and secrets kept secret."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.crypto import hash_api_key

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "f" * 32


@pytest.fixture
def app():
    app = Flask(__name__)
    app.testing = True
    app.config.update(SECRET_KEY="test", POLYSMS_GATEWAY="outbox")
    PolySMS(app)
    return app


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args, input=None):
        return runner.invoke(args=["polysms", *args], input=input)

    return invoke


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output.strip()


def test_full_setup_then_outbound_with_the_printed_key(app, cli):
    assert ok(cli("init-db")) == "polysms schema ready"
    account = ok(cli("create-account", "Acme"))
    project = ok(cli("create-project", account, "Reminders"))
    ok(cli("connect-twilio", project, ACCOUNT_SID, "--auth-token", AUTH_TOKEN))
    assert "provisioned for live" in ok(cli("add-number", project, "+14155552671"))
    assert "sandbox" in ok(cli("add-number", project, "+14155552673", "--environment", "dev"))
    connector = ok(cli("create-connector", project, "--environment", "live"))
    key_id, key = ok(cli("create-api-key", account)).split()
    response = app.test_client().post(
        "/v1/outbound-sms",
        json={"user_number": "+14155552672", "message": "hi"},
        headers={"X-PolyAi-Auth-Token": key, "X-TOKEN-ID": connector},
    )
    assert response.status_code == 202
    assert response.json["agent_number"] == "+14155552671"
    assert ok(cli("revoke-api-key", key_id)) == f"revoked {key_id}"
    response = app.test_client().post(
        "/v1/outbound-sms",
        json={"user_number": "+14155552672", "message": "hi"},
        headers={"X-PolyAi-Auth-Token": key, "X-TOKEN-ID": connector},
    )
    assert response.status_code == 401


def test_secrets_are_stored_hashed_and_encrypted(app, cli):
    account = ok(cli("create-account", "Acme"))
    project = ok(cli("create-project", account, "P"))
    ok(cli("connect-twilio", project, ACCOUNT_SID, "--auth-token", AUTH_TOKEN))
    key_id, key = ok(cli("create-api-key", account)).split()
    with app.app_context():
        store = get_state(app).store
        stored_key = store.get_api_key(key_id)
        stored_project = store.get_project(project)
    assert stored_key.key_hash == hash_api_key(key) and key not in repr(stored_key)
    assert AUTH_TOKEN not in repr(stored_project)
    assert get_state(app).cipher.decrypt(stored_project.twilio_auth_token_encrypted) == AUTH_TOKEN


def test_connect_twilio_prompts_for_the_token_without_echo(app, cli):
    account = ok(cli("create-account", "Acme"))
    project = ok(cli("create-project", account, "P"))
    result = cli("connect-twilio", project, ACCOUNT_SID, input=f"{AUTH_TOKEN}\n")
    assert AUTH_TOKEN not in ok(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create-project", "acc_missing", "P"), "no account"),
        (("add-number", "prj_missing", "+14155552671"), "no project"),
        (("create-connector", "prj_missing"), "no project"),
        (("create-api-key", "acc_missing"), "no account"),
        (("revoke-api-key", "key_missing"), "no active API key"),
    ],
)
def test_unknown_ids_give_one_line_error_and_nonzero_exit(cli, args, message):
    result = cli(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("+1 415 555 2671",), "neither an E.164 number"),
        (("14155552671",), "neither an E.164 number"),
        (("MG123",), "neither an E.164 number"),
        (("+14155552671", "--environment", "production"), "unknown environment"),
    ],
)
def test_bad_number_or_environment_writes_nothing(app, cli, args, message):
    account = ok(cli("create-account", "Acme"))
    project = ok(cli("create-project", account, "P"))
    result = cli("add-number", project, *args)
    assert result.exit_code != 0
    assert message in result.output
    with app.app_context():
        assert get_state(app).store.list_senders(project) == []


def test_number_belongs_to_one_project(app, cli):
    account = ok(cli("create-account", "Acme"))
    first = ok(cli("create-project", account, "A"))
    second = ok(cli("create-project", account, "B"))
    ok(cli("add-number", first, "+14155552671"))
    result = cli("add-number", second, "+14155552671")
    assert result.exit_code != 0 and "provisioned already" in result.output
    with app.app_context():
        assert get_state(app).store.list_senders(second) == []


def test_bad_twilio_credentials_are_refused(app, cli):
    account = ok(cli("create-account", "Acme"))
    project = ok(cli("create-project", account, "P"))
    result = cli("connect-twilio", project, "XX123", "--auth-token", AUTH_TOKEN)
    assert result.exit_code != 0 and "Account SID" in result.output
    with app.app_context():
        assert get_state(app).store.get_project(project).twilio_account_sid is None


def test_messaging_service_sid_can_be_added(app, cli):
    account = ok(cli("create-account", "Acme"))
    project = ok(cli("create-project", account, "P"))
    sid = "MG" + "a" * 32
    assert "messaging_service" in ok(cli("add-number", project, sid))


def test_demo_provisions_and_prints_a_working_curl(app, cli):
    import shlex

    output = ok(cli("demo", "--number", "+14155552671"))
    curl = shlex.split(output.splitlines()[-1])
    headers = dict(h.split(": ", 1) for h in curl[curl.index("-H") + 1 :: 2][:2])
    body = curl[curl.index("-d") + 1]
    response = app.test_client().post(
        "/v1/outbound-sms", data=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 202
    assert response.json["agent_number"] == "+14155552671"


def test_demo_refuses_a_bad_number(cli):
    result = cli("demo", "--number", "12345")
    assert result.exit_code != 0 and "E.164" in result.output
