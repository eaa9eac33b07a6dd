"""What an authenticated caller can read, and at what cost, on every backend.

- A connector's environment scopes conversations and their messages: another
  environment's conversation is absent (404), its list filter a 400; metrics are per environment.
- Pagination cursors are opaque and bound to the project and environment they were given to;
  anything else (altered, made up, oversized, another project's) is one and the same 400.
- A page of conversations and a sender's compliance report cost a fixed number of queries,
  whatever their size (counted with Peewee's query hook, not timed).
- A template naming another project's Messaging Service SID is answered like an unknown one.
"""

from __future__ import annotations

import base64
import html
import json
import re
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from store_backends import BACKENDS, storage_url

from flask_polysms.backends import create_store
from flask_polysms.errors import InvalidInput, NotFoundError
from flask_polysms.phone import region_of
from flask_polysms.records import Message, Session, new_id
from flask_polysms.services import conversation_reads, cursors, provisioning
from flask_polysms.services import senders as senders_service
from flask_polysms.services.state import get_state
from flask_polysms.services.tenancy import CONNECTOR_HEADER, authenticate

LIVE_NUMBER = "+14155552671"
SANDBOX_NUMBER = "+14155552678"
USERS = ("+14155552674", "+14155552675", "+14155552676", "+14155552677")
MG_SID = "MG" + "ab" * 16

DATABASES = [b for b in BACKENDS if b != "memory"]


@pytest.fixture(params=BACKENDS)
def sms(request, make_sms, tmp_path):
    """A live tenant whose project also has a sandbox number and connector (``sms.sandbox``)."""
    harness = _harness(request, make_sms, tmp_path, request.param)
    yield harness
    get_state(harness.app).store.disconnect()


@pytest.fixture(params=DATABASES)
def db_sms(request, make_sms, tmp_path):
    """As ``sms``, on the database backends only (whose queries can be counted)."""
    harness = _harness(request, make_sms, tmp_path, request.param)
    yield harness
    get_state(harness.app).store.disconnect()


def _harness(request, make_sms, tmp_path, backend):
    harness = make_sms(
        numbers=(LIVE_NUMBER,),
        POLYSMS_STORAGE_URL=storage_url(request, backend, tmp_path),
        POLYSMS_RATE_LIMIT="100000 per second",
        POLYSMS_READ_RATE_LIMIT="100000 per second",
    )
    with harness.app.app_context():
        state = get_state(harness.app)
        provisioning.add_sender(state, harness.tenant.project_id, SANDBOX_NUMBER, "sandbox")
        connector = provisioning.create_connector(state, harness.tenant.project_id, "sandbox")
    harness.sandbox = SimpleNamespace(
        headers={**harness.tenant.headers, CONNECTOR_HEADER: connector.id}
    )
    return harness


def get(sms, path, tenant=None, **query):
    return sms.client.get(path, query_string=query, headers=(tenant or sms.tenant).headers)


def page(sms, tenant=None, **query) -> dict:
    response = get(sms, "/v1/conversations", tenant, **query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def refused(response, field: str | None = None) -> dict:
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) <= {"detail", "errors"} and body["detail"]
    if field:
        assert field in body["errors"], body
    return body


# -- environments ---------------------------------------------------------------------------------
def test_a_conversation_of_another_environment_is_absent(sms):
    live = sms.send_ok(USERS[0])["conversation_id"]
    sandbox = sms.send_ok(USERS[1], tenant=sms.sandbox)["conversation_id"]

    from_sandbox = get(sms, f"/v1/conversations/{live}", sms.sandbox)
    absent = get(sms, "/v1/conversations/conv_does_not_exist", sms.sandbox)
    from_live = get(sms, f"/v1/conversations/{sandbox}")

    assert from_sandbox.status_code == absent.status_code == from_live.status_code == 404
    assert from_sandbox.get_json() == absent.get_json() == from_live.get_json()
    assert get(sms, f"/v1/conversations/{live}").get_json()["environment"] == "live"
    assert get(sms, f"/v1/conversations/{sandbox}", sms.sandbox).status_code == 200


def test_a_list_shows_the_connector_environment_only(sms):
    live = [sms.send_ok(u)["conversation_id"] for u in USERS[:2]]
    sandbox = [sms.send_ok(u, tenant=sms.sandbox)["conversation_id"] for u in USERS[2:]]

    def ids(tenant=None, **query):
        return [c["id"] for c in page(sms, tenant, **query)["conversations"]]

    assert ids() == ids(environment="live") == live[::-1]
    assert ids(sms.sandbox) == ids(sms.sandbox, environment="sandbox") == sandbox[::-1]
    assert ids(user_number=USERS[2]) == []
    listed = page(sms, sms.sandbox)["conversations"]
    assert {c["user_number"] for c in listed} == set(USERS[2:])
    assert all(c["environment"] == "sandbox" and c["messages"] for c in listed)


@pytest.mark.parametrize("other", ["sandbox", "pre-release"])
def test_a_list_filter_naming_another_environment_is_400(sms, other):
    sms.send_ok(USERS[0])

    body = refused(get(sms, "/v1/conversations", environment=other), "environment")

    assert "live" in body["detail"]


def test_the_service_scopes_every_caller_alike(sms):
    """The dashboard and operator routes read through the same functions as the API."""
    live = sms.send_ok(USERS[0])["conversation_id"]
    with sms.app.app_context():
        state = get_state(sms.app)
        store = state.store
        as_sandbox = authenticate(store, sms.tenant.api_key, sms.sandbox.headers[CONNECTOR_HEADER])
        as_live = authenticate(store, sms.tenant.api_key, sms.tenant.connector_id)

        assert conversation_reads.find_conversation(state, as_live, live).id == live
        with pytest.raises(NotFoundError):
            conversation_reads.find_conversation(state, as_sandbox, live)
        assert conversation_reads.list_conversations(state, as_sandbox).sessions == []
        with pytest.raises(InvalidInput):
            conversation_reads.list_conversations(state, as_sandbox, environment="live")
        assert conversation_reads.scoped_environment(as_sandbox, "dev") == "sandbox"


def test_metrics_are_per_environment(sms):
    sms.send_ok(USERS[0])
    sms.send_ok(USERS[1])
    sms.send_ok(USERS[2], tenant=sms.sandbox)

    assert sms.metrics()["sent"] == 2 and sms.metrics()["conversations"] == 2
    assert sms.metrics(tenant=sms.sandbox)["sent"] == 1
    assert sms.metrics(tenant=sms.sandbox)["conversations"] == 1


# -- cursors --------------------------------------------------------------------------------------
def walk(sms, tenant=None, limit=3) -> tuple[list[str], list[str]]:
    """Every conversation id, page by page, and the cursors handed out."""
    seen, cursors, cursor = [], [], None
    while True:
        query = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        found = page(sms, tenant, **query)
        seen += [c["id"] for c in found["conversations"]]
        cursor = found["next_cursor"]
        if cursor is None:
            return seen, cursors
        cursors.append(cursor)
        assert len(cursors) < 20


def _readable(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def test_cursors_walk_every_conversation_once_and_tell_nothing(sms):
    made = [sms.send_ok(USERS[i % 4], f"m{i}")["conversation_id"] for i in range(7)]
    sms.send_ok(USERS[0], tenant=sms.sandbox)

    seen, cursors = walk(sms)

    assert seen == made[::-1]
    assert len(cursors) == 2
    for cursor in cursors:
        assert len(cursor) <= 512 and cursor.isascii()
        readable = _readable(cursor)
        assert not any(conv.encode() in readable or conv in cursor for conv in made)
        assert sms.tenant.project_id.encode() not in readable
    # Sealed afresh each time: the same position never reads the same twice.
    again = page(sms, limit=3)["next_cursor"]
    assert again != cursors[0]
    assert [c["id"] for c in page(sms, limit=3, cursor=again)["conversations"]] == made[3:0:-1]


def test_a_cursor_keeps_its_place_when_conversations_arrive(sms):
    made = [sms.send_ok(USERS[0], f"m{i}")["conversation_id"] for i in range(4)]
    first = page(sms, limit=2)
    sms.send_ok(USERS[1], "newer")

    second = page(sms, limit=2, cursor=first["next_cursor"])

    assert [c["id"] for c in second["conversations"]] == [made[1], made[0]]
    assert second["next_cursor"] is None


def test_a_cursor_is_refused_by_another_project_and_environment(sms):
    for i in range(3):
        sms.send_ok(USERS[i])
    stranger = sms.provision(numbers=())
    sibling = sms.provision(numbers=(), account_id=sms.tenant.account_id)
    cursor = page(sms, limit=1)["next_cursor"]
    made_up = refused(get(sms, "/v1/conversations", cursor="AAAA" * 20))

    for tenant in (stranger, sibling, sms.sandbox):
        assert refused(get(sms, "/v1/conversations", tenant, cursor=cursor)) == made_up
    assert len(page(sms, limit=1, cursor=cursor)["conversations"]) == 1


def _flip(cursor: str, at: int) -> str:
    replacement = "A" if cursor[at] != "A" else "B"
    return cursor[:at] + replacement + cursor[at + 1 :]


def test_altered_made_up_and_oversized_cursors_are_the_same_400(sms):
    for i in range(3):
        sms.send_ok(USERS[i])
    cursor = page(sms, limit=1)["next_cursor"]
    before = page(sms)
    as_old = base64.urlsafe_b64encode(b"1").decode().rstrip("=")  # 0.1 handed these out
    huge = base64.urlsafe_b64encode(str(10**40).encode()).decode().rstrip("=")

    bad = [
        _flip(cursor, 10),
        _flip(cursor, len(cursor) // 2),
        _flip(cursor, len(cursor) - 1),
        cursor[:-4],
        cursor + "AAAA",
        as_old,
        huge,  # a position beyond 64 bits: SQLite answered 500 for it
        "9" * 5000,
        "x" * 513,
        "@@@",
        "ümlaut",
        "not a cursor!",
    ]
    answers = [refused(get(sms, "/v1/conversations", cursor=value), "cursor") for value in bad]

    assert len({json.dumps(a, sort_keys=True) for a in answers[:-1]}) <= 2  # schema or cipher
    assert all("cursor" in a["errors"] for a in answers)
    assert page(sms) == before


def test_a_cursor_sealed_under_another_key_is_refused(sms):
    sms.send_ok(USERS[0])
    sms.send_ok(USERS[1])
    cursor = page(sms, limit=1)["next_cursor"]
    scope = cursors.CursorScope("conversations", sms.tenant.project_id, "live")
    settings = get_state(sms.app).settings
    other_key = SimpleNamespace(secret_key="another key", encryption_keys=())

    assert cursors.open_cursor(settings, scope, cursor)
    with pytest.raises(InvalidInput):
        cursors.open_cursor(other_key, scope, cursor)
    for other_scope in (
        cursors.CursorScope("opt_outs", sms.tenant.project_id, "live"),
        cursors.CursorScope("conversations", sms.tenant.project_id, "sandbox"),
        cursors.CursorScope("conversations", "prj_other", "live"),
    ):
        with pytest.raises(InvalidInput):
            cursors.open_cursor(settings, other_scope, cursor)


def test_cursors_follow_the_encryption_keys_through_a_rotation():
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key(), Fernet.generate_key()
    scope = cursors.CursorScope("conversations", "prj_a", "live")

    def settings(*keys):
        return SimpleNamespace(encryption_keys=keys, secret_key="the app's secret")

    sealed = cursors.seal_cursor(settings(old), scope, "conv_1")

    assert cursors.open_cursor(settings(new, old), scope, sealed) == "conv_1"
    assert cursors.seal_cursor(settings(new, old), scope, "conv_1") != sealed
    for without_it in (settings(new), settings()):
        with pytest.raises(InvalidInput):
            cursors.open_cursor(without_it, scope, sealed)
    assert cursors.seal_cursor(settings(old), scope, None) is None
    assert cursors.open_cursor(settings(old), scope, None) is None


def test_the_dashboard_pages_with_the_same_sealed_cursors(make_sms, monkeypatch):
    from flask_polysms.web.dashboard import views

    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    sms = make_sms(POLYSMS_DASHBOARD=True, numbers=(LIVE_NUMBER,))
    made = [sms.send_ok(user)["conversation_id"] for user in USERS[:3]]
    stranger = sms.provision(numbers=(SANDBOX_NUMBER,))
    sms.send_ok(USERS[0], tenant=stranger)
    sms.send_ok(USERS[1], tenant=stranger)
    theirs = page(sms, stranger, limit=1)["next_cursor"]
    browser = sms.app.test_client()
    form = browser.get("/dashboard/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    signed = browser.post(
        "/dashboard/sign-in",
        data={
            "csrf_token": token,
            "api_key": sms.tenant.api_key,
            "connector_id": sms.tenant.connector_id,
        },
    )
    assert signed.status_code == 302

    first = browser.get("/dashboard/conversations").get_data(as_text=True)
    link = html.unescape(re.search(r'href="([^"]+)" id="next-page"', first).group(1))
    cursor = parse_qs(urlsplit(link).query)["cursor"][0]
    second = browser.get(link).get_data(as_text=True)

    assert not any(conv in cursor for conv in made)
    assert made[0] in second and made[1] not in second and made[2] not in second
    assert (
        browser.get("/dashboard/conversations", query_string={"cursor": theirs}).status_code == 400
    )
    assert [c["id"] for c in page(sms, cursor=cursor)["conversations"]] == [made[0]]


# -- the store's cursors --------------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    store = create_store(storage_url(request, request.param, tmp_path))
    store.create_schema()
    yield store
    store.disconnect()


def a_session(project_id: str, agent_number: str = LIVE_NUMBER, user: str = USERS[0]) -> Session:
    from flask_polysms.clock import utcnow

    now = utcnow()
    return Session(
        id=new_id("conv_"),
        project_id=project_id,
        environment="live",
        user_number=user,
        agent_number=agent_number,
        created_at=now,
        last_activity_at=now,
    )


def a_message(session: Session, body: str) -> Message:
    from flask_polysms.clock import utcnow

    now = utcnow()
    return Message(
        id=new_id("msg_"),
        project_id=session.project_id,
        environment=session.environment,
        session_id=session.id,
        direction="outbound",
        kind="agent",
        body=body,
        to=session.user_number,
        from_=session.agent_number,
        created_at=now,
        updated_at=now,
    )


def test_a_store_cursor_is_the_last_id_and_means_nothing_to_another_project(store):
    ours = [store.create_session(a_session("prj_a")) for _ in range(3)]
    theirs = store.create_session(a_session("prj_b"))

    first, cursor = store.list_sessions("prj_a", limit=2)

    assert cursor == first[-1].id == ours[1].id
    assert [s.id for s in store.list_sessions("prj_a", cursor=cursor)[0]] == [ours[0].id]
    assert store.list_sessions("prj_b", cursor=cursor) == ([], None)
    assert store.list_sessions("prj_a", cursor=theirs.id) == ([], None)
    assert store.list_sessions("prj_a", cursor="conv_" + "9" * 90) == ([], None)
    for bad in ("9" * 200, "not a cursor!", "@@@"):
        with pytest.raises(ValueError):
            store.list_sessions("prj_a", cursor=bad)


def test_the_messages_of_a_page_in_one_call(store):
    one, two, empty = (store.create_session(a_session("prj_a")) for _ in range(3))
    sent = [store.add_message(a_message(s, f"{s.id}-{i}")) for i in range(3) for s in (one, two)]

    found = store.list_messages_of_sessions([two.id, one.id, empty.id])

    assert list(found) == [two.id, one.id, empty.id]
    assert [m.body for m in found[one.id]] == [m.body for m in sent if m.session_id == one.id]
    assert [m.id for m in found[two.id]] == [m.id for m in store.list_messages(two.id)]
    assert found[empty.id] == []
    assert store.list_messages_of_sessions([]) == {}


def test_sender_user_numbers_read_the_newest_sessions_only(store):
    other_agent = SANDBOX_NUMBER
    store.create_session(a_session("prj_a", user="+447400123456"))  # the oldest
    store.create_session(a_session("prj_a", user=USERS[0]))
    store.create_session(a_session("prj_a", other_agent, user="+4915123456789"))
    store.create_session(a_session("prj_a", user=USERS[1]))
    store.create_session(a_session("prj_a", user=USERS[0]))
    store.create_session(a_session("prj_b", user="+33612345678"))

    assert store.sender_user_numbers("prj_a", LIVE_NUMBER, 10) == (
        sorted(["+447400123456", USERS[0], USERS[1]]),
        False,
    )
    assert store.sender_user_numbers("prj_a", LIVE_NUMBER, 5) == (
        sorted(["+447400123456", USERS[0], USERS[1]]),
        False,
    )
    assert store.sender_user_numbers("prj_a", LIVE_NUMBER, 4) == (sorted(USERS[:2]), True)
    assert store.sender_user_numbers("prj_a", LIVE_NUMBER, 1) == ([USERS[0]], True)
    assert store.sender_user_numbers("prj_a", other_agent, 3) == (["+4915123456789"], True)
    assert store.sender_user_numbers("prj_a", "+14155550000", 10) == ([], False)
    assert store.sender_user_numbers("prj_c", LIVE_NUMBER, 10) == ([], False)


# -- bounded work ---------------------------------------------------------------------------------
class Queries:
    """Counts the statements a Peewee store runs (its query hook: one per ``cursor.execute``)."""

    def __init__(self, sms) -> None:
        self.database = get_state(sms.app).store.database
        self.sql: list[str] = []

    def __enter__(self) -> Queries:
        self.database.query_hooks = [lambda event: self.sql.append(event.sql)]
        return self

    def __exit__(self, *exc) -> None:
        self.database.query_hooks = []


def _reply(sms, user: str) -> None:
    sms.inbound_ok(user, "a reply")


def test_a_page_of_conversations_costs_the_same_few_queries_whatever_its_size(db_sms):
    sms = db_sms

    def count_page() -> tuple[int, dict]:
        with Queries(sms) as queries:
            body = page(sms, limit=200)
        return len(queries.sql), body

    for i in range(2):
        sms.send_ok(USERS[i])
        _reply(sms, USERS[i])
    small, _ = count_page()
    for i in range(2, 14):
        sms.send_ok(USERS[i % 4], f"m{i}")
    large, body = count_page()

    # The credentials, the page of sessions and the messages of all of them.
    assert small == large <= 3
    assert len(body["conversations"]) == 14
    for conversation in body["conversations"][:3] + body["conversations"][-2:]:
        one = get(sms, f"/v1/conversations/{conversation['id']}").get_json()
        assert one == conversation


def test_the_compliance_report_costs_the_same_few_queries_whatever_the_sessions(db_sms):
    sms = db_sms

    def count_report() -> tuple[int, dict]:
        with Queries(sms) as queries:
            response = get(sms, f"/v1/senders/{LIVE_NUMBER}/compliance")
        assert response.status_code == 200, response.get_json()
        return len(queries.sql), response.get_json()

    sms.send_ok(USERS[0])
    small, _ = count_report()
    for number in ("+447400123456", "+4915123456789", "+385921234567", *USERS[1:]):
        sms.send_ok(number)
    with sms.app.app_context():
        store = get_state(sms.app).store
        for i in range(250):  # more than one page of the old scan, straight into the store
            store.create_session(a_session(sms.tenant.project_id, user=USERS[i % 4]))
    large, report = count_report()

    # The credentials, the sender, its users' numbers (one bounded query) and the project.
    assert small == large <= 4
    assert [d["country"] for d in report["destinations"]] == ["DE", "GB", "HR", "US"]
    assert report["destinations_truncated"] is False


def test_the_compliance_report_says_when_older_sessions_were_left(sms, monkeypatch):
    monkeypatch.setattr(senders_service, "MAX_SESSIONS_SCANNED", 2)
    for number in ("+447400123456", "+385921234567", USERS[0]):  # newest last
        sms.send_ok(number)

    report = get(sms, f"/v1/senders/{LIVE_NUMBER}/compliance").get_json()

    assert report["destinations_truncated"] is True
    assert [d["country"] for d in report["destinations"]] == ["HR", "US"]


NUMBERS = [
    "+14155552672",  # US
    "+14165550101",  # CA: the same country code, another area code
    "+17875550100",  # PR
    "+447400123456",  # GB
    "+447797123456",  # JE: +44 is shared, asked number by number
    "+4915123456789",
    "+385921234567",
    "+35943012345",
    "+80012345678",  # non-geographic: no country
    "+61412345678",
    "+79161234567",  # RU
    "+77012345678",  # KZ
    "not a number",
    "+999123",
]


def test_countries_are_what_region_of_says_number_by_number():
    expected = sorted({region_of(n) for n in NUMBERS} - {None})

    assert senders_service.countries_of(NUMBERS) == expected
    assert senders_service.countries_of(sorted(NUMBERS, reverse=True)) == expected
    assert "JE" in expected and "PR" in expected and "KZ" in expected


# -- templates: another project's Messaging Service SID ---------------------------------------
def test_another_projects_messaging_service_is_answered_like_an_unknown_one(sms):
    stranger = sms.provision(numbers=())
    with sms.app.app_context():
        provisioning.add_sender(get_state(sms.app), stranger.project_id, MG_SID, "live")
    unknown_sid = "MG" + "cd" * 16

    def create(title: str, sid: str):
        body = {"title": title, "body": "Hello", "env_phone_numbers": {"live": sid}}
        return sms.client.post("/v1/sms-templates", json=body, headers=sms.tenant.headers)

    theirs, unknown = create("theirs", MG_SID), create("unknown", unknown_sid)

    assert theirs.status_code == unknown.status_code
    assert (theirs.get_json() or {}).get("detail") == (unknown.get_json() or {}).get("detail")
    assert theirs.get_json().get("errors") == unknown.get_json().get("errors")
