"""Consent settings on every backend: the project's settings (`/v1/project`), its own keywords
and replies per language, and Twilio's `OptOutType`. The `/v1/opt-outs` routes are in
test_opt_out_api.py, CSV import and export in test_opt_out_files.py."""

from __future__ import annotations

from consent_support import (
    AGENT,
    FOREIGN_AGENT,
    OTHER_AGENT,
    OTHER_USER,
    USER,
    agent_fixture,  # noqa: F401
    history,
    inbound,
    opted_out,
    other_fixture,  # noqa: F401
    sms_fixture,  # noqa: F401
    storage_url_fixture,  # noqa: F401
)

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
