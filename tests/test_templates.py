"""SMS templates: the /v1/sms-templates CRUD routes, their authentication, tenant isolation and
OpenAPI documentation, through the test client."""

from __future__ import annotations

import phonenumbers
import pytest
from templates_support import (
    BASE,
    LIVE,
    LIVE_2,
    OTHER_PROJECT,
    PRE_RELEASE,
    SANDBOX,
    SANDBOX_2,
    USER,
    add_number,
    app_fixture,  # noqa: F401
    client_fixture,  # noqa: F401
    create,
    live_fixture,  # noqa: F401
    other_fixture,  # noqa: F401
    polysms_fixture,  # noqa: F401
    template_json,
)


def test_the_numbers_used_here_are_valid():
    for number in (LIVE, LIVE_2, SANDBOX, SANDBOX_2, PRE_RELEASE, OTHER_PROJECT, USER):
        assert phonenumbers.is_valid_number(phonenumbers.parse(number))


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
