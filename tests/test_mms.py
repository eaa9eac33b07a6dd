"""Pictures (MMS), on every backend (memory, SQLite, PostgreSQL, MariaDB).

In: Twilio's ``NumMedia``, ``MediaUrl{i}`` and ``MediaContentType{i}`` are kept on the message as
``media`` (the conversation API, ``conv.history``), the agent gets a picture-only message as
``""`` with ``conv.attachments``, and pictures never count as a repeated text.
Out: ``media_urls`` on ``POST /v1/outbound-sms`` and ``conv.send_sms``, through the outbox and
through the real twilio client to the emulator, which records ``MediaUrl`` as Twilio does.
"""

from __future__ import annotations

import re

import pytest
import requests
import store_backends
from store_backends import BACKENDS

from flask_polysms.services.state import get_state

AGENT = "+14155552671"
USER = "+14155552674"
OTHER_USER = "+14155552675"
PHOTO = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"
MAP = "https://example.org/maps/clinic.png"
ACCOUNT_SID = "AC" + "4d" * 16
AUTH_TOKEN = "mms-test-auth-token-0123456789ab"


class Turns:
    """An agent that records what each turn saw and answers with a fixed text."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.action = None

    def __call__(self, conv, text):
        self.seen.append({"text": text, "attachments": conv.attachments, "history": conv.history})
        if self.action is not None:
            return self.action(conv, text)
        return "Got it"


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


@pytest.fixture
def turns() -> Turns:
    return Turns()


@pytest.fixture
def sms(make_sms, storage_url, turns):
    return make_sms(agent=turns, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url)


def mms(sms, user: str, body: str, media: list[tuple[str, str]], **extra: str):
    """A user's MMS posted to /v1/twilio/sms as Twilio posts one; returns the response."""
    params = sms.inbound_params(user, body)
    params["MessageSid"] = "MM" + params["MessageSid"][2:]
    params["NumMedia"] = str(len(media))
    for i, (url, content_type) in enumerate(media):
        params[f"MediaUrl{i}"] = url
        params[f"MediaContentType{i}"] = content_type
    params.update(extra)
    return sms.post_signed("/v1/twilio/sms", params)


def only_conversation(sms) -> dict:
    (conversation,) = sms.conversations()
    return sms.conversation(conversation["id"])


# -- in -------------------------------------------------------------------------------------------
def test_inbound_pictures_are_kept_on_the_message_and_given_to_the_agent(sms, turns):
    sent = mms(sms, USER, "Is this the entrance?", [(PHOTO, "image/jpeg"), (MAP, "image/png")])
    assert sent.status_code == 200, sent.get_data(as_text=True)
    sms.inbound_ok(USER, "And a text alone")

    expected = [
        {"url": PHOTO, "content_type": "image/jpeg"},
        {"url": MAP, "content_type": "image/png"},
    ]
    messages = only_conversation(sms)["messages"]
    inbound = [m for m in messages if m["direction"] == "inbound"]
    assert [m["media"] for m in inbound] == [expected, []]
    assert inbound[0]["body"] == "Is this the entrance?"
    # Every message carries the field; the agent's replies have no pictures.
    assert all(m["media"] == [] for m in messages if m["direction"] == "outbound")

    first, second = turns.seen
    assert first["text"] == "Is this the entrance?"
    assert first["attachments"] == expected
    assert first["history"][-1]["media"] == expected
    # The next turn answers a text alone: its attachments are its own, not the last picture's.
    assert second["attachments"] == []
    assert [m["media"] for m in second["history"] if m["direction"] == "inbound"] == [expected, []]


def test_a_picture_alone_reaches_the_agent_as_empty_text(sms, turns):
    assert mms(sms, USER, "", [(PHOTO, "image/gif")]).status_code == 200
    (turn,) = turns.seen
    assert turn["text"] == ""
    assert turn["attachments"] == [{"url": PHOTO, "content_type": "image/gif"}]
    (user_message,) = [m for m in only_conversation(sms)["messages"] if m["kind"] == "user"]
    assert (user_message["body"], user_message["status"]) == ("", "handled")
    assert user_message["media"] == [{"url": PHOTO, "content_type": "image/gif"}]


def test_several_pictures_in_a_row_are_never_a_repeated_text(sms, turns):
    """Today's limit drops the sixth identical text within 5 min and blocks the sender: a
    picture-only message (and an empty one) must never count towards it."""
    for _ in range(7):
        assert mms(sms, USER, "", [(PHOTO, "image/jpeg")]).status_code == 200
    assert mms(sms, USER, "  ", [(MAP, "image/png")]).status_code == 200
    messages = only_conversation(sms)["messages"]
    users = [m for m in messages if m["direction"] == "inbound"]
    assert [m["drop_reason"] for m in users] == [None] * 8
    assert len(turns.seen) == 8
    assert not sms.store.inbound_context(sms.tenant.project_id, USER, AGENT)[1]


def test_empty_texts_never_count_as_a_repeated_text(sms, turns):
    for _ in range(7):
        sms.inbound_ok(OTHER_USER, "")
    users = [m for m in only_conversation(sms)["messages"] if m["direction"] == "inbound"]
    assert [m["drop_reason"] for m in users] == [None] * 7


def test_a_repeated_text_with_a_picture_still_counts(sms, turns):
    """Only an empty text is exempt: the same words six times are blocked, pictures or not."""
    for _ in range(6):
        assert mms(sms, USER, "Buy now", [(PHOTO, "image/jpeg")]).status_code == 200
    users = [m for m in only_conversation(sms)["messages"] if m["direction"] == "inbound"]
    assert [m["drop_reason"] for m in users] == [None] * 5 + ["duplicate_text"]
    assert users[-1]["media"] == [{"url": PHOTO, "content_type": "image/jpeg"}]


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"NumMedia": "two"}, "NumMedia"),
        ({"NumMedia": "11"}, "NumMedia"),
        ({"NumMedia": "2"}, "MediaUrl1"),  # only MediaUrl0 is sent
        ({"MediaUrl0": "javascript:alert(1)"}, "MediaUrl0"),
        ({"MediaUrl0": "https://"}, "MediaUrl0"),
        ({"MediaContentType0": "x" * 256}, "MediaContentType0"),
    ],
)
def test_bad_media_parameters_are_a_400_and_record_nothing(sms, turns, extra, field):
    response = mms(sms, USER, "hi", [(PHOTO, "image/jpeg")], **extra)
    assert response.status_code == 400
    assert field in response.get_json()["errors"]
    assert sms.conversations() == [] and turns.seen == []


# -- out ------------------------------------------------------------------------------------------
def test_outbound_api_sends_pictures_as_media_url(sms):
    with_pictures = sms.send_ok(USER, "Here is the map " * 20, media_urls=[MAP, PHOTO])
    sms.send_ok(OTHER_USER, "No pictures")

    first, second = sms.outbox
    assert first["media_urls"] == [MAP, PHOTO] and first["sid"].startswith("MM")
    assert second["media_urls"] == [] and second["sid"].startswith("SM")
    greeting = sms.conversation(with_pictures["conversation_id"])["messages"][0]
    assert greeting["media"] == [
        {"url": MAP, "content_type": None},
        {"url": PHOTO, "content_type": None},
    ]
    # An MMS is one message, whatever the length of its text.
    assert (greeting["segments"], greeting["status"]) == (1, "sent")
    (plain,) = sms.conversations(user_number=OTHER_USER)
    assert sms.conversation(plain["id"])["messages"][0]["media"] == []


def test_null_media_urls_is_no_pictures(sms):
    sms.send_ok(USER, "hi", media_urls=None)
    assert sms.outbox[0]["media_urls"] == []


@pytest.mark.parametrize(
    "media_urls, field",
    [
        ([], "media_urls"),
        ([MAP] * 11, "media_urls"),
        (["http://example.org/map.png"], "media_urls.0"),
        ([MAP, "not a url"], "media_urls.1"),
        ([MAP, "https://"], "media_urls.1"),
        (["https://example.org/" + "a" * 2048], "media_urls.0"),
        ([3], "media_urls.0"),
        (MAP, "media_urls"),
    ],
)
def test_bad_media_urls_are_a_400_and_change_nothing(sms, media_urls, field):
    response = sms.send(USER, "hi", media_urls=media_urls)
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert field in body["errors"], body
    assert sms.conversations() == [] and sms.outbox == []


def test_conv_send_sms_sends_pictures(sms, turns):
    def send_a_picture(conv, text):
        sent = conv.send_sms(conv.caller_number, conv.agent_number, "The map", media_urls=[MAP])
        assert sent["media"] == [{"url": MAP, "content_type": None}]
        for bad in ([], ["http://example.org/x.png"], [MAP] * 11, MAP):
            with pytest.raises(ValueError, match="media_urls"):
                conv.send_sms(conv.caller_number, conv.agent_number, "x", media_urls=bad)
        return "And a text"

    turns.action = send_a_picture
    sms.inbound_ok(USER, "Where are you?")
    picture, text = sms.outbox
    assert (picture["body"], picture["media_urls"]) == ("The map", [MAP])
    assert (text["body"], text["media_urls"]) == ("And a text", [])
    outbound = [m for m in only_conversation(sms)["messages"] if m["direction"] == "outbound"]
    assert [m["media"] for m in outbound] == [[{"url": MAP, "content_type": None}], []]


def test_the_openapi_document_shows_the_new_fields(sms):
    document = sms.client.get("/v1/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    outbound = schemas["OutboundRequest"]["properties"]["media_urls"]
    assert (outbound["type"], outbound["minItems"], outbound["maxItems"]) == ("array", 1, 10)
    media = schemas["Message"]["properties"]["media"]
    assert media["type"] == "array"
    assert set(schemas["Media"]["properties"]) == {"url", "content_type"}
    webhook = document["paths"]["/v1/twilio/sms"]["post"]["requestBody"]["content"]
    form = webhook["application/x-www-form-urlencoded"]["schema"]["properties"]
    assert {"NumMedia", "MediaUrl0", "MediaContentType0"} <= set(form)


# -- through the real twilio client to the emulator -----------------------------------------------
def test_the_twilio_client_hands_pictures_to_the_emulator_as_media_url(make_emulated_sms):
    sms, emulator = make_emulated_sms()
    urls = [MAP, PHOTO, "https://example.org/3.jpg"]
    sms.send_ok(USER, "x" * 400, media_urls=urls)  # 3 segments as an SMS
    sms.send_ok(OTHER_USER, "x" * 400)

    picture, text = emulator.messages
    assert picture["media_urls"] == urls and picture["sid"].startswith("MM")
    assert (picture["num_media"], picture["num_segments"]) == (3, 1)
    assert (text["media_urls"], text["num_media"], text["num_segments"]) == ([], 0, 3)
    # Twilio's JSON resource says the same, as strings.
    resource = requests.get(
        f"{emulator.base_url}/2010-04-01/Accounts/{picture['account_sid']}/Messages/"
        f"{picture['sid']}.json",
        auth=(picture["account_sid"], sms.tenant.twilio_auth_token),
        timeout=5,
    ).json()
    assert (resource["num_media"], resource["num_segments"]) == ("3", "1")
    greeting = only_conversation_of(sms, USER)["messages"][0]
    assert (greeting["twilio_sid"], greeting["status"]) == (picture["sid"], "sent")


def only_conversation_of(sms, user: str) -> dict:
    (conversation,) = sms.conversations(user_number=user)
    return sms.conversation(conversation["id"])


@pytest.mark.parametrize(
    "urls, code",
    [
        ([MAP] * 11, 21623),
        (["ftp://example.org/x.png"], 21620),
    ],
)
def test_the_emulator_refuses_media_as_twilio_does(make_twilio_emulator, urls, code):
    emulator = make_twilio_emulator()
    emulator.add_account(ACCOUNT_SID, AUTH_TOKEN)
    answer = requests.post(
        f"{emulator.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": USER, "From": AGENT, "Body": "", "MediaUrl": urls},
        auth=(ACCOUNT_SID, AUTH_TOKEN),
        timeout=5,
    )
    assert (answer.status_code, answer.json()["code"]) == (400, code)
    assert emulator.messages == []


def test_the_emulator_sends_a_picture_without_text(make_twilio_emulator):
    emulator = make_twilio_emulator()
    emulator.add_account(ACCOUNT_SID, AUTH_TOKEN)
    answer = requests.post(
        f"{emulator.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": USER, "From": AGENT, "MediaUrl": [MAP, PHOTO]},
        auth=(ACCOUNT_SID, AUTH_TOKEN),
        timeout=5,
    )
    assert answer.status_code == 201, answer.json()
    assert (answer.json()["num_media"], answer.json()["num_segments"]) == ("2", "1")
    assert emulator.messages[0]["media_urls"] == [MAP, PHOTO]


# -- the dashboard ---------------------------------------------------------------------------------
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def _signed_in_client(sms):
    client = sms.app.test_client()
    page = client.get("/dashboard/sign-in").get_data(as_text=True)
    token = CSRF_RE.search(page)[1]
    client.post(
        "/dashboard/sign-in",
        data={
            "api_key": sms.tenant.api_key,
            "connector_id": sms.tenant.connector_id,
            "csrf_token": token,
        },
    )
    return client


def test_the_conversation_page_links_each_picture_with_its_content_type(
    make_sms, storage_url, turns
):
    sms = make_sms(
        agent=turns, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url, POLYSMS_DASHBOARD=True
    )
    mms(sms, USER, "", [(PHOTO, "image/jpeg"), (MAP + "?a=1&b=2", "image/png")])
    conversation = only_conversation(sms)
    client = _signed_in_client(sms)
    page = client.get(f"/dashboard/conversations/{conversation['id']}").get_data(as_text=True)
    pictures = re.findall(
        r'<div class="media" data-media><a href="([^"]+)"[^>]*>[^<]*</a> '
        r"<span class=\"hint\" data-content-type>([^<]*)</span>",
        page,
    )
    assert pictures == [(PHOTO, "image/jpeg"), (MAP + "?a=1&amp;b=2", "image/png")]


def test_the_simulator_sends_a_picture_as_a_signed_mms(make_emulated_sms, live_server, turns):
    base_url, bind = live_server
    sms, emulator = make_emulated_sms(
        agent=turns,
        emulator={"callbacks": "auto"},
        POLYSMS_DASHBOARD=True,
        POLYSMS_PUBLIC_URL=base_url,
    )
    bind(sms.app)
    get_state(sms.app).emulator = emulator
    client = _signed_in_client(sms)
    token = CSRF_RE.search(client.get("/dashboard/simulator").get_data(as_text=True))[1]
    reply = {
        "number": USER,
        "to": AGENT,
        "body": "",
        "media_url": MAP,
        "media_content_type": "image/png",
        "csrf_token": token,
    }
    assert client.post("/dashboard/simulator/reply", data=reply).status_code == 302

    (turn,) = turns.seen
    assert (turn["text"], turn["attachments"]) == ("", [{"url": MAP, "content_type": "image/png"}])
    user_message = only_conversation(sms)["messages"][0]
    assert user_message["media"] == [{"url": MAP, "content_type": "image/png"}]
    page = client.get("/dashboard/simulator", query_string={"number": USER}).get_data(as_text=True)
    assert f'<a href="{MAP}"' in page and "with a picture" in page

    # A URL that is not http(s) is refused and nothing is posted.
    token = CSRF_RE.search(page)[1]
    bad = {**reply, "media_url": "javascript:alert(1)", "csrf_token": token}
    client.post("/dashboard/simulator/reply", data=bad)
    page = client.get("/dashboard/simulator", query_string={"number": USER}).get_data(as_text=True)
    assert "the picture URL must be an" in page
    assert len(turns.seen) == 1


def test_a_merged_turn_carries_the_pictures_of_every_message_it_joins(make_sms, storage_url, turns):
    from freezegun import freeze_time

    sms = make_sms(
        agent=turns, numbers=(AGENT,), POLYSMS_STORAGE_URL=storage_url, POLYSMS_MERGE_WINDOW=5
    )
    with freeze_time("2026-03-02 10:00:00") as clock:
        assert mms(sms, USER, "my dog", [(PHOTO, "image/jpeg")]).status_code == 200
        clock.tick(1)
        assert mms(sms, USER, "", [(MAP, "image/png")]).status_code == 200
        clock.tick(6)  # both windows have closed
        sms.run_due_timers()
    (turn,) = turns.seen
    assert turn["text"] == "my dog\n"
    assert turn["attachments"] == [
        {"url": PHOTO, "content_type": "image/jpeg"},
        {"url": MAP, "content_type": "image/png"},
    ]
