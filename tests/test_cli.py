"""`flask polysms ...`: tenant set-up commands, their errors, and secrets kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.crypto import hash_api_key

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "f" * 32


@pytest.fixture
def app(tmp_path):
    # The demo records its tenant in the instance folder: one of the test's own.
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
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


def curl_request(output: str) -> tuple[str, dict, str]:
    """(url, headers, body) of the curl command on the output's last line."""
    import shlex

    curl = shlex.split(output.splitlines()[-1])
    headers = dict(curl[i + 1].split(": ", 1) for i, word in enumerate(curl) if word == "-H")
    return curl[curl.index("POST") + 1], headers, curl[curl.index("-d") + 1]


def send_with(app, output: str):
    _, headers, body = curl_request(output)
    return app.test_client().post("/v1/outbound-sms", data=body, headers=headers)


def test_demo_runs_again_with_the_same_tenant_and_reset_starts_over(app, cli):
    first = ok(cli("demo", "--number", "+14155552671"))
    assert first.startswith("new demo project")
    again = ok(cli("demo"))
    assert again.startswith("demo project") and "--reset starts over" in again
    assert "used for a new demo tenant only" in ok(cli("demo", "--number", "+14155552673"))
    assert curl_request(again) == curl_request(first)
    assert send_with(app, again).status_code == 202

    reset = ok(cli("demo", "--reset", "--number", "+14155552671"))
    assert reset.startswith("new demo project")
    assert curl_request(reset)[1] != curl_request(first)[1]
    assert send_with(app, first).status_code == 401  # the old key is revoked
    answer = send_with(app, reset)
    assert answer.status_code == 202
    assert answer.json["agent_number"] == "+14155552671"  # the number moved over
    project_id = reset.split()[3].rstrip(":")
    with app.app_context():
        assert get_state(app).store.get_sender("+14155552671").project_id == project_id


def test_demo_starts_over_when_its_key_was_revoked(app, cli):
    import json

    first = ok(cli("demo"))
    record = json.loads((Path(app.instance_path) / "demo.json").read_text())
    with app.app_context():
        key = get_state(app).store.get_api_key_by_hash(hash_api_key(record["api_key"]))
    ok(cli("revoke-api-key", key.id))
    again = ok(cli("demo"))
    assert again.startswith("new demo project")
    assert send_with(app, again).status_code == 202
    assert send_with(app, first).status_code == 401


def test_demo_never_takes_a_number_of_another_project(app, cli):
    account = ok(cli("create-account", "Acme"))
    project = ok(cli("create-project", account, "P"))
    ok(cli("add-number", project, "+14155552671"))
    result = cli("demo", "--number", "+14155552671")
    assert result.exit_code != 0 and "not the demo's" in result.output
    assert not (Path(app.instance_path) / "demo.json").exists()
    with app.app_context():
        assert get_state(app).store.get_sender("+14155552671").project_id == project


def test_demo_curl_points_at_the_configured_url(app, cli):
    assert curl_request(ok(cli("demo")))[0] == "http://127.0.0.1:5000/v1/outbound-sms"
    # A second app, configured with its public URL and a prefix.
    other = Flask("other", instance_path=app.instance_path)
    other.testing = True
    other.config.update(
        SECRET_KEY="test",
        POLYSMS_GATEWAY="outbox",
        POLYSMS_PUBLIC_URL="https://sms.example.test/shop",
        POLYSMS_URL_PREFIX="/sms",
    )
    PolySMS(other)
    runner = other.test_cli_runner()
    with other.app_context():  # the commands run in the current app context: this app's
        url = curl_request(ok(runner.invoke(args=["polysms", "demo"])))[0]
        assert url == "https://sms.example.test/shop/sms/v1/outbound-sms"
        url = curl_request(
            ok(runner.invoke(args=["polysms", "demo", "--url", "http://127.0.0.1:5001/"]))
        )[0]
        assert url == "http://127.0.0.1:5001/sms/v1/outbound-sms"


def test_demo_record_is_private_from_its_first_moment(app, cli, monkeypatch):
    import os
    import stat

    # Any file created with the default mode would be world-readable now, and a chmod after the
    # write (a moment too late) fails the test.
    old_umask = os.umask(0)
    try:

        def no_chmod(*args, **kwargs):
            raise AssertionError("made private after it was written")

        monkeypatch.setattr(os, "chmod", no_chmod)
        monkeypatch.setattr(Path, "chmod", no_chmod)
        ok(cli("demo"))
    finally:
        os.umask(old_umask)
    record = Path(app.instance_path) / "demo.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert [p.name for p in record.parent.iterdir()] == ["demo.json"]  # no temporary file left


def test_write_private_file_can_keep_what_another_process_wrote(tmp_path):
    import stat

    from flask_polysms.cli import write_private_file

    secret = tmp_path / "secret_key"
    assert write_private_file(secret, "first", replace=False) is True
    assert write_private_file(secret, "second", replace=False) is False
    assert secret.read_text() == "first"
    assert write_private_file(secret, "third") is True
    assert secret.read_text() == "third"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]


def test_demo_with_real_twilio_credentials_writes_no_auth_token(app, cli):
    import json

    ok(cli("demo", "--account-sid", ACCOUNT_SID, "--auth-token", AUTH_TOKEN))
    text = (Path(app.instance_path) / "demo.json").read_text()
    assert AUTH_TOKEN not in text and json.loads(text)["twilio_account_sid"] == ACCOUNT_SID


def test_demo_setup_of_the_host_app_runs_once_per_new_tenant(app, cli):
    from flask_polysms.cli import DEMO_SETUP

    made = []

    def setup(state, record):
        made.append(record["project_id"])
        record["message"] = "Your table is ready"

    app.extensions[DEMO_SETUP] = setup
    first = ok(cli("demo"))
    ok(cli("demo"))
    assert len(made) == 1 and made[0] in first
    assert '"Your table is ready"' in curl_request(first)[2]
    ok(cli("demo", "--reset"))
    assert len(made) == 2


def test_templates_and_variants_are_made_with_the_cli(app, cli):
    account = ok(cli("create-account", "Acme"))
    project = ok(cli("create-project", account, "Clinic"))
    ok(cli("add-number", project, "+14155552671", "--environment", "live"))
    assert ok(cli("set-variant", project, "live", "clinic_name", "Sunrise")) == (
        "clinic_name=Sunrise"
    )
    template_id = ok(
        cli(
            "create-template",
            project,
            "appointment_confirmed",
            "Confirmed at ${clinic_name} for {{vrbl:slot}}.",
            "--sender",
            "live=+14155552671",
        )
    )
    with app.app_context():
        state = get_state(app)
        [template] = state.store.list_templates(project)
        assert template.id == template_id and template.env_phone_numbers == {"live": "+14155552671"}
        assert state.store.get_project(project).settings["variants"] == {
            "live": {"clinic_name": "Sunrise"}
        }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set-variant", "prj_nope", "live", "a", "b"), "no project"),
        (("set-variant", "{project}", "mars", "a", "b"), "unknown environment"),
        (("set-variant", "{project}", "live", "bad-name", "b"), "letters, digits and _"),
        (("create-template", "{project}", "t", "x", "--sender", "live"), "ENV=ADDRESS"),
        (("create-template", "{project}", "t", "${oops", "--sender", "live=+14155552671"), "body"),
        (("create-template", "{project}", "t", "x", "--sender", "live=+14155550000"), "live"),
    ],
)
def test_bad_template_or_variant_input_is_one_error_and_writes_nothing(app, cli, args, message):
    account = ok(cli("create-account", "Acme"))
    project = ok(cli("create-project", account, "Clinic"))
    ok(cli("add-number", project, "+14155552671", "--environment", "live"))
    result = cli(*(arg.replace("{project}", project) for arg in args))
    assert result.exit_code != 0
    assert message in result.output
    with app.app_context():
        state = get_state(app)
        assert state.store.list_templates(project) == []
        assert "variants" not in state.store.get_project(project).settings
