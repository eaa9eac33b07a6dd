"""SMS templates: title uniqueness within a project and the titles given to duplicates."""

from __future__ import annotations

from templates_support import (
    BASE,
    OTHER_PROJECT,
    app_fixture,  # noqa: F401
    client_fixture,  # noqa: F401
    create,
    live_fixture,  # noqa: F401
    other_fixture,  # noqa: F401
    polysms_fixture,  # noqa: F401
    template_json,
)

from flask_polysms.services.templates import copy_titles


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
