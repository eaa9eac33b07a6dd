"""The dashboard's operator buttons on a conversation page, through Flask's test client, on every
backend (memory, SQLite, PostgreSQL, MariaDB).

- "Take over" hands the conversation to a person (the agent is paused), "Hand back" gives it
  back, "End" closes it (``end_reason`` ``api``, no closing text), the reply box sends a
  ``human`` message through the one send path (suppressed when the user opted out, counted by the
  outbound limit) — the services of ``POST /v1/conversations/<id>/handoff|resume|end|messages``.
- Each is a CSRF-protected form (400 without the session's token, nothing changed), sees only the
  signed-in connector's conversations (404 otherwise, nothing changed) and, on a closed
  conversation, answers 409 with the page saying so, nothing changed.
- The page shows who answers (the agent, or a person since when and why) and only the buttons
  that apply; the live fragment the page polls has an ETag (304 while nothing changed).

The whole handoff in a real browser is in test_dashboard_handoff_browser.py.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import store_backends
from handoff_agent import HandoffAgent
from store_backends import BACKENDS

from flask_polysms.services import provisioning
from flask_polysms.services.state import get_state

AGENT = "+14155552671"
SANDBOX_NUMBER = "+14155552678"
OTHER_AGENT = "+14155552679"
USER = "+14155552674"
ROOT = "/dashboard"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
ACTIONS = ("take-over", "hand-back", "end", "reply")
HANDOFF_TRIGGER = "a person please"


REPLY = "Agent: {text}"  # the agent's answer when no person is asked for


class Operator:
    """A person signed in to the dashboard with the test client (reads CSRF tokens from pages)."""

    def __init__(self, sms, tenant=None) -> None:
        self.client = sms.app.test_client()
        tenant = tenant or sms.tenant
        signed = self.post(
            "/sign-in", {"api_key": tenant.api_key, "connector_id": tenant.connector_id}
        )
        assert signed.status_code == 302, signed.get_data(as_text=True)

    def token(self) -> str:
        page = self.client.get(ROOT + "/sign-in")
        if page.status_code == 302:  # signed in: any page with a form has the token
            page = self.client.get(ROOT + "/conversations")
        return CSRF_RE.search(page.get_data(as_text=True)).group(1)

    def get(self, path: str, **kwargs):
        return self.client.get(ROOT + path, **kwargs)

    def page(self, conversation_id: str) -> str:
        response = self.get(f"/conversations/{conversation_id}")
        assert response.status_code == 200
        return response.get_data(as_text=True)

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True):
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf_token", self.token())
        return self.client.post(ROOT + path, data=data)

    def act(self, conversation_id: str, action: str, data: dict | None = None, **kwargs):
        return self.post(f"/conversations/{conversation_id}/{action}", data, **kwargs)


def text(response) -> str:
    return response.get_data(as_text=True)


def shown(page: str, element_id: str) -> bool:
    """Whether the element with this id is shown: neither it nor the operator panel around the
    buttons carries ``hidden``."""
    tag = re.search(rf'<\w+[^>]*\bid="{element_id}"[^>]*>', page, re.S).group(0)
    panel = re.search(r'<section[^>]*\bid="operator-panel"[^>]*>', page, re.S).group(0)
    inside = element_id != "operator-panel"
    return " hidden" not in tag and not (inside and " hidden" in panel)


def mode(page: str) -> str:
    return re.search(r'id="conversation-live" data-mode="(\w+)"', page).group(1)


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path) -> str:
    return store_backends.storage_url(request, request.param, tmp_path)


@pytest.fixture
def agent() -> HandoffAgent:
    return HandoffAgent(HANDOFF_TRIGGER, REPLY)


@pytest.fixture
def sms(make_sms, storage_url, agent):
    harness = make_sms(
        agent=agent, numbers=(AGENT,), POLYSMS_DASHBOARD=True, POLYSMS_STORAGE_URL=storage_url
    )
    yield harness
    get_state(harness.app).store.disconnect()


@pytest.fixture
def operator(sms) -> Operator:
    return Operator(sms)


@pytest.fixture
def conversation_id(sms) -> str:
    """A conversation the user opened (the agent answered it)."""
    sms.inbound_ok(USER, "Hello")
    (conversation,) = sms.conversations()
    return conversation["id"]


def snapshot(sms, conversation_id: str) -> tuple[dict, int]:
    """Everything an action could change: the conversation as the API shows it, and the sends."""
    return sms.conversation(conversation_id), len(sms.outbox)


# -- each button ----------------------------------------------------------------------------------
def test_the_agents_conversation_offers_take_over_end_and_reply(operator, conversation_id):
    page = operator.page(conversation_id)
    assert mode(page) == "agent"
    assert "The agent answers the user." in page
    assert shown(page, "take-over-form") and shown(page, "end-form") and shown(page, "reply-form")
    assert not shown(page, "hand-back-form")
    assert "Agent: Hello" in page


def test_take_over_pauses_the_agent(sms, operator, conversation_id, agent):
    response = operator.act(conversation_id, "take-over", {"reason": "  billing question "})
    assert response.status_code == 302
    assert response.headers["Location"] == f"{ROOT}/conversations/{conversation_id}"
    handoff = sms.conversation(conversation_id)["handoff"]
    assert handoff["reason"] == "billing question"
    page = operator.page(conversation_id)
    assert "Taken over: the agent is paused" in page
    assert mode(page) == "person"
    assert re.search(r'id="handoff-reason">billing question<', page)
    assert "Handed off to a person" in page and 'id="handoff-since"' in page
    assert shown(page, "hand-back-form") and shown(page, "end-form") and shown(page, "reply-form")
    assert not shown(page, "take-over-form")
    # The user's next message is recorded and shown, and the agent is not given it.
    sms.inbound_ok(USER, "Is anyone there?")
    assert agent.texts == ["Hello"]
    assert "Is anyone there?" in operator.page(conversation_id)
    # A second take-over changes nothing: the first reason and time stay.
    again = operator.act(conversation_id, "take-over", {"reason": "another"})
    assert again.status_code == 302
    assert sms.conversation(conversation_id)["handoff"] == handoff
    assert "had this conversation already" in operator.page(conversation_id)


def test_take_over_without_a_reason(sms, operator, conversation_id):
    assert operator.act(conversation_id, "take-over").status_code == 302
    assert sms.conversation(conversation_id)["handoff"]["reason"] is None
    page = operator.page(conversation_id)
    assert mode(page) == "person" and 'id="handoff-reason"' not in page


def test_the_agents_handoff_shows_on_the_page(sms, operator, conversation_id, agent):
    sms.inbound_ok(USER, HANDOFF_TRIGGER)
    page = operator.page(conversation_id)
    assert mode(page) == "person"
    assert re.search(r'id="handoff-reason">the user asked for a person<', page)
    assert "Connecting you to a person." in page  # the reply of the turn that handed off


def test_reply_sends_a_human_message(sms, operator, conversation_id):
    before = len(sms.outbox)
    response = operator.act(
        conversation_id, "reply", {"message": "Hi, this is Sam.\r\nHow can I help?"}
    )
    assert response.status_code == 302
    last = sms.conversation(conversation_id)["messages"][-1]
    assert (last["kind"], last["direction"], last["status"]) == ("human", "outbound", "sent")
    assert last["body"] == "Hi, this is Sam.\nHow can I help?"  # the textarea's line break
    (sent,) = sms.outbox[before:]
    assert (sent["to"], sent["from"], sent["body"]) == (USER, AGENT, last["body"])
    page = operator.page(conversation_id)
    assert f"Reply to {USER}: sent." in page
    assert re.search(r'data-kind="human">', page)
    assert mode(page) == "agent"  # a reply needs no handoff and makes none


def test_reply_to_an_opted_out_user_is_suppressed(sms, operator, conversation_id):
    sms.inbound_ok(USER, "STOP")
    before = len(sms.outbox)
    response = operator.act(conversation_id, "reply", {"message": "Are you sure?"})
    assert response.status_code == 302
    last = sms.conversation(conversation_id)["messages"][-1]
    assert (last["kind"], last["status"], last["drop_reason"]) == (
        "human",
        "suppressed",
        "opted_out",
    )
    assert len(sms.outbox) == before
    assert f"Not sent: {USER} opted out of {AGENT}" in operator.page(conversation_id)


def test_hand_back_lets_the_agent_answer_again(sms, operator, conversation_id, agent):
    operator.act(conversation_id, "take-over")
    sms.inbound_ok(USER, "Waiting for a person")
    response = operator.act(conversation_id, "hand-back")
    assert response.status_code == 302
    assert sms.conversation(conversation_id)["handoff"] is None
    page = operator.page(conversation_id)
    assert "Handed back: the agent answers" in page
    assert mode(page) == "agent" and shown(page, "take-over-form")
    assert not shown(page, "hand-back-form")
    sms.inbound_ok(USER, "Back to the bot")
    assert agent.texts == ["Hello", "Back to the bot"]
    assert "Agent: Back to the bot" in operator.page(conversation_id)
    # Handing back a conversation the agent has changes nothing.
    assert operator.act(conversation_id, "hand-back").status_code == 302
    assert "had this conversation already" in operator.page(conversation_id)


def test_end_closes_without_a_closing_text(sms, operator, conversation_id):
    operator.act(conversation_id, "take-over")
    before = len(sms.outbox)
    response = operator.act(conversation_id, "end")
    assert response.status_code == 302
    conversation = sms.conversation(conversation_id)
    assert (conversation["state"], conversation["end_reason"]) == ("closed", "api")
    assert len(sms.outbox) == before
    page = operator.page(conversation_id)
    assert "Ended: the conversation is closed" in page
    assert mode(page) == "closed" and "Closed: nobody answers" in page
    assert not shown(page, "operator-panel")


# -- refused, nothing changed ---------------------------------------------------------------------
@pytest.mark.parametrize("action", ACTIONS)
def test_a_closed_conversation_refuses_every_button(sms, operator, conversation_id, action):
    assert operator.act(conversation_id, "end").status_code == 302
    before = snapshot(sms, conversation_id)
    response = operator.act(conversation_id, action, {"message": "Too late?", "reason": "late"})
    assert response.status_code == 409
    page = text(response)
    assert re.search(
        r'id="operator-error">Nothing was changed: the conversation is closed\.<', page
    )
    assert mode(page) == "closed"
    assert snapshot(sms, conversation_id) == before


def test_a_refused_reply_keeps_its_text(sms, operator, conversation_id):
    operator.act(conversation_id, "end")
    page = text(operator.act(conversation_id, "reply", {"message": "Words & <b>all</b>"}))
    assert ">Words &amp; &lt;b&gt;all&lt;/b&gt;</textarea>" in page


@pytest.mark.parametrize(
    "form, field_problem",
    [
        ({"message": ""}, "the reply must be 1 to 1600 characters"),
        ({}, "the reply must be 1 to 1600 characters"),
        ({"message": "x" * 1601}, "the reply must be 1 to 1600 characters"),
        ({"message": "nul\x00here"}, "the reply must not contain NUL (0x00) characters"),
    ],
)
def test_a_bad_reply_is_400_and_sends_nothing(sms, operator, conversation_id, form, field_problem):
    before = snapshot(sms, conversation_id)
    response = operator.act(conversation_id, "reply", form)
    assert response.status_code == 400
    assert f'id="operator-error">Nothing was changed: {field_problem}.<' in text(response)
    assert snapshot(sms, conversation_id) == before
    if form.get("message", "").startswith("x"):
        assert "x" * 1601 + "</textarea>" in text(response)


def test_a_reason_over_500_characters_is_400(sms, operator, conversation_id):
    before = snapshot(sms, conversation_id)
    response = operator.act(conversation_id, "take-over", {"reason": "r" * 501})
    assert response.status_code == 400
    assert "the reason must be 0 to 500 characters" in text(response)
    assert snapshot(sms, conversation_id) == before


@pytest.mark.parametrize("action", ACTIONS)
def test_every_button_needs_the_csrf_token(sms, operator, conversation_id, action):
    if action == "hand-back":
        operator.act(conversation_id, "take-over")
    before = snapshot(sms, conversation_id)
    form = {"message": "forged", "reason": "forged"}
    missing = operator.act(conversation_id, action, form, csrf=False)
    assert missing.status_code == 400
    assert "CSRF token is missing" in text(missing)
    forged = operator.act(conversation_id, action, {**form, "csrf_token": "forged"})
    assert forged.status_code == 400
    stolen = Operator(sms).token()  # valid, but for another browser's session
    assert operator.act(conversation_id, action, {**form, "csrf_token": stolen}).status_code == 400
    assert snapshot(sms, conversation_id) == before


@pytest.mark.parametrize("action", ACTIONS)
def test_another_tenants_conversation_is_404(sms, conversation_id, action):
    other = sms.provision(numbers=(OTHER_AGENT,))  # another account's project
    with sms.app.app_context():
        state = get_state(sms.app)
        provisioning.add_sender(state, sms.tenant.project_id, SANDBOX_NUMBER, "sandbox")
        sandbox = provisioning.create_connector(state, sms.tenant.project_id, "sandbox")
    if action == "hand-back":
        Operator(sms).act(conversation_id, "take-over")
    before = snapshot(sms, conversation_id)
    same_project_other_environment = Operator(
        sms, tenant=dataclasses.replace(sms.tenant, connector_id=sandbox.id)
    )
    for stranger in (Operator(sms, tenant=other), same_project_other_environment):
        for path in (f"/conversations/{conversation_id}", f"/conversations/{conversation_id}/live"):
            response = stranger.get(path)
            assert response.status_code == 404
            assert "Agent: Hello" not in text(response)
        response = stranger.act(conversation_id, action, {"message": "hi", "reason": "mine"})
        assert response.status_code == 404, text(response)
    assert Operator(sms).act("conv_does_not_exist", action, {"message": "hi"}).status_code == 404
    assert snapshot(sms, conversation_id) == before


def test_without_a_sign_in_the_buttons_change_nothing(sms, conversation_id):
    anonymous = sms.app.test_client()
    token = CSRF_RE.search(text(anonymous.get(ROOT + "/sign-in"))).group(1)
    before = snapshot(sms, conversation_id)
    for action in ACTIONS:
        response = anonymous.post(
            f"{ROOT}/conversations/{conversation_id}/{action}",
            data={"csrf_token": token, "message": "hi"},
        )
        assert response.status_code == 302
        assert response.headers["Location"].startswith(ROOT + "/sign-in")
    assert snapshot(sms, conversation_id) == before


# -- the live fragment ----------------------------------------------------------------------------
def test_the_live_fragment_answers_304_until_something_changes(sms, operator, conversation_id):
    path = f"/conversations/{conversation_id}/live"
    first = operator.get(path)
    assert first.status_code == 200
    fragment = text(first)
    assert "<html" not in fragment and "csrf_token" not in fragment
    assert 'id="conversation-live" data-mode="agent"' in fragment
    assert "Agent: Hello" in fragment
    etag = first.headers["ETag"]
    assert operator.get(path, headers={"If-None-Match": etag}).status_code == 304
    sms.inbound_ok(USER, "One more thing")
    changed = operator.get(path, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert "One more thing" in text(changed) and changed.headers["ETag"] != etag
    operator.act(conversation_id, "take-over")
    handed_off = operator.get(path, headers={"If-None-Match": changed.headers["ETag"]})
    assert 'data-mode="person"' in text(handed_off)


def test_the_conversation_list_marks_handed_off_conversations(sms, operator, conversation_id):
    assert "data-handoff" not in text(operator.get("/conversations"))
    operator.act(conversation_id, "take-over")
    listing = text(operator.get("/conversations"))
    assert re.search(
        rf'data-conversation-id="{conversation_id}".*?data-handoff>handed off<', listing, re.S
    )


def test_a_reply_counts_against_the_outbound_limit(make_sms):
    sms = make_sms(numbers=(AGENT,), POLYSMS_DASHBOARD=True, POLYSMS_RATE_LIMIT="1 per minute")
    sms.inbound_ok(USER, "Hello")
    conversation_id = sms.conversations()[0]["id"]
    operator = Operator(sms)
    assert operator.act(conversation_id, "reply", {"message": "First"}).status_code == 302
    before = snapshot(sms, conversation_id)
    response = operator.act(conversation_id, "reply", {"message": "Second"})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert re.search(r'id="operator-error">Not sent: .*try again in \d+ s\)\.<', text(response))
    assert ">Second</textarea>" in text(response)
    assert snapshot(sms, conversation_id) == before
