"""SMS templates: the preview route, which fills in tokens and reports encoding, segments and the
tokens left without a value."""

from __future__ import annotations

import pytest
from templates_support import (
    BASE,
    app_fixture,  # noqa: F401
    client_fixture,  # noqa: F401
    create,
    live_fixture,  # noqa: F401
    polysms_fixture,  # noqa: F401
)

from flask_polysms import get_state


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
