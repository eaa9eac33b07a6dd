"""The dashboard's template manager through Flask's test client: create, edit, duplicate and
delete a template, the form's errors, and the live preview (text, encoding, segments, what is
missing)."""

from __future__ import annotations

import re

from dashboard_webhooks_support import (
    AGENT,
    USER,
    browser_fixture,  # noqa: F401
    signed_in_fixture,  # noqa: F401
    sms_fixture,  # noqa: F401
    text,
)

from flask_polysms.services import templates


# -- template manager -----------------------------------------------------------------------------
def test_template_create_edit_duplicate_delete(signed_in, sms):
    created = signed_in.post(
        "/templates/new",
        {"title": "reminder", "body": "See you at ${place}", "sender_live": AGENT},
    )
    assert created.status_code == 302
    edit_path = created.headers["Location"].removeprefix("/dashboard")
    page = text(signed_in.get(edit_path))
    assert "Template &#39;reminder&#39; created." in page
    assert 'id="preview-text">See you at ${place}<' in page
    assert "No value for ${place}" in page
    assert "reminder" in text(signed_in.get("/templates"))

    saved = signed_in.post(
        edit_path, {"title": "reminder2", "body": "Bye {{entity:name}}", "sender_live": AGENT}
    )
    assert saved.status_code == 302
    template_id = edit_path.rsplit("/", 1)[1]
    stored = templates.get_template(sms.state, sms.tenant.project_id, template_id)
    assert (stored.title, stored.body) == ("reminder2", "Bye {{entity:name}}")

    copy = signed_in.post(f"/templates/{template_id}/duplicate")
    assert copy.status_code == 302
    titles = [t.title for t in templates.list_templates(sms.state, sms.tenant.project_id)]
    assert titles == ["reminder2", "reminder2_copy"]

    deleted = signed_in.post(f"/templates/{template_id}/delete")
    assert deleted.headers["Location"] == "/dashboard/templates"
    titles = [t.title for t in templates.list_templates(sms.state, sms.tenant.project_id)]
    assert titles == ["reminder2_copy"]
    assert signed_in.get(edit_path).status_code == 404


def test_template_form_errors_name_the_field(signed_in, sms):
    bad = signed_in.post(
        "/templates/new", {"title": "x", "body": "Hi {{ entity:name }}", "sender_live": USER}
    )
    assert bad.status_code == 400
    page = text(bad)
    assert "bad token" in page  # the body's field error
    assert f"{USER} is not provisioned for this project" in page
    assert 'value="x"' in page  # what was typed is kept
    signed_in.post("/templates/new", {"title": "taken", "body": "Hi", "sender_live": AGENT})
    clash = signed_in.post("/templates/new", {"title": "taken", "body": "Hi", "sender_live": AGENT})
    assert clash.status_code == 409
    assert "already exists" in text(clash)


def test_new_template_form_offers_the_live_numbers(signed_in):
    page = text(signed_in.get("/templates/new"))
    assert f'name="sender_live" value="{AGENT}"' in page
    assert f'<option value="{AGENT}">' in page


def _preview(signed_in, **form) -> dict[str, str]:
    response = signed_in.post("/templates/preview", form)
    assert response.status_code == 200
    return dict(re.findall(r'id="(preview-[a-z]+)">([^<]*)<', text(response)))


def test_live_preview(signed_in, sms):
    shown = _preview(
        signed_in,
        body="Hi ${first}, code {{vrbl:code}} for {{entity:item}}",
        variant="first=Ann",
        entities="item = lamp",
        variables="code=42",
    )
    assert shown["preview-text"] == "Hi Ann, code 42 for lamp"
    assert (shown["preview-encoding"], shown["preview-segments"]) == ("GSM-7", "1")
    assert "preview-missing" not in shown
    emoji = _preview(signed_in, body="Thanks 😀 " + "x" * 70)
    assert (emoji["preview-encoding"], emoji["preview-segments"]) == ("UCS-2", "2")
    long = _preview(signed_in, body="a" * 161)
    assert (long["preview-encoding"], long["preview-segments"]) == ("GSM-7", "2")
    missing = text(signed_in.post("/templates/preview", {"body": "Hi ${who}"}))
    assert "No value for ${who}" in missing
    broken = _preview(signed_in, body="Hi }}")
    assert "closes no" in broken["preview-error"]
    bad_values = _preview(signed_in, body="Hi", entities="no equals sign")
    assert "entities, line 1" in bad_values["preview-error"]


def test_edit_page_preview_uses_the_environments_variant(signed_in, sms):
    sms.store.update_project(
        sms.tenant.project_id, settings={"variants": {"live": {"clinic": "Sunrise"}}}
    )
    template = templates.create_template(
        sms.state,
        sms.tenant.project_id,
        title="t",
        body="At ${clinic}",
        env_phone_numbers={"live": AGENT},
    )
    page = text(signed_in.get(f"/templates/{template.id}"))
    assert 'id="preview-text">At Sunrise<' in page
    assert "clinic=Sunrise</textarea>" in page
