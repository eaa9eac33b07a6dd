"""SMS templates: the /v1/sms-templates routes (DESIGN §3.3) and sending through
``conv.send_sms_template`` (DESIGN §5), end to end through the test client, the outbox gateway and
signed Twilio webhooks."""

from __future__ import annotations

import uuid

import phonenumbers
import pytest
from flask import Flask

from flask_polysms import PolySMS, get_state
from flask_polysms.services.provisioning import add_sender
from flask_polysms.services.templates import copy_titles, send_template
from flask_polysms.testing import provision, sign_twilio_request

LIVE = "+14155552671"
LIVE_2 = "+14155552672"
SANDBOX = "+14155552673"
SANDBOX_2 = "+14155552674"
PRE_RELEASE = "+14155552675"
OTHER_PROJECT = "+14155552680"
USER = "+14155552690"
UNPROVISIONED = "+14155552699"
MG_SID = "MG" + "0123456789abcdef" * 2
INBOUND_URL = "http://localhost/v1/twilio/sms"
BASE = "/v1/sms-templates"


def test_the_numbers_used_here_are_valid():
    for number in (LIVE, LIVE_2, SANDBOX, SANDBOX_2, PRE_RELEASE, OTHER_PROJECT, USER):
        assert phonenumbers.is_valid_number(phonenumbers.parse(number))


# -- fixtures and helpers -------------------------------------------------------------------------
@pytest.fixture
def polysms():
    return PolySMS()


@pytest.fixture
def app(polysms):
    app = Flask(__name__)
    app.testing = True
    app.config.update(SECRET_KEY="test secret", POLYSMS_GATEWAY="outbox")
    polysms.init_app(app)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def live(app):
    """A live project with two numbers."""
    return provision(app, environment="live", numbers=(LIVE, LIVE_2))


@pytest.fixture
def other(app):
    """A second tenant (its own account and project)."""
    return provision(app, environment="live", numbers=(OTHER_PROJECT,))


def template_json(**overrides):
    data = {
        "title": "confirmation",
        "body": "Your booking is confirmed.",
        "env_phone_numbers": {"live": LIVE},
    }
    data.update(overrides)
    return data


def create(client, headers, **overrides):
    response = client.post(BASE, json=template_json(**overrides), headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def add_number(app, project_id, number, environment):
    with app.app_context():
        add_sender(get_state(app), project_id, number, environment)


def outbox(app, polysms):
    with app.app_context():
        return list(polysms.outbox)


def start_conversation(client, prov, agent_number):
    response = client.post(
        "/v1/outbound-sms",
        json={"user_number": USER, "message": "Hello!", "agent_number": agent_number},
        headers=prov.headers,
    )
    assert response.status_code == 202, response.json
    return response.json["conversation_id"]


def inbound(client, prov, to, body, user=USER):
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": user, "To": to, "Body": body}
    signature = sign_twilio_request(INBOUND_URL, params, prov.twilio_auth_token)
    response = client.post("/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200


@pytest.fixture
def sends(polysms):
    """Registers an agent that sends the template ``confirmation`` (configurable per test) and
    records what each send returned (or raised)."""
    calls: dict = {"template": "confirmation", "retry_count": None, "setup": None, "results": []}

    @polysms.agent
    def agent(conv, text):
        if calls["setup"]:
            calls["setup"](conv)
        try:
            calls["results"].append(
                conv.send_sms_template(
                    conv.caller_number, calls["template"], retry_count=calls["retry_count"]
                )
            )
        except LookupError as exc:
            calls["results"].append(exc)
        return None

    return calls


def metrics(client, prov):
    response = client.get("/v1/sms/metrics", headers=prov.headers)
    assert response.status_code == 200
    return response.json


def conversation(client, prov, conversation_id):
    response = client.get(f"/v1/conversations/{conversation_id}", headers=prov.headers)
    assert response.status_code == 200
    return response.json


# -- CRUD -----------------------------------------------------------------------------------------
def test_create_returns_201_with_the_template_and_its_location(client, live):
    response = client.post(
        BASE,
        json=template_json(env_phone_numbers={"live": LIVE, "sandbox": None}),
        headers=live.headers,
    )
    assert response.status_code == 201
    body = response.json
    assert body["title"] == "confirmation"
    assert body["body"] == "Your booking is confirmed."
    assert body["env_phone_numbers"] == {"live": LIVE}
    assert body["id"] and body["created_at"] == body["updated_at"]
    assert response.headers["Location"] == f"{BASE}/{body['id']}"


def test_list_get_patch_delete(client, live):
    second = create(client, live.headers, title="b_second")
    first = create(client, live.headers, title="a_first")

    listed = client.get(BASE, headers=live.headers)
    assert listed.status_code == 200
    assert [t["title"] for t in listed.json["templates"]] == ["a_first", "b_second"]

    got = client.get(f"{BASE}/{first['id']}", headers=live.headers)
    assert got.status_code == 200 and got.json == first

    patched = client.patch(f"{BASE}/{first['id']}", json={"body": "New text"}, headers=live.headers)
    assert patched.status_code == 200
    assert patched.json["body"] == "New text"
    assert patched.json["title"] == "a_first"
    assert patched.json["updated_at"] > first["updated_at"]
    assert patched.json["created_at"] == first["created_at"]

    unchanged = client.patch(f"{BASE}/{second['id']}", json={}, headers=live.headers)
    assert unchanged.status_code == 200 and unchanged.json == second

    deleted = client.delete(f"{BASE}/{first['id']}", headers=live.headers)
    assert deleted.status_code == 204 and deleted.data == b""
    assert client.get(f"{BASE}/{first['id']}", headers=live.headers).status_code == 404
    again = client.delete(f"{BASE}/{first['id']}", headers=live.headers)
    assert again.status_code == 404 and again.json == {"detail": "template not found"}
    assert [t["title"] for t in client.get(BASE, headers=live.headers).json["templates"]] == [
        "b_second"
    ]


def test_patch_replaces_the_senders_as_a_whole(app, client, live):
    add_number(app, live.project_id, SANDBOX, "sandbox")
    created = create(client, live.headers, env_phone_numbers={"live": LIVE, "sandbox": SANDBOX})
    url = f"{BASE}/{created['id']}"
    moved = client.patch(url, json={"env_phone_numbers": {"live": LIVE_2}}, headers=live.headers)
    assert moved.status_code == 200
    assert moved.json["env_phone_numbers"] == {"live": LIVE_2}
    no_live = client.patch(
        url, json={"env_phone_numbers": {"sandbox": SANDBOX}}, headers=live.headers
    )
    assert no_live.status_code == 400
    assert "env_phone_numbers.live" in no_live.json["errors"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", ""),
        ("get", ""),
        ("get", "/x"),
        ("patch", "/x"),
        ("delete", "/x"),
        ("post", "/x/duplicate"),
        ("post", "/x/preview"),
    ],
)
def test_every_route_needs_the_api_key(client, live, method, path):
    response = getattr(client, method)(BASE + path, json={})
    assert response.status_code == 401
    assert "detail" in response.json


def test_unknown_connector_is_404_and_another_accounts_key_is_403(client, live, other):
    unknown = client.get(BASE, headers={**live.headers, "X-TOKEN-ID": "nope"})
    assert unknown.status_code == 404
    crossed = client.get(BASE, headers={**live.headers, "X-TOKEN-ID": other.connector_id})
    assert crossed.status_code == 403


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("length", "status"), [(0, 400), (1, 201), (100, 201), (101, 400)])
def test_title_length(client, live, length, status):
    response = client.post(BASE, json=template_json(title="t" * length), headers=live.headers)
    assert response.status_code == status
    if status == 400:
        assert list(response.json["errors"]) == ["title"]
        assert response.json["detail"]


def test_blank_title_is_refused(client, live):
    response = client.post(BASE, json=template_json(title="   "), headers=live.headers)
    assert response.status_code == 400
    assert list(response.json["errors"]) == ["title"]


@pytest.mark.parametrize(("length", "status"), [(0, 400), (1, 201), (500, 201), (501, 400)])
def test_body_length(client, live, length, status):
    response = client.post(BASE, json=template_json(body="b" * length), headers=live.headers)
    assert response.status_code == status
    if status == 400:
        assert list(response.json["errors"]) == ["body"]


@pytest.mark.parametrize(
    "body",
    ["Hi {{entity:name", "Hi ${first name}", "{{unknown:x}}", "{{entity:}}", "stray }}", "${}"],
)
def test_a_token_that_does_not_parse_is_refused_naming_body(client, live, body):
    response = client.post(BASE, json=template_json(body=body), headers=live.headers)
    assert response.status_code == 400
    assert list(response.json["errors"]) == ["body"]
    assert "bad token" in response.json["errors"]["body"][0]


def test_a_token_syntax_error_is_refused_on_patch_too(client, live):
    created = create(client, live.headers)
    response = client.patch(
        f"{BASE}/{created['id']}", json={"body": "{{vrbl:CODE"}, headers=live.headers
    )
    assert response.status_code == 400
    assert list(response.json["errors"]) == ["body"]


def test_tokens_of_every_kind_and_plain_dollars_and_braces_are_accepted(client, live):
    body = "${property_name}: {{entity:booking_date}}, {{vrbl:CODE_1}} for ${{entity:price}} {x}"
    assert create(client, live.headers, body=body)["body"] == body


@pytest.mark.parametrize(
    ("senders", "field"),
    [
        ({}, "env_phone_numbers.live"),
        ({"sandbox": SANDBOX}, "env_phone_numbers.live"),
        ({"live": None}, "env_phone_numbers.live"),
        ({"live": "MG" + "0" * 31}, "env_phone_numbers.live"),
        ({"live": "MG" + "g" * 32}, "env_phone_numbers.live"),
        ({"live": "4155552671"}, "env_phone_numbers.live"),
        ({"live": "+1 415 555 2671"}, "env_phone_numbers.live"),
        ({"live": LIVE, "sandbox": "MG123"}, "env_phone_numbers.sandbox"),
        ({"live": LIVE, "dev": SANDBOX}, "env_phone_numbers.dev"),
    ],
)
def test_bad_senders_are_400_naming_the_field(client, live, senders, field):
    response = client.post(
        BASE, json=template_json(env_phone_numbers=senders), headers=live.headers
    )
    assert response.status_code == 400
    assert field in response.json["errors"]


def test_missing_env_phone_numbers_is_400(client, live):
    data = template_json()
    del data["env_phone_numbers"]
    response = client.post(BASE, json=data, headers=live.headers)
    assert response.status_code == 400
    assert list(response.json["errors"]) == ["env_phone_numbers"]


def test_a_number_not_provisioned_is_refused(client, live):
    response = client.post(
        BASE, json=template_json(env_phone_numbers={"live": UNPROVISIONED}), headers=live.headers
    )
    assert response.status_code == 400
    assert "not provisioned" in response.json["errors"]["env_phone_numbers.live"][0]


def test_a_number_of_another_project_is_refused(client, live, other):
    response = client.post(
        BASE, json=template_json(env_phone_numbers={"live": OTHER_PROJECT}), headers=live.headers
    )
    assert response.status_code == 400
    assert response.json["errors"] == {
        "env_phone_numbers.live": [f"{OTHER_PROJECT} is not provisioned for this project"]
    }


def test_a_number_of_another_environment_of_the_project_is_refused(app, client, live):
    add_number(app, live.project_id, SANDBOX, "sandbox")
    as_live = client.post(
        BASE, json=template_json(env_phone_numbers={"live": SANDBOX}), headers=live.headers
    )
    assert as_live.status_code == 400
    assert "sandbox environment" in as_live.json["errors"]["env_phone_numbers.live"][0]
    as_pre_release = client.post(
        BASE,
        json=template_json(env_phone_numbers={"live": LIVE, "pre-release": SANDBOX}),
        headers=live.headers,
    )
    assert as_pre_release.status_code == 400
    assert list(as_pre_release.json["errors"]) == ["env_phone_numbers.pre-release"]


def test_messaging_service_sids(app, client, live, other):
    created = create(
        client, live.headers, env_phone_numbers={"live": MG_SID, "pre-release": MG_SID.upper()}
    )
    assert created["env_phone_numbers"] == {"live": MG_SID, "pre-release": MG_SID.upper()}
    # A service provisioned for another project is answered as an unknown one (accepted on its
    # form): refusing only those would tell which services other projects own.
    theirs = "MG" + "f" * 32
    add_number(app, other.project_id, theirs, "live")
    response = client.post(
        BASE,
        json=template_json(title="t2", env_phone_numbers={"live": theirs}),
        headers=live.headers,
    )
    assert response.status_code == 201


def test_unknown_fields_are_refused(client, live):
    response = client.post(BASE, json=template_json(colour="red"), headers=live.headers)
    assert response.status_code == 400
    assert response.json["errors"] == {"colour": ["Unknown field."]}
    created = create(client, live.headers)
    patched = client.patch(f"{BASE}/{created['id']}", json={"id": "x"}, headers=live.headers)
    assert patched.status_code == 400 and "id" in patched.json["errors"]


def test_every_violation_is_named_at_once(client, live):
    response = client.post(
        BASE,
        json={"title": "", "body": "{{oops", "env_phone_numbers": {}, "extra": 1},
        headers=live.headers,
    )
    assert response.status_code == 400
    assert set(response.json["errors"]) == {"title", "body", "env_phone_numbers.live", "extra"}


def test_a_body_that_is_not_json_is_400(client, live):
    response = client.post(BASE, data="title=x", headers=live.headers)
    assert response.status_code == 400
    assert "detail" in response.json


# -- titles: uniqueness and duplicates ------------------------------------------------------------
def test_title_clash_on_create_is_409(client, live):
    create(client, live.headers)
    response = client.post(BASE, json=template_json(body="other"), headers=live.headers)
    assert response.status_code == 409
    assert set(response.json) == {"detail"}
    assert "confirmation" in response.json["detail"]


def test_title_clash_on_patch_rename_is_409(client, live):
    create(client, live.headers, title="one")
    two = create(client, live.headers, title="two")
    response = client.patch(f"{BASE}/{two['id']}", json={"title": "one"}, headers=live.headers)
    assert response.status_code == 409
    assert set(response.json) == {"detail"}
    # Keeping its own title is no clash, and the failed rename changed nothing.
    same = client.patch(f"{BASE}/{two['id']}", json={"title": "two"}, headers=live.headers)
    assert same.status_code == 200 and same.json == two


def test_titles_are_unique_per_project_only(client, live, other):
    create(client, live.headers)
    create(client, other.headers, env_phone_numbers={"live": OTHER_PROJECT})


def test_duplicate_naming_chain(client, live):
    original = create(client, live.headers, body="Hi {{entity:name}}")
    url = f"{BASE}/{original['id']}/duplicate"
    first = client.post(url, headers=live.headers)
    assert first.status_code == 201
    assert first.headers["Location"] == f"{BASE}/{first.json['id']}"
    assert first.json["title"] == "confirmation_copy"
    assert first.json["body"] == original["body"]
    assert first.json["env_phone_numbers"] == original["env_phone_numbers"]
    assert first.json["id"] != original["id"]
    assert client.post(url, headers=live.headers).json["title"] == "confirmation_copy2"
    assert client.post(url, headers=live.headers).json["title"] == "confirmation_copy3"
    # A freed title is reused; a copy of a copy gets its own suffix.
    client.delete(f"{BASE}/{first.json['id']}", headers=live.headers)
    assert client.post(url, headers=live.headers).json["title"] == "confirmation_copy"
    copy3 = next(
        t
        for t in client.get(BASE, headers=live.headers).json["templates"]
        if t["title"] == "confirmation_copy3"
    )
    copy_of_copy = client.post(f"{BASE}/{copy3['id']}/duplicate", headers=live.headers)
    assert copy_of_copy.json["title"] == "confirmation_copy3_copy"


def test_duplicate_titles_stay_within_100_characters(client, live):
    long_title = "x" * 98 + "yz"
    original = create(client, live.headers, title=long_title)
    url = f"{BASE}/{original['id']}/duplicate"
    first = client.post(url, headers=live.headers).json["title"]
    second = client.post(url, headers=live.headers).json["title"]
    assert first == "x" * 95 + "_copy" and len(first) == 100
    assert second == "x" * 94 + "_copy2" and len(second) == 100


def test_copy_titles_counts_on_and_stays_short():
    titles = list(copy_titles("t" * 100))
    assert len(set(titles)) == len(titles)
    assert all(len(t) <= 100 for t in titles)
    assert titles[9999].endswith("_copy10000")


def test_duplicate_of_an_unknown_template_is_404(client, live):
    assert client.post(f"{BASE}/nope/duplicate", headers=live.headers).status_code == 404


# -- preview --------------------------------------------------------------------------------------
def preview(client, prov, template_id, **payload):
    response = client.post(f"{BASE}/{template_id}/preview", json=payload, headers=prov.headers)
    assert response.status_code == 200, response.json
    return response.json


def test_preview_fills_every_kind_of_token(client, live):
    created = create(
        client, live.headers, body="${hotel}: {{entity:date}}, code {{vrbl:CODE}}. ${hotel}"
    )
    result = preview(
        client,
        live,
        created["id"],
        variant={"hotel": "Grand"},
        entities={"date": "May 1"},
        variables={"CODE": 1234},
    )
    assert result == {
        "text": "Grand: May 1, code 1234. Grand",
        "encoding": "GSM-7",
        "segments": 1,
        "missing_tokens": [],
    }


def test_preview_with_missing_values_leaves_those_tokens_as_written(client, live):
    created = create(client, live.headers, body="Hi {{entity:name}}, code {{vrbl:CODE}} ${x}")
    result = preview(
        client, live, created["id"], entities={"name": "Ana"}, variables={"CODE": None}
    )
    assert result["text"] == "Hi Ana, code {{vrbl:CODE}} ${x}"
    assert result["missing_tokens"] == ["{{vrbl:CODE}}", "${x}"]


def test_preview_body_is_optional(client, live):
    created = create(client, live.headers, body="Hi {{entity:name}}")
    response = client.post(f"{BASE}/{created['id']}/preview", headers=live.headers)
    assert response.status_code == 200
    assert response.json["text"] == "Hi {{entity:name}}"
    assert response.json["missing_tokens"] == ["{{entity:name}}"]


def test_preview_uses_the_projects_variant_attributes_by_default(app, client, live):
    with app.app_context():
        get_state(app).store.update_project(
            live.project_id, settings={"variants": {"live": {"hotel": "Seaside"}}}
        )
    created = create(client, live.headers, body="Welcome to ${hotel}")
    assert preview(client, live, created["id"])["text"] == "Welcome to Seaside"
    assert preview(client, live, created["id"], variant={"hotel": "X"})["text"] == "Welcome to X"


@pytest.mark.parametrize(
    ("body", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("[" * 80, "GSM-7", 1),
        ("[" * 81, "GSM-7", 2),
        ("ł" * 70, "UCS-2", 1),
        ("ł" + "a" * 70, "UCS-2", 2),
        ("Café " + "a" * 150, "GSM-7", 1),
    ],
)
def test_preview_reports_encoding_and_segments(client, live, body, encoding, segments):
    created = create(client, live.headers, body=body)
    result = preview(client, live, created["id"])
    assert (result["encoding"], result["segments"]) == (encoding, segments)


def test_preview_counts_segments_on_the_filled_in_text(client, live):
    created = create(client, live.headers, body="Hi {{entity:name}}")
    assert preview(client, live, created["id"], entities={"name": "a" * 200})["segments"] == 2
    assert preview(client, live, created["id"], entities={"name": "Zoë 😀"})["encoding"] == "UCS-2"


def test_preview_body_is_validated(client, live):
    created = create(client, live.headers)
    url = f"{BASE}/{created['id']}/preview"
    bad = client.post(url, json={"entities": ["x"]}, headers=live.headers)
    assert bad.status_code == 400 and "entities" in bad.json["errors"]
    extra = client.post(url, json={"values": {}}, headers=live.headers)
    assert extra.status_code == 400 and "values" in extra.json["errors"]
    assert client.post(f"{BASE}/nope/preview", json={}, headers=live.headers).status_code == 404


# -- tenancy --------------------------------------------------------------------------------------
def test_another_project_cannot_see_edit_or_delete_a_template(client, live, other):
    mine = create(client, live.headers)
    url = f"{BASE}/{mine['id']}"
    assert client.get(BASE, headers=other.headers).json == {"templates": []}
    assert client.get(url, headers=other.headers).status_code == 404
    assert client.patch(url, json={"body": "hacked"}, headers=other.headers).status_code == 404
    assert client.delete(url, headers=other.headers).status_code == 404
    assert client.post(f"{url}/duplicate", headers=other.headers).status_code == 404
    assert client.post(f"{url}/preview", json={}, headers=other.headers).status_code == 404
    # The owner still sees it unchanged, and no copy was made anywhere.
    assert client.get(url, headers=live.headers).json == mine
    assert len(client.get(BASE, headers=live.headers).json["templates"]) == 1
    assert client.get(BASE, headers=other.headers).json == {"templates": []}


def test_openapi_documents_every_template_route(client):
    paths = client.get("/v1/openapi.json").json["paths"]
    assert set(paths[BASE]) >= {"get", "post"}
    assert set(paths[BASE + "/{template_id}"]) >= {"get", "patch", "delete"}
    assert "post" in paths[BASE + "/{template_id}/duplicate"]
    assert "post" in paths[BASE + "/{template_id}/preview"]
    assert "409" in paths[BASE]["post"]["responses"]
    assert "204" in paths[BASE + "/{template_id}"]["delete"]["responses"]


# -- sending through the agent --------------------------------------------------------------------
def test_send_sms_template_from_the_agent(app, polysms, client, live, sends):
    create(client, live.headers, body="Booked for {{entity:date}} at ${hotel}, code {{vrbl:CODE}}")
    with app.app_context():
        get_state(app).store.update_project(
            live.project_id, settings={"variants": {"live": {"hotel": "Grand"}}}
        )

    def setup(conv):
        conv.entities["date"] = "May 1"
        conv.state["CODE"] = "X1"

    sends["setup"] = setup
    conversation_id = start_conversation(client, live, LIVE_2)
    before = len(outbox(app, polysms))
    inbound(client, live, LIVE_2, "please confirm")

    [result] = sends["results"]
    assert result["status"] == "sent" and result["template"] == "confirmation"
    new = outbox(app, polysms)[before:]
    assert len(new) == 1
    assert new[0]["body"] == "Booked for May 1 at Grand, code X1"
    assert new[0]["to"] == USER
    # The template's live sender, not the session's number.
    assert new[0]["from"] == LIVE and new[0]["messaging_service_sid"] is None

    sent = conversation(client, live, conversation_id)
    log = sent["metadata"]["sms_sends"]
    assert [entry["template"] for entry in log] == [None, "confirmation"]
    assert log[-1]["from"] == LIVE and log[-1]["status"] == "sent"
    assert sent["messages"][-1]["body"] == "Booked for May 1 at Grand, code X1"
    assert sent["messages"][-1]["segments"] == 1


def test_values_are_inserted_literally(app, polysms, client, live, sends):
    create(client, live.headers, body="Hi {{entity:name}}")
    sends["setup"] = lambda conv: conv.entities.update(name="${hotel} {{vrbl:CODE}}")
    start_conversation(client, live, LIVE)
    inbound(client, live, LIVE, "hello")
    assert outbox(app, polysms)[-1]["body"] == "Hi ${hotel} {{vrbl:CODE}}"


def test_a_missing_value_fails_the_send_and_counts_an_api_failure(
    app, polysms, client, live, sends
):
    body = "Code {{vrbl:CODE}} for {{entity:name}}"
    create(client, live.headers, body=body)
    sends["setup"] = lambda conv: conv.entities.update(name="Ana")
    conversation_id = start_conversation(client, live, LIVE)
    before = len(outbox(app, polysms))
    assert metrics(client, live)["api_failures"] == 0

    inbound(client, live, LIVE, "my code?")

    [result] = sends["results"]
    assert result["status"] == "failed"
    assert "{{vrbl:CODE}}" in result["error_message"]
    assert "{{entity:name}}" not in result["error_message"]
    assert len(outbox(app, polysms)) == before  # nothing half-filled went out
    assert metrics(client, live)["api_failures"] == 1
    failed = conversation(client, live, conversation_id)["messages"][-1]
    assert failed["status"] == "failed" and failed["template"] == "confirmation"
    assert failed["body"] == body


@pytest.mark.parametrize("environment", ["sandbox", "pre-release"])
def test_test_environments_never_send_from_the_live_sender(
    app, polysms, client, sends, environment
):
    prov = provision(app, environment=environment, numbers=(SANDBOX, SANDBOX_2))
    add_number(app, prov.project_id, LIVE, "live")
    create(client, prov.headers, title="no_own_sender", env_phone_numbers={"live": LIVE})
    create(
        client,
        prov.headers,
        title="own_sender",
        env_phone_numbers={"live": LIVE, environment: SANDBOX_2},
    )
    start_conversation(client, prov, SANDBOX)

    sends["template"] = "no_own_sender"
    inbound(client, prov, SANDBOX, "first")
    assert outbox(app, polysms)[-1]["from"] == SANDBOX  # the session's number

    sends["template"] = "own_sender"
    inbound(client, prov, SANDBOX, "second")
    assert outbox(app, polysms)[-1]["from"] == SANDBOX_2  # the template's own

    assert [r["status"] for r in sends["results"]] == ["sent", "sent"]
    assert all(entry["from"] != LIVE for entry in outbox(app, polysms))


def test_a_messaging_service_sender_is_sent_as_messaging_service_sid(
    app, polysms, client, live, sends
):
    create(client, live.headers, env_phone_numbers={"live": MG_SID})
    start_conversation(client, live, LIVE)
    inbound(client, live, LIVE, "hello")
    last = outbox(app, polysms)[-1]
    assert last["messaging_service_sid"] == MG_SID
    assert last["from"] is None
    assert sends["results"][0]["from"] == MG_SID


@pytest.mark.parametrize(
    ("language", "expected"),
    [("es", "Hola"), ("es-MX", "Hola"), ("fr", "Hello"), (None, "Hello")],
)
def test_the_language_variant_is_picked(app, polysms, client, live, sends, language, expected):
    create(client, live.headers, body="Hello")
    create(client, live.headers, title="confirmation_es", body="Hola")
    conversation_id = start_conversation(client, live, LIVE)
    if language:
        with app.app_context():
            store = get_state(app).store
            session = store.get_session(conversation_id)
            store.update_session(conversation_id, session.version, language=language)
    inbound(client, live, LIVE, "hello")
    assert outbox(app, polysms)[-1]["body"] == expected
    used = "confirmation_es" if expected == "Hola" else "confirmation"
    sent_log = conversation(client, live, conversation_id)["metadata"]["sms_sends"]
    assert sent_log[-1]["template"] == used


def test_an_unknown_template_raises_lookup_error(app, polysms, client, live, sends):
    sends["template"] = "nope"
    start_conversation(client, live, LIVE)
    before = len(outbox(app, polysms))
    inbound(client, live, LIVE, "hello")
    [error] = sends["results"]
    assert isinstance(error, LookupError)
    assert "'nope'" in str(error)
    assert len(outbox(app, polysms)) == before
    assert metrics(client, live)["api_failures"] == 0


def test_retry_count_sets_max_attempts(app, client, live, sends):
    create(client, live.headers)
    sends["retry_count"] = 2
    start_conversation(client, live, LIVE)
    inbound(client, live, LIVE, "hello")
    with app.app_context():
        message = get_state(app).store.get_message(sends["results"][0]["id"])
    assert message.max_attempts == 3


def test_an_opted_out_pair_is_suppressed(app, polysms, client, live, sends):
    # The template sends from LIVE; the conversation runs on LIVE_2. The user opts out of LIVE.
    create(client, live.headers)
    conversation_id = start_conversation(client, live, LIVE_2)
    inbound(client, live, LIVE, "STOP")
    assert outbox(app, polysms)[-1]["body"].startswith("You have been unsubscribed")
    before = len(outbox(app, polysms))

    inbound(client, live, LIVE_2, "send me the confirmation")

    [result] = sends["results"]
    assert result["status"] == "suppressed"
    assert len(outbox(app, polysms)) == before
    log = conversation(client, live, conversation_id)["metadata"]["sms_sends"]
    assert log[-1]["template"] == "confirmation" and log[-1]["status"] == "suppressed"
    assert metrics(client, live)["suppressed"] == 1


def test_send_template_directly(app, polysms, client, live):
    """The service function, as conversation.py calls it: a bad retry_count and a bad number are
    the caller's mistakes."""
    create(client, live.headers, body="Hi")
    conversation_id = start_conversation(client, live, LIVE)
    with app.app_context():
        state = get_state(app)
        session = state.store.get_session(conversation_id)
        kwargs = {"variant": None, "entities": None, "variables": None}
        with pytest.raises(ValueError):
            send_template(state, session, USER, "confirmation", retry_count=-1, **kwargs)
        with pytest.raises(ValueError):
            send_template(state, session, "12345", "confirmation", **kwargs)
        with pytest.raises(LookupError):
            send_template(state, session, USER, "missing", **kwargs)
        message = send_template(state, session, USER, "confirmation", **kwargs)
        assert message.template == "confirmation" and message.body == "Hi"
        assert polysms.outbox[-1]["body"] == "Hi"
