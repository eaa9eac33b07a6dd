"""Consent management (DESIGN §7.7) on every backend: the project's settings (`/v1/project`), its
own keywords and replies per language, Twilio's `OptOutType`, and the `/v1/opt-outs` routes with
their history. CSV import and export are in test_opt_out_files.py."""

from __future__ import annotations

import pytest
import store_backends
from store_backends import BACKENDS

from flask_polysms.backends import create_store

AGENT = "+14155552671"
OTHER_AGENT = "+14155552672"
FOREIGN_AGENT = "+14155552673"
USER = "+14155552674"
OTHER_USER = "+14155552675"
STOP_REPLY = (
    "You have been unsubscribed and will not receive further messages. Reply START to resubscribe."
)
START_REPLY = "You have been resubscribed and will receive messages again."
HELP_REPLY = "Reply STOP to unsubscribe or START to resubscribe."
DEFAULT_SETTINGS_REPLIES = {
    "en": {"opt_out": STOP_REPLY, "opt_in": START_REPLY, "help": HELP_REPLY}
}
FRENCH = {
    "opt_out": "Vous êtes désinscrit. Répondez START pour vous réinscrire.",
    "opt_in": "Vous êtes réinscrit.",
    "help": "Répondez ARRET pour vous désinscrire.",
}


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


class Agent:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, conv, text):
        self.calls.append(text)
        return f"agent: {text}"


@pytest.fixture
def agent() -> Agent:
    return Agent()


@pytest.fixture
def sms(make_sms, storage_url, agent):
    harness = make_sms(agent=agent, numbers=(AGENT, OTHER_AGENT), POLYSMS_STORAGE_URL=storage_url)
    yield harness
    harness.store.disconnect()  # pooled server connections: not left to the garbage collector


@pytest.fixture
def other(sms):
    """Another account's project on the same app, with a number of its own."""
    return sms.provision(numbers=(FOREIGN_AGENT,))


def settings(sms, tenant=None) -> dict:
    response = sms.client.get("/v1/project", headers=(tenant or sms.tenant).headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def patch(sms, body, tenant=None):
    return sms.client.patch("/v1/project", json=body, headers=(tenant or sms.tenant).headers)


def patch_ok(sms, body, tenant=None) -> dict:
    response = patch(sms, body, tenant)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def replies(sms) -> list[tuple[str, str, str]]:
    """(from, to, body) of everything handed to the gateway."""
    return [(m["from"], m["to"], m["body"]) for m in sms.outbox]


def opted_out(sms, user: str = USER, sender: str = AGENT) -> bool:
    with sms.app.app_context():
        return sms.store.is_opted_out(user, sender)


def inbound(sms, body: str, *, user: str = USER, to: str = AGENT, **extra: str) -> None:
    params = {**sms.inbound_params(user, body, to=to), **extra}
    response = sms.post_signed("/v1/twilio/sms", params)
    assert response.status_code == 200, response.get_data(as_text=True)


def history(sms, user: str = USER, tenant=None, **query) -> list[dict]:
    events, cursor = [], None
    while True:
        params = {"user_number": user, **query, **({"cursor": cursor} if cursor else {})}
        response = sms.client.get(
            "/v1/opt-outs/history", query_string=params, headers=(tenant or sms.tenant).headers
        )
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        events.extend(page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            return events


def opt_outs(sms, tenant=None, **query) -> list[dict]:
    found, cursor = [], None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = sms.client.get(
            "/v1/opt-outs", query_string=params, headers=(tenant or sms.tenant).headers
        )
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        found.extend(page["opt_outs"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


# -- GET /v1/project ------------------------------------------------------------------------------
def test_settings_start_with_the_defaults(sms):
    assert settings(sms) == {
        "id": sms.tenant.project_id,
        "name": "test project",
        "keywords": [],
        "replies": DEFAULT_SETTINGS_REPLIES,
        "keyword_replies": "ours",
        "quiet_hours": None,
    }


def test_quiet_hours_are_stored_validated_and_turned_off(sms):
    hours = {"start": "21:00", "end": "08:00"}
    assert patch_ok(sms, {"quiet_hours": hours})["quiet_hours"] == hours
    assert settings(sms)["quiet_hours"] == hours

    for bad, field in [
        ({"start": "25:00", "end": "08:00"}, "quiet_hours.start"),
        ({"start": "21:00", "end": "8:00"}, "quiet_hours.end"),
        ({"start": "21:00"}, "quiet_hours.end"),
        ({"start": "21:00", "end": "08:00", "tz": "UTC"}, "quiet_hours.tz"),
        ({"start": "09:00", "end": "09:00"}, "quiet_hours"),
        ("21:00-08:00", "quiet_hours._schema"),
    ]:
        response = patch(sms, {"quiet_hours": bad})
        assert response.status_code == 400, bad
        body = response.get_json()
        assert body["detail"] and field in body["errors"], body
    assert settings(sms)["quiet_hours"] == hours  # nothing changed

    assert patch_ok(sms, {"quiet_hours": None})["quiet_hours"] is None


def test_a_bad_field_changes_nothing_of_the_others(sms):
    before = settings(sms)
    response = patch(
        sms,
        {
            "quiet_hours": {"start": "21:00", "end": "08:00"},
            "keyword_replies": "twilio",
            "keywords": [{"keyword": "stop.", "action": "help", "language": "en"}],
        },
    )
    assert response.status_code == 400
    assert "keywords.0.keyword" in response.get_json()["errors"]
    assert settings(sms) == before
    # Unknown fields and bad values are 400s too.
    for body in (
        {"name": "renamed"},
        {"keyword_replies": "carrier"},
        {"keywords": [{"keyword": "ARRET", "action": "unsubscribe"}]},
        {"keywords": [{"keyword": "ARRET", "action": "opt_out", "language": "French"}]},
        {"replies": {"en": {"opt_out": ""}}},
        {"replies": {"en": {"goodbye": "x"}}},
        {"keywords": "ARRET"},
    ):
        response = patch(sms, body)
        assert response.status_code == 400, body
        assert set(response.get_json()) == {"detail", "errors"}, response.get_json()
    assert settings(sms) == before


# -- the project's own keywords -------------------------------------------------------------------
def test_built_in_keywords_cannot_be_redefined_or_removed(sms):
    for word in ("STOP", "stop.", " Unsubscribe ", "info", "Yes!", "OPTOUT"):
        response = patch(sms, {"keywords": [{"keyword": word, "action": "help"}]})
        assert response.status_code == 400, word
        assert "built-in" in response.get_json()["errors"]["keywords.0.keyword"][0]
    twice = patch(
        sms,
        {
            "keywords": [
                {"keyword": "ARRET", "action": "opt_out"},
                {"keyword": "arret!", "action": "opt_in"},
            ]
        },
    )
    assert twice.status_code == 400 and "keywords.1.keyword" in twice.get_json()["errors"]

    # With the project's own keywords set, or cleared, the built-in ones still apply.
    patch_ok(sms, {"keywords": [{"keyword": "ARRET", "action": "opt_out"}]})
    patch_ok(sms, {"keywords": []})
    inbound(sms, "stop")
    assert opted_out(sms)
    assert replies(sms) == [(AGENT, USER, STOP_REPLY)]


def test_a_keyword_is_answered_in_its_language(sms, agent):
    # A keyword's language must have replies: set in the same request here.
    without = patch(
        sms, {"keywords": [{"keyword": "ARRÊT", "action": "opt_out", "language": "fr"}]}
    )
    assert without.status_code == 400
    assert "keywords.0.language" in without.get_json()["errors"]
    incomplete = patch(sms, {"replies": {"fr": {"opt_out": "Désinscrit."}}})
    assert incomplete.status_code == 400 and "replies.fr" in incomplete.get_json()["errors"]

    body = patch_ok(
        sms,
        {
            "keywords": [
                {"keyword": "ARRÊT", "action": "opt_out", "language": "fr"},
                {"keyword": "REPRENDRE", "action": "opt_in", "language": "fr"},
                {"keyword": "AIDE", "action": "help", "language": "fr"},
                {"keyword": "HALT", "action": "opt_out"},
            ],
            "replies": {"fr": FRENCH},
        },
    )
    assert body["keywords"][3] == {"keyword": "HALT", "action": "opt_out", "language": "en"}
    assert body["replies"] == {**DEFAULT_SETTINGS_REPLIES, "fr": FRENCH}

    inbound(sms, " aide? ")
    inbound(sms, "Arrêt!")
    assert opted_out(sms)
    inbound(sms, "reprendre")
    assert not opted_out(sms)
    inbound(sms, "halt", to=OTHER_AGENT)
    assert opted_out(sms, USER, OTHER_AGENT)
    inbound(sms, "STOP")  # a built-in word: English
    assert replies(sms) == [
        (AGENT, USER, FRENCH["help"]),
        (AGENT, USER, FRENCH["opt_out"]),
        (AGENT, USER, FRENCH["opt_in"]),
        (OTHER_AGENT, USER, STOP_REPLY),
        (AGENT, USER, STOP_REPLY),
    ]
    assert agent.calls == []  # keywords never reach the agent
    words = [(e["sender"], e["action"], e["keyword"], e["source"]) for e in history(sms)]
    assert words == [
        (AGENT, "opt_out", "Arrêt!", "keyword"),
        (AGENT, "opt_in", "reprendre", "keyword"),
        (OTHER_AGENT, "opt_out", "halt", "keyword"),
        (AGENT, "opt_out", "STOP", "keyword"),
    ]
    # A message that only contains a keyword is still the agent's.
    inbound(sms, "arrêt maintenant", user=OTHER_USER)
    assert agent.calls == ["arrêt maintenant"] and not opted_out(sms, OTHER_USER)

    # A language used by a keyword cannot be removed; English returns to the defaults.
    refused = patch(sms, {"replies": {"fr": None}})
    assert refused.status_code == 400 and "keywords.0.language" in refused.get_json()["errors"]
    patch_ok(sms, {"replies": {"en": {"opt_out": "Bye."}}})
    assert settings(sms)["replies"]["en"] == {
        "opt_out": "Bye.",
        "opt_in": START_REPLY,
        "help": HELP_REPLY,
    }
    assert (
        patch_ok(sms, {"replies": {"en": None}})["replies"]["en"]
        == (DEFAULT_SETTINGS_REPLIES["en"])
    )


def test_english_replies_can_be_changed(sms):
    patch_ok(sms, {"replies": {"en": {"opt_out": "Bye from the bistro.", "help": "Call 555."}}})
    inbound(sms, "HELP")
    inbound(sms, "STOP")
    inbound(sms, "START")
    assert replies(sms) == [
        (AGENT, USER, "Call 555."),
        (AGENT, USER, "Bye from the bistro."),
        (AGENT, USER, START_REPLY),
    ]


def test_changes_made_at_once_all_land(sms):
    """Eight PATCHes at once on real threads, each adding its own language and one of them
    setting quiet hours: each is applied to the settings as stored when it runs, so every
    language and the quiet hours are there at the end (read-modify-write lost all but a few)."""
    import threading

    languages = ["fr", "de", "es", "it", "pt", "nl", "sv", "pl"]
    barrier = threading.Barrier(len(languages))
    statuses: list[int] = []

    def change(language: str) -> None:
        client = sms.app.test_client()
        texts = {"opt_out": f"bye {language}", "opt_in": f"hi {language}", "help": f"? {language}"}
        body: dict = {"replies": {language: texts}}
        if language == "sv":
            body["quiet_hours"] = {"start": "21:00", "end": "08:00"}
        barrier.wait()
        response = client.patch("/v1/project", json=body, headers=sms.tenant.headers)
        statuses.append(response.status_code)
        sms.store.close()  # this thread's connection back to the pool

    threads = [threading.Thread(target=change, args=(language,)) for language in languages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert statuses == [200] * len(languages)
    found = settings(sms)
    assert set(found["replies"]) == {"en", *languages}
    assert found["replies"]["pl"]["help"] == "? pl"
    assert found["quiet_hours"] == {"start": "21:00", "end": "08:00"}


def test_with_twilio_answering_we_record_and_never_reply(sms, agent):
    assert patch_ok(sms, {"keyword_replies": "twilio"})["keyword_replies"] == "twilio"
    inbound(sms, "STOP")
    assert opted_out(sms)
    inbound(sms, "HELP")
    inbound(sms, "please text me again", OptOutType="START")
    assert not opted_out(sms)
    assert replies(sms) == []
    assert agent.calls == []
    assert [(e["action"], e["keyword"]) for e in history(sms)] == [
        ("opt_out", "STOP"),
        ("opt_in", "START"),
    ]
    # Back to ours: we answer again.
    patch_ok(sms, {"keyword_replies": "ours"})
    inbound(sms, "HELP")
    assert replies(sms) == [(AGENT, USER, HELP_REPLY)]


def test_twilios_opt_out_type_is_honoured_whatever_the_text(sms, agent):
    inbound(sms, "please never text me again", OptOutType="STOP")
    assert opted_out(sms)
    inbound(sms, "ok fine, go on", OptOutType="START")
    assert not opted_out(sms)
    inbound(sms, "what is this?", OptOutType="HELP")
    assert not opted_out(sms)
    # The classification wins over the text's own keyword; an unknown value is ignored.
    inbound(sms, "START", OptOutType="STOP")
    assert opted_out(sms)
    inbound(sms, "hello there", user=OTHER_USER, OptOutType="SOMETHING")
    assert replies(sms) == [
        (AGENT, USER, STOP_REPLY),
        (AGENT, USER, START_REPLY),
        (AGENT, USER, HELP_REPLY),
        (AGENT, USER, STOP_REPLY),
        (AGENT, OTHER_USER, "agent: hello there"),
    ]
    assert agent.calls == ["hello there"]
    assert [(e["action"], e["keyword"], e["source"]) for e in history(sms)] == [
        ("opt_out", "STOP", "keyword"),
        ("opt_in", "START", "keyword"),
        ("opt_out", "STOP", "keyword"),
    ]


def test_opt_out_type_answers_in_the_matching_keywords_language(sms):
    patch_ok(
        sms,
        {
            "keywords": [{"keyword": "ARRET", "action": "opt_out", "language": "fr"}],
            "replies": {"fr": FRENCH},
        },
    )
    inbound(sms, "arret", OptOutType="STOP")
    assert replies(sms) == [(AGENT, USER, FRENCH["opt_out"])]


def test_settings_are_per_project(sms, other):
    patch_ok(sms, {"keyword_replies": "twilio", "quiet_hours": {"start": "22:00", "end": "07:00"}})
    theirs = settings(sms, other)
    assert theirs["id"] == other.project_id
    assert (theirs["keyword_replies"], theirs["quiet_hours"]) == ("ours", None)
    response = sms.post_signed(
        "/v1/twilio/sms",
        sms.inbound_params(USER, "STOP", to=FOREIGN_AGENT),
        token=other.twilio_auth_token,
    )
    assert response.status_code == 200
    assert replies(sms) == [(FOREIGN_AGENT, USER, STOP_REPLY)]


# -- /v1/opt-outs ---------------------------------------------------------------------------------
def test_create_list_and_delete_an_opt_out_through_the_api(sms):
    response = sms.client.post(
        "/v1/opt-outs", json={"user_number": USER, "sender": AGENT}, headers=sms.tenant.headers
    )
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["user_number"] == USER and created["sender"] == AGENT
    assert (created["keyword"], created["source"]) == (None, "api")
    assert created["created_at"]
    assert opted_out(sms)

    again = sms.client.post(
        "/v1/opt-outs", json={"user_number": USER, "sender": AGENT}, headers=sms.tenant.headers
    )
    assert again.status_code == 200 and again.get_json() == created

    # Sends to the pair are suppressed now.
    sent = sms.send_ok(USER, "Promo", agent_number=AGENT)
    assert sms.conversation(sent["conversation_id"])["messages"][0]["status"] == "suppressed"
    assert sms.outbox == []

    assert opt_outs(sms) == [created]
    gone = sms.client.delete(
        "/v1/opt-outs",
        query_string={"user_number": USER, "sender": AGENT},
        headers=sms.tenant.headers,
    )
    assert gone.status_code == 204 and gone.get_data() == b""
    assert not opted_out(sms)
    assert opt_outs(sms) == []
    missing = sms.client.delete(
        "/v1/opt-outs",
        query_string={"user_number": USER, "sender": AGENT},
        headers=sms.tenant.headers,
    )
    assert missing.status_code == 404 and missing.get_json()["detail"]

    # Both changes are in the history with the API key that made them (its id, never the key).
    with sms.app.app_context():
        from flask_polysms.crypto import hash_api_key

        key_id = sms.store.get_api_key_by_hash(hash_api_key(sms.tenant.api_key)).id
    events = history(sms)
    assert [(e["action"], e["source"], e["api_key_id"]) for e in events] == [
        ("opt_out", "api", key_id),
        ("opt_in", "api", key_id),
    ]
    assert sms.tenant.api_key not in str(events)


def test_bad_opt_out_requests_are_400s(sms, other):
    for body, field in [
        ({"user_number": USER, "sender": FOREIGN_AGENT}, "sender"),  # another project's
        ({"user_number": USER, "sender": "+14155550199"}, "sender"),  # nobody's
        ({"user_number": "4155552674", "sender": AGENT}, "user_number"),
        ({"user_number": USER}, "sender"),
        ({"user_number": USER, "sender": AGENT, "keyword": "STOP"}, "keyword"),
    ]:
        response = sms.client.post("/v1/opt-outs", json=body, headers=sms.tenant.headers)
        assert response.status_code == 400, body
        assert field in response.get_json()["errors"], response.get_json()
    assert not opted_out(sms, USER, FOREIGN_AGENT) and not opted_out(sms)
    for query in ({"user_number": USER}, {"user_number": "x", "sender": AGENT}):
        response = sms.client.delete("/v1/opt-outs", query_string=query, headers=sms.tenant.headers)
        assert response.status_code == 400, query
    bad_cursor = sms.client.get(
        "/v1/opt-outs", query_string={"cursor": "abc"}, headers=sms.tenant.headers
    )
    assert bad_cursor.status_code == 400 and "cursor" in bad_cursor.get_json()["errors"]
    no_user = sms.client.get("/v1/opt-outs/history", headers=sms.tenant.headers)
    assert no_user.status_code == 400 and "user_number" in no_user.get_json()["errors"]


def test_opt_outs_are_tenant_isolated(sms, other):
    inbound(sms, "STOP")
    response = sms.post_signed(
        "/v1/twilio/sms",
        sms.inbound_params(OTHER_USER, "STOP", to=FOREIGN_AGENT),
        token=other.twilio_auth_token,
    )
    assert response.status_code == 200
    assert [(o["user_number"], o["sender"]) for o in opt_outs(sms)] == [(USER, AGENT)]
    assert [(o["user_number"], o["sender"]) for o in opt_outs(sms, other)] == [
        (OTHER_USER, FOREIGN_AGENT)
    ]
    assert opt_outs(sms, other, user_number=USER) == []
    assert opt_outs(sms, other, sender=AGENT) == []
    assert history(sms, USER, other) == []
    assert history(sms, OTHER_USER) == []

    # Another project's pair cannot be opted in from here: 404, as if absent.
    response = sms.client.delete(
        "/v1/opt-outs",
        query_string={"user_number": OTHER_USER, "sender": FOREIGN_AGENT},
        headers=sms.tenant.headers,
    )
    assert response.status_code == 404
    assert opted_out(sms, OTHER_USER, FOREIGN_AGENT)

    # A cursor handed to one project is refused to another.
    for user in ("+14155550101", "+14155550102", "+14155550103"):
        inbound(sms, "STOP", user=user)
    page = sms.client.get(
        "/v1/opt-outs", query_string={"limit": 1}, headers=sms.tenant.headers
    ).get_json()
    assert page["next_cursor"]
    stolen = sms.client.get(
        "/v1/opt-outs", query_string={"cursor": page["next_cursor"]}, headers=other.headers
    )
    assert stolen.status_code == 400


def test_lists_filter_and_page(sms):
    users = ["+14155550101", "+14155550102", "+14155550103"]
    for user in users:
        inbound(sms, "STOP", user=user)
    inbound(sms, "END", user=users[0], to=OTHER_AGENT)
    first = sms.client.get(
        "/v1/opt-outs", query_string={"limit": 2}, headers=sms.tenant.headers
    ).get_json()
    assert len(first["opt_outs"]) == 2 and first["next_cursor"]
    every = opt_outs(sms, limit=2)
    assert [(o["user_number"], o["sender"], o["keyword"]) for o in every] == [
        (users[0], AGENT, "STOP"),
        (users[1], AGENT, "STOP"),
        (users[2], AGENT, "STOP"),
        (users[0], OTHER_AGENT, "END"),
    ]
    assert {o["source"] for o in every} == {"keyword"}
    assert [o["sender"] for o in opt_outs(sms, user_number=users[0])] == [AGENT, OTHER_AGENT]
    assert [o["user_number"] for o in opt_outs(sms, sender=OTHER_AGENT)] == [users[0]]

    inbound(sms, "START", user=users[0])
    inbound(sms, "STOP", user=users[0])
    events = history(sms, users[0], limit=1)
    assert [(e["sender"], e["action"], e["keyword"]) for e in events] == [
        (AGENT, "opt_out", "STOP"),
        (OTHER_AGENT, "opt_out", "END"),
        (AGENT, "opt_in", "START"),
        (AGENT, "opt_out", "STOP"),
    ]
    assert [e["created_at"] for e in events] == sorted(e["created_at"] for e in events)


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("fresh_postgres_url", marks=pytest.mark.services),
        pytest.param("fresh_mysql_url", marks=pytest.mark.services),
    ],
)
def test_concurrent_opt_outs_of_one_pair_record_one_event(request, make_sms, server):
    """Eight API calls for one pair at once, on real threads: one 201, the others 200 with the
    same record, and one event in the history."""
    import threading

    url = request.getfixturevalue(server)
    store = create_store(url)
    store.create_schema()
    store.disconnect()
    sms = make_sms(numbers=(AGENT,), POLYSMS_STORAGE_URL=url)
    barrier = threading.Barrier(8)
    answers: list[tuple[int, dict]] = []

    def call() -> None:
        client = sms.app.test_client()
        barrier.wait()
        response = client.post(
            "/v1/opt-outs", json={"user_number": USER, "sender": AGENT}, headers=sms.tenant.headers
        )
        answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert sorted(status for status, _ in answers) == [200] * 7 + [201]
        assert len({str(body) for _, body in answers}) == 1
        assert [(e["action"], e["source"]) for e in history(sms)] == [("opt_out", "api")]
    finally:
        sms.store.disconnect()


def test_through_a_messaging_services_number_the_api_and_imports_use_the_service(sms, tmp_path):
    """As a STOP through a member does: one opt-out under the service's SID, covering every
    member; opting in through a member clears it."""
    from flask_polysms.services import provisioning
    from flask_polysms.services.state import get_state

    service = "MG" + "ab" * 16
    with sms.app.app_context():
        provisioning.add_sender(get_state(sms.app), sms.tenant.project_id, service, "live")
        sms.store.update_sender(AGENT, messaging_service_sid=service)
        sms.store.update_sender(OTHER_AGENT, messaging_service_sid=service)
    response = sms.client.post(
        "/v1/opt-outs", json={"user_number": USER, "sender": AGENT}, headers=sms.tenant.headers
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["sender"] == service
    assert opted_out(sms, USER, OTHER_AGENT) and opted_out(sms, USER, service)
    assert [o["sender"] for o in opt_outs(sms)] == [service]

    gone = sms.client.delete(
        "/v1/opt-outs",
        query_string={"user_number": USER, "sender": OTHER_AGENT},
        headers=sms.tenant.headers,
    )
    assert gone.status_code == 204
    assert not opted_out(sms, USER, AGENT) and opt_outs(sms) == []

    path = tmp_path / "in.csv"
    path.write_text(f"user_number,sender,keyword,created_at\n{OTHER_USER},{AGENT},STOP,\n")
    result = sms.app.test_cli_runner().invoke(args=["polysms", "opt-outs", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert [(o["user_number"], o["sender"], o["source"]) for o in opt_outs(sms)] == [
        (OTHER_USER, service, "import")
    ]


def test_api_and_import_opt_outs_send_the_opt_out_signals_once_each(sms, tmp_path):
    from flask_polysms import signals

    seen = []

    def receive(name):
        def receiver(app, **kwargs):
            seen.append((name, kwargs["user_number"], kwargs["sender_address"], kwargs["source"]))

        return receiver

    on_out, on_in = receive("opted_out"), receive("opted_in")
    signals.opted_out.connect(on_out, sender=sms.app)
    signals.opted_in.connect(on_in, sender=sms.app)
    try:
        pair = {"user_number": USER, "sender": AGENT}
        assert sms.client.post("/v1/opt-outs", json=pair, headers=sms.tenant.headers).status_code
        # Already opted out: nothing changes, nothing is sent.
        sms.client.post("/v1/opt-outs", json=pair, headers=sms.tenant.headers)
        gone = sms.client.delete("/v1/opt-outs", query_string=pair, headers=sms.tenant.headers)
        assert gone.status_code == 204
        csv_file = tmp_path / "optouts.csv"
        csv_file.write_text(f"user_number,sender,keyword,created_at\n{OTHER_USER},{AGENT},STOP,\n")
        result = sms.app.test_cli_runner().invoke(
            args=["polysms", "opt-outs", "import", str(csv_file)]
        )
        assert result.exit_code == 0, result.output
    finally:
        signals.opted_out.disconnect(on_out)
        signals.opted_in.disconnect(on_in)
    assert seen == [
        ("opted_out", USER, AGENT, "api"),
        ("opted_in", USER, AGENT, "api"),
        ("opted_out", OTHER_USER, AGENT, "import"),
    ]
