"""Opt-outs as CSV files on every backend: `flask polysms opt-outs export|import FILE.csv` and the
dashboard's download (columns `user_number,sender,keyword,created_at`)."""

from __future__ import annotations

import csv
import io
import re

import pytest
import store_backends
from store_backends import BACKENDS

AGENT = "+14155552671"
OTHER_AGENT = "+14155552672"
FOREIGN_AGENT = "+14155552673"
USER = "+14155552674"
OTHER_USER = "+14155552675"
HEADER = "user_number,sender,keyword,created_at"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


@pytest.fixture
def sms(make_sms, storage_url):
    harness = make_sms(
        numbers=(AGENT, OTHER_AGENT), POLYSMS_STORAGE_URL=storage_url, POLYSMS_DASHBOARD=True
    )
    yield harness
    harness.store.disconnect()


@pytest.fixture
def other(sms):
    return sms.provision(numbers=(FOREIGN_AGENT,))


def cli(sms, *args: str):
    return sms.app.test_cli_runner().invoke(args=["polysms", "opt-outs", *args])


def current(sms, project_id: str | None = None) -> list[tuple]:
    with sms.app.app_context():
        rows, _ = sms.store.list_opt_outs(project_id or sms.tenant.project_id, limit=200)
    return [(o.recipient, o.sender, o.keyword, o.source, o.created_at.isoformat()) for o in rows]


def events(sms, user: str = USER) -> list[tuple]:
    with sms.app.app_context():
        found = sms.store.opt_out_history(sms.tenant.project_id, user)
    return [(e.sender, e.action, e.keyword, e.source) for e in found]


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_import_records_every_row_with_source_import_and_twice_changes_nothing(sms, tmp_path):
    path = write(
        tmp_path,
        "in.csv",
        f"{HEADER}\n"
        f"{USER},{AGENT},STOP,2026-05-04T10:00:00+00:00\n"
        f"{USER},{OTHER_AGENT},,2026-05-04T12:00:00Z\n"
        "\n"
        f'{OTHER_USER},{AGENT},"Arrêt, svp",2026-05-05T09:30:00+02:00\n',
    )
    result = cli(sms, "import", str(path))
    assert result.exit_code == 0, result.output
    assert "3 opt-out(s) imported, 0 already opted out" in result.output
    assert current(sms) == [
        (USER, AGENT, "STOP", "import", "2026-05-04T10:00:00+00:00"),
        (USER, OTHER_AGENT, None, "import", "2026-05-04T12:00:00+00:00"),
        (OTHER_USER, AGENT, "Arrêt, svp", "import", "2026-05-05T07:30:00+00:00"),
    ]
    before = (current(sms), events(sms), events(sms, OTHER_USER))

    again = cli(sms, "import", str(path))
    assert again.exit_code == 0, again.output
    assert "0 opt-out(s) imported, 3 already opted out" in again.output
    assert (current(sms), events(sms), events(sms, OTHER_USER)) == before
    assert events(sms) == [
        (AGENT, "opt_out", "STOP", "import"),
        (OTHER_AGENT, "opt_out", None, "import"),
    ]


def test_a_bad_row_is_reported_by_line_and_nothing_is_imported(sms, other, tmp_path):
    path = write(
        tmp_path,
        "bad.csv",
        f"{HEADER}\n"
        f"{USER},{AGENT},STOP,2026-05-04T10:00:00+00:00\n"  # fine, but not applied
        f"4155552674,{AGENT},STOP,2026-05-04T10:00:00+00:00\n"  # line 3: not E.164
        f"{USER},+14155550199,STOP,2026-05-04T10:00:00+00:00\n"  # line 4: nobody's sender
        f"{USER},{AGENT},STOP,2026-05-04 10:00\n"  # line 5: no offset
        f"{USER},{AGENT},STOP,yesterday\n"  # line 6: not a time
        f"{USER},{AGENT},STOP,2999-01-01T00:00:00+00:00\n"  # line 7: the future
        f"{USER},{AGENT}\n",  # line 8: columns
    )
    result = cli(sms, "import", str(path))
    assert result.exit_code == 1
    for line in (3, 4, 5, 6, 7, 8):
        assert f"bad.csv:{line}: " in result.output, result.output
    assert "bad.csv:2:" not in result.output
    assert "6 bad row(s)" in result.output and "nothing imported" in result.output
    assert current(sms) == [] and events(sms) == []

    # With --project, another project's sender is a bad row too.
    theirs = write(tmp_path, "theirs.csv", f"{HEADER}\n{USER},{FOREIGN_AGENT},STOP,\n")
    refused = cli(sms, "import", str(theirs), "--project", sms.tenant.project_id)
    assert refused.exit_code == 1 and "theirs.csv:2: sender" in refused.output
    assert current(sms, other.project_id) == []
    # Without it, each row goes to its sender's project.
    assert cli(sms, "import", str(theirs)).exit_code == 0
    assert [row[:2] for row in current(sms, other.project_id)] == [(USER, FOREIGN_AGENT)]
    assert current(sms) == []


@pytest.mark.parametrize(
    "text",
    ["", "user_number,sender\n", f"sender,user_number,keyword,created_at\n{USER},{AGENT},,\n"],
)
def test_a_file_without_the_header_is_refused(sms, tmp_path, text):
    result = cli(sms, "import", str(write(tmp_path, "h.csv", text)))
    assert result.exit_code == 1 and "h.csv:1: the" in result.output, result.output
    assert current(sms) == []


def test_export_writes_the_current_opt_outs_and_imports_back(sms, other, tmp_path):
    for body, user, to in (("STOP", USER, AGENT), ("QUIT", OTHER_USER, OTHER_AGENT)):
        sms.inbound_ok(user, body, to=to)
    sms.inbound_ok(OTHER_USER, "START", to=OTHER_AGENT)  # opted back in: not exported
    sms.inbound_ok(USER, "END", to=OTHER_AGENT)
    response = sms.post_signed(
        "/v1/twilio/sms",
        sms.inbound_params(USER, "STOP", to=FOREIGN_AGENT),
        token=other.twilio_auth_token,
    )
    assert response.status_code == 200

    out = tmp_path / "out.csv"
    result = cli(sms, "export", str(out), "--project", sms.tenant.project_id)
    assert result.exit_code == 0 and "2 opt-out(s) written" in result.output, result.output
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert rows[0] == HEADER.split(",")
    assert [row[:3] for row in rows[1:]] == [[USER, AGENT, "STOP"], [USER, OTHER_AGENT, "END"]]
    everyone = tmp_path / "all.csv"
    assert cli(sms, "export", str(everyone)).exit_code == 0
    assert len(everyone.read_text(encoding="utf-8").splitlines()) == 4  # every project's

    # The export imports into a fresh store as the same opt-outs, times included.
    exported = current(sms)
    with sms.app.app_context():
        for o in sms.store.list_opt_outs(sms.tenant.project_id)[0]:
            sms.store.set_opt_out(
                sms.tenant.project_id, o.recipient, o.sender, False, None, o.created_at
            )
    assert current(sms) == []
    assert cli(sms, "import", str(out)).exit_code == 0
    assert [(r[0], r[1], r[2], r[4]) for r in current(sms)] == [
        (r[0], r[1], r[2], r[4]) for r in exported
    ]
    assert {r[3] for r in current(sms)} == {"import"}


def test_the_dashboard_downloads_the_projects_export(sms, other):
    sms.inbound_ok(USER, "STOP", to=AGENT)
    response = sms.post_signed(
        "/v1/twilio/sms",
        sms.inbound_params(OTHER_USER, "STOP", to=FOREIGN_AGENT),
        token=other.twilio_auth_token,
    )
    assert response.status_code == 200
    client = sms.app.test_client()
    # Signed out: to the sign-in page, nothing of the file.
    response = client.get("/dashboard/opt-outs/export.csv")
    assert response.status_code == 302 and "sign-in" in response.headers["Location"]

    page = client.get("/dashboard/sign-in").get_data(as_text=True)
    token = CSRF_RE.search(page).group(1)
    signed = client.post(
        "/dashboard/sign-in",
        data={
            "api_key": sms.tenant.api_key,
            "connector_id": sms.tenant.connector_id,
            "csrf_token": token,
        },
    )
    assert signed.status_code == 302
    assert "/dashboard/opt-outs/export.csv" in client.get("/dashboard/opt-outs").get_data(
        as_text=True
    )
    response = client.get("/dashboard/opt-outs/export.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["Cache-Control"] == "no-store"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == HEADER.split(",")
    assert [row[:3] for row in rows[1:]] == [[USER, AGENT, "STOP"]]  # this project's only
