"""SMS templates: validation of the /v1/sms-templates request bodies: title and body lengths,
token syntax, the per-environment senders and unknown fields."""

from __future__ import annotations

import pytest
from templates_support import (
    BASE,
    LIVE,
    MG_SID,
    OTHER_PROJECT,
    SANDBOX,
    UNPROVISIONED,
    add_number,
    app_fixture,  # noqa: F401
    client_fixture,  # noqa: F401
    create,
    live_fixture,  # noqa: F401
    other_fixture,  # noqa: F401
    polysms_fixture,  # noqa: F401
    template_json,
)


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
