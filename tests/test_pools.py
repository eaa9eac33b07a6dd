"""Messaging Service pools and carrier opt-outs, on every backend (memory, SQLite, PostgreSQL,
MariaDB): a number's membership (PATCH /v1/senders/<number>, the CLI, inbound webhooks), a STOP
through any member covering the whole service, Twilio's 21610 as a suppression, and a
``drop_reason`` on every message that was not sent or not routed."""

from __future__ import annotations

import re

import pytest
import store_backends
from store_backends import BACKENDS

from flask_polysms.clock import utcnow
from flask_polysms.services import provisioning
from flask_polysms.services.conversation import Conversation
from flask_polysms.services.state import get_state

POOL_A, POOL_B, OUTSIDE = "+14155552671", "+14155552672", "+14155552673"
MG = "MG" + "ab" * 16
OTHER_MG = "MG" + "cd" * 16
USER, OTHER_USER = "+14155552674", "+14155552675"


def _pool(harness, *, members=(POOL_A, POOL_B)):
    """Provision ``MG`` for the harness's project and put ``members`` in it."""
    with harness.app.app_context():
        state = get_state(harness.app)
        provisioning.add_sender(state, harness.tenant.project_id, MG, "live")
        for number in members:
            state.store.update_sender(number, messaging_service_sid=MG)
    return harness


@pytest.fixture
def backend_config(request, tmp_path):
    """Config for a fresh store of the test's backend (see ``backend``)."""
    return {
        "POLYSMS_STORAGE_URL": store_backends.storage_url(request, request.param, tmp_path),
        "POLYSMS_RATE_LIMIT": "100000 per second",
        "POLYSMS_READ_RATE_LIMIT": "100000 per second",
    }


def _disconnect(harness) -> None:
    get_state(harness.app).store.disconnect()


@pytest.fixture
def make_pool_sms(make_sms, backend_config):
    built = []

    def make(**kwargs):
        harness = make_sms(numbers=(POOL_A, POOL_B, OUTSIDE), **{**backend_config, **kwargs})
        built.append(harness)
        return harness

    yield make
    for harness in built:
        _disconnect(harness)


@pytest.fixture
def sms(make_pool_sms):
    """Three numbers; the first two in the Messaging Service ``MG``, the third outside it."""
    return _pool(make_pool_sms())


@pytest.fixture
def emulated(make_emulated_sms, backend_config):
    harness, emulator = make_emulated_sms(numbers=(POOL_A, POOL_B, OUTSIDE), **backend_config)
    yield _pool(harness), emulator
    _disconnect(harness)


pytestmark = pytest.mark.parametrize("backend_config", BACKENDS, indirect=True)


def patch(sms, number: str, body: dict, tenant=None):
    return sms.client.patch(
        f"/v1/senders/{number.replace('+', '%2B')}",
        json=body,
        headers=(tenant or sms.tenant).headers,
    )


def senders(sms) -> dict[str, dict]:
    response = sms.client.get("/v1/senders", headers=sms.tenant.headers)
    assert response.status_code == 200, response.get_json()
    return {s["address"]: s for s in response.get_json()["senders"]}


def sent_from(sms) -> list[tuple[str, str]]:
    """(from, body) of what reached the gateway, in order."""
    return [(m["from"] or m["messaging_service_sid"], m["body"]) for m in sms.outbox]


def statuses(sms, conversation_id: str) -> list[tuple[str, str, str | None]]:
    return [
        (m["kind"], m["status"], m["drop_reason"])
        for m in sms.conversation(conversation_id)["messages"]
    ]


def history(sms, user: str = USER):
    with sms.app.app_context():
        return [
            (e.sender, e.action, e.keyword, e.source)
            for e in sms.store.opt_out_history(sms.tenant.project_id, user)
        ]


# -- membership -----------------------------------------------------------------------------------
def test_patch_puts_a_number_in_a_service_and_takes_it_out(make_pool_sms):
    sms = make_pool_sms()
    with sms.app.app_context():
        provisioning.add_sender(get_state(sms.app), sms.tenant.project_id, MG, "sandbox")

    joined = patch(sms, POOL_A, {"messaging_service_sid": MG})

    assert joined.status_code == 200, joined.get_json()
    assert joined.get_json()["address"] == POOL_A
    assert joined.get_json()["messaging_service_sid"] == MG
    listed = senders(sms)
    assert listed[POOL_A]["messaging_service_sid"] == MG
    assert listed[POOL_B]["messaging_service_sid"] is None
    assert listed[MG]["messaging_service_sid"] is None

    # The registration is untouched by a membership change, and the other way round.
    registered = patch(sms, POOL_A, {"registration": "not_registered"})
    assert registered.get_json()["messaging_service_sid"] == MG
    left = patch(sms, POOL_A, {"messaging_service_sid": None})
    assert left.status_code == 200
    assert (left.get_json()["messaging_service_sid"], left.get_json()["registration"]) == (
        None,
        "not_registered",
    )
    assert senders(sms)[POOL_A]["messaging_service_sid"] is None


@pytest.mark.parametrize(
    "value",
    [
        OTHER_MG,  # not provisioned at all
        "MG" + "ab" * 15,  # not a Messaging Service SID
        "+14155552679",
        "",
        7,
    ],
)
def test_patch_refuses_what_is_not_a_service_of_the_project(make_pool_sms, value):
    sms = make_pool_sms()

    response = patch(sms, POOL_A, {"messaging_service_sid": value})

    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["detail"] and "messaging_service_sid" in body["errors"]
    assert senders(sms)[POOL_A]["messaging_service_sid"] is None


def test_patch_refuses_another_projects_service_and_a_service_as_a_member(make_pool_sms):
    sms = _pool(make_pool_sms(), members=())
    other = sms.provision(numbers=())
    with sms.app.app_context():
        provisioning.add_sender(get_state(sms.app), other.project_id, OTHER_MG, "live")

    theirs = patch(sms, POOL_A, {"messaging_service_sid": OTHER_MG})
    nested = patch(sms, MG, {"messaging_service_sid": MG})
    bad_and_good = patch(
        sms, POOL_A, {"registration": "not_registered", "messaging_service_sid": OTHER_MG}
    )

    for response in (theirs, nested, bad_and_good):
        assert response.status_code == 400, response.get_json()
        assert "messaging_service_sid" in response.get_json()["errors"]
    # The same answer as for an unknown service: nothing to learn about another project.
    unknown_sid = "MG" + "ef" * 16
    unknown = patch(sms, POOL_A, {"messaging_service_sid": unknown_sid})
    assert theirs.get_json()["detail"].replace(OTHER_MG, "MG…") == unknown.get_json()[
        "detail"
    ].replace(unknown_sid, "MG…")
    # Nothing changed, the valid half of a refused request included.
    listed = senders(sms)
    assert listed[POOL_A]["messaging_service_sid"] is None
    assert listed[POOL_A]["registration"] == "unknown"


def test_patch_of_another_tenants_number_is_404(make_pool_sms):
    sms = _pool(make_pool_sms())
    other = sms.provision(numbers=("+14155552678",))

    response = patch(sms, "+14155552678", {"messaging_service_sid": MG})
    theirs = patch(sms, POOL_A, {"messaging_service_sid": None}, tenant=other)

    assert response.status_code == 404 and theirs.status_code == 404
    assert senders(sms)[POOL_A]["messaging_service_sid"] == MG


def test_an_inbound_webhook_through_a_service_records_the_membership(make_pool_sms):
    sms = _pool(make_pool_sms(), members=())
    params = sms.inbound_params(USER, "hello", to=POOL_A)

    response = sms.post_signed("/v1/twilio/sms", {**params, "MessagingServiceSid": MG})

    assert response.status_code == 200
    assert senders(sms)[POOL_A]["messaging_service_sid"] == MG


def test_a_stop_through_a_service_not_recorded_yet_covers_the_service(make_pool_sms):
    sms = _pool(make_pool_sms(), members=())
    params = sms.inbound_params(USER, "STOP", to=POOL_B)

    response = sms.post_signed("/v1/twilio/sms", {**params, "MessagingServiceSid": MG})

    assert response.status_code == 200
    assert history(sms) == [(MG, "opt_out", "STOP", "keyword")]
    assert sms.send_ok(USER, "from B", agent_number=POOL_B)["status"] == "suppressed"
    # POOL_A was never seen in the service: it is not covered.
    assert sms.send_ok(USER, "from A", agent_number=POOL_A)["status"] == "sent"


def test_an_inbound_webhook_naming_an_unknown_service_is_handled_and_changes_no_membership(
    make_pool_sms,
):
    sms = _pool(make_pool_sms(), members=())
    other = sms.provision(numbers=())
    with sms.app.app_context():
        provisioning.add_sender(get_state(sms.app), other.project_id, OTHER_MG, "live")

    for service in ("MG" + "ef" * 16, OTHER_MG, "not-a-sid"):
        params = sms.inbound_params(USER, f"hello via {service}", to=POOL_A)
        response = sms.post_signed("/v1/twilio/sms", {**params, "MessagingServiceSid": service})
        assert response.status_code == 200

    assert senders(sms)[POOL_A]["messaging_service_sid"] is None
    [conversation] = sms.conversations()
    assert [m["body"] for m in conversation["messages"]] == [
        "hello via " + s for s in ("MG" + "ef" * 16, OTHER_MG, "not-a-sid")
    ]


def test_add_number_puts_a_number_in_a_service(make_pool_sms):
    sms = _pool(make_pool_sms(), members=())
    runner = sms.app.test_cli_runner()
    project = sms.tenant.project_id
    new_number = "+14155552679"

    added = runner.invoke(
        args=["polysms", "add-number", project, new_number, "--messaging-service", MG]
    )
    joined = runner.invoke(
        args=["polysms", "add-number", project, POOL_A, "--messaging-service", MG]
    )
    unknown = runner.invoke(
        args=["polysms", "add-number", project, "+14155552680", "--messaging-service", OTHER_MG]
    )

    assert added.exit_code == 0 and MG in added.output, added.output
    assert joined.exit_code == 0, joined.output
    assert unknown.exit_code != 0 and "is not a Messaging Service provisioned" in unknown.output
    listed = senders(sms)
    assert listed[new_number]["messaging_service_sid"] == MG
    assert listed[POOL_A]["messaging_service_sid"] == MG
    assert "+14155552680" not in listed


# -- a STOP covers the whole service --------------------------------------------------------------
STOP_REPLY = (
    "You have been unsubscribed and will not receive further messages. Reply START to resubscribe."
)
START_REPLY = "You have been resubscribed and will receive messages again."


def test_a_stop_to_one_member_opts_the_user_out_of_every_member_and_the_service(sms):
    sms.inbound_ok(USER, "STOP", to=POOL_A)

    # The confirmation still goes out, from the number the user wrote to.
    assert sent_from(sms) == [(POOL_A, STOP_REPLY)]
    assert history(sms) == [(MG, "opt_out", "STOP", "keyword")]
    with sms.app.app_context():
        store = sms.store
        assert store.is_opted_out(USER, POOL_A) and store.is_opted_out(USER, POOL_B)
        assert store.is_opted_out(USER, MG)
        assert not store.is_opted_out(USER, OUTSIDE)
        assert not store.is_opted_out(OTHER_USER, POOL_B)

    via_other_member = sms.send_ok(USER, "from B", agent_number=POOL_B)
    outside = sms.send_ok(USER, "from outside", agent_number=OUTSIDE)
    other_user = sms.send_ok(OTHER_USER, "to someone else", agent_number=POOL_B)

    assert via_other_member["status"] == "suppressed"
    assert statuses(sms, via_other_member["conversation_id"]) == [
        ("greeting", "suppressed", "opted_out")
    ]
    assert (outside["status"], other_user["status"]) == ("sent", "sent")
    assert sent_from(sms)[1:] == [(OUTSIDE, "from outside"), (POOL_B, "to someone else")]


def test_a_reply_through_another_member_is_suppressed_at_send_time(make_pool_sms):
    def agent(conv, text):
        return f"re: {text}"

    sms = _pool(make_pool_sms(agent=agent))
    sms.inbound_ok(USER, "hello", to=POOL_B)
    [conversation] = sms.conversations()
    sms.inbound_ok(USER, "STOP", to=POOL_A)

    # A message to the pool's other number, queued before anything checks: the job suppresses it.
    sms.inbound_ok(USER, "still there?", to=POOL_B)

    assert statuses(sms, conversation["id"]) == [
        ("user", "handled", None),
        ("agent", "sent", None),
        ("user", "dropped", "opted_out"),
    ]
    with sms.app.app_context():
        state = get_state(sms.app)
        conv = Conversation(state, state.store.get_session(conversation["id"]))
        queued = conv.send_sms(USER, POOL_B, "a nudge")
        through_service = conv.send_sms(USER, MG, "through the service")
    assert statuses(sms, conversation["id"])[-2:] == [
        ("agent", "suppressed", "opted_out"),
        ("agent", "suppressed", "opted_out"),
    ]
    assert queued and through_service
    assert sent_from(sms) == [(POOL_B, "re: hello"), (POOL_A, STOP_REPLY)]


def test_start_through_any_member_opts_back_into_the_whole_service(sms):
    sms.inbound_ok(USER, "STOP", to=POOL_A)
    sms.inbound_ok(USER, "START", to=POOL_B)

    assert sent_from(sms) == [(POOL_A, STOP_REPLY), (POOL_B, START_REPLY)]
    assert history(sms) == [
        (MG, "opt_out", "STOP", "keyword"),
        (MG, "opt_in", "START", "keyword"),
    ]
    for number in (POOL_A, POOL_B):
        assert sms.send_ok(USER, f"from {number}", agent_number=number)["status"] == "sent"


def test_start_through_a_member_also_clears_its_opt_out_from_before_the_pool(make_pool_sms):
    sms = make_pool_sms()
    sms.inbound_ok(USER, "STOP", to=POOL_A)  # not in a service yet: the number's own opt-out
    _pool(sms)
    # That opt-out stays the number's: it does not spread to the service it joined later.
    assert sms.send_ok(USER, "pooled now", agent_number=POOL_A)["status"] == "suppressed"
    assert sms.send_ok(USER, "pooled too", agent_number=POOL_B)["status"] == "sent"

    sms.inbound_ok(USER, "UNSTOP", to=POOL_A)

    assert history(sms) == [
        (POOL_A, "opt_out", "STOP", "keyword"),
        (POOL_A, "opt_in", "UNSTOP", "keyword"),
    ]
    assert sms.send_ok(USER, "welcome back", agent_number=POOL_A)["status"] == "sent"


def test_a_stop_outside_the_service_leaves_the_service_alone(sms):
    sms.inbound_ok(USER, "STOP", to=OUTSIDE)

    assert history(sms) == [(OUTSIDE, "opt_out", "STOP", "keyword")]
    assert sms.send_ok(USER, "from A", agent_number=POOL_A)["status"] == "sent"
    assert sms.send_ok(USER, "from outside", agent_number=OUTSIDE)["status"] == "suppressed"


def test_a_number_that_left_the_service_is_no_longer_covered(sms):
    sms.inbound_ok(USER, "STOP", to=POOL_A)

    assert patch(sms, POOL_B, {"messaging_service_sid": None}).status_code == 200

    assert sms.send_ok(USER, "from B", agent_number=POOL_B)["status"] == "sent"
    assert sms.send_ok(USER, "from A", agent_number=POOL_A)["status"] == "suppressed"


# -- Twilio's 21610 -------------------------------------------------------------------------------
def test_21610_through_a_member_suppresses_and_opts_out_of_the_whole_service(emulated):
    sms, emulator = emulated
    emulator.fail_next(1, 21610)

    refused = sms.send_ok(USER, "from A", agent_number=POOL_A)

    assert refused["status"] == "suppressed"
    [greeting] = sms.conversation(refused["conversation_id"])["messages"]
    assert (greeting["status"], greeting["drop_reason"], greeting["error_code"]) == (
        "suppressed",
        "opted_out",
        21610,
    )
    assert history(sms) == [(MG, "opt_out", None, "carrier")]
    figures = sms.metrics()
    assert (figures["suppressed"], figures["failed"], figures["api_failures"]) == (1, 0, 0)
    # Later sends through the service never reach Twilio; outside it they do.
    assert sms.send_ok(USER, "from B", agent_number=POOL_B)["status"] == "suppressed"
    assert sms.send_ok(USER, "from outside", agent_number=OUTSIDE)["status"] == "sent"
    assert emulator.requests_count == 2
    assert [m["from"] for m in emulator.messages] == [OUTSIDE]


# -- every message not sent or not routed says why -------------------------------------------------
def test_every_dropped_or_suppressed_message_has_a_drop_reason(make_pool_sms):
    def agent(conv, text):
        return f"re: {text}"

    sms = make_pool_sms(
        agent=agent,
        POLYSMS_INBOUND_SENDER_LIMIT="3 per minute",
        POLYSMS_INBOUND_PROJECT_LIMIT="5 per minute",
        POLYSMS_DUPLICATE_TEXT_LIMIT="1 per 5 minutes",
    )
    # project_rate_limited: two other users use up the project's allowance after ours.
    sms.inbound_ok(USER, "one", to=POOL_A)
    sms.inbound_ok(USER, "one", to=POOL_A)  # duplicate_text, and the user is blocked
    sms.inbound_ok(USER, "two", to=POOL_A)  # blocked
    sms.inbound_ok(OTHER_USER, "a", to=POOL_B)
    sms.inbound_ok(OTHER_USER, "b", to=POOL_B)
    sms.inbound_ok(OTHER_USER, "c", to=POOL_B)
    sms.inbound_ok(OTHER_USER, "d", to=POOL_B)  # sender_rate_limited
    third = "+14155552676"
    sms.inbound_ok(third, "x", to=OUTSIDE)
    sms.inbound_ok(third, "y", to=OUTSIDE)  # project_rate_limited (5 counted already)

    by_user = {c["user_number"]: c for c in sms.conversations()}
    reasons = {
        user: [(m["body"], m["status"], m["drop_reason"]) for m in c["messages"]]
        for user, c in by_user.items()
    }
    assert reasons[USER] == [
        ("one", "handled", None),
        ("re: one", "sent", None),
        ("one", "dropped", "duplicate_text"),
        ("two", "dropped", "blocked"),
    ]
    assert reasons[OTHER_USER][-1] == ("d", "dropped", "sender_rate_limited")
    assert all(r is None for _, _, r in reasons[OTHER_USER][:-1])
    assert reasons[third] == [
        ("x", "handled", None),
        ("re: x", "sent", None),
        ("y", "dropped", "project_rate_limited"),
    ]

    # opted_out, outbound when accepted (inbound and at send time: the next test).
    fourth = "+14155552677"
    sms.inbound_ok(fourth, "STOP", to=OUTSIDE)
    accepted = sms.send_ok(fourth, "hello?", agent_number=OUTSIDE)
    assert statuses(sms, accepted["conversation_id"]) == [("greeting", "suppressed", "opted_out")]


def test_a_reply_stopped_at_send_time_and_a_dropped_inbound_say_opted_out(make_pool_sms):
    built = []

    def agent(conv, text):
        # The user opts out while the agent works: its reply is stopped at send time.
        built[0].store.set_opt_out(conv.project_id, USER, OUTSIDE, True, "STOP", utcnow())
        return f"re: {text}"

    sms = make_pool_sms(agent=agent)
    built.append(sms)
    sms.inbound_ok(USER, "hello", to=OUTSIDE)
    sms.inbound_ok(USER, "are you there?", to=OUTSIDE)

    [conversation] = sms.conversations()
    assert statuses(sms, conversation["id"]) == [
        ("user", "handled", None),
        ("agent", "suppressed", "opted_out"),
        ("user", "dropped", "opted_out"),
    ]
    assert sms.metrics()["suppressed"] == 1


def test_a_failed_send_is_not_a_drop(emulated):
    sms, emulator = emulated
    emulator.fail_next(1, 21211)

    failed = sms.send_ok(USER, "to a bad number", agent_number=OUTSIDE)

    assert statuses(sms, failed["conversation_id"]) == [("greeting", "failed", None)]


def test_the_dashboard_shows_the_drop_reason(make_pool_sms):
    sms = _pool(make_pool_sms(POLYSMS_DASHBOARD=True))
    sms.inbound_ok(USER, "STOP", to=POOL_A)
    suppressed = sms.send_ok(USER, "hello?", agent_number=POOL_B)
    browser = sms.app.test_client()
    page = browser.get("/dashboard/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    signed = browser.post(
        "/dashboard/sign-in",
        data={
            "csrf_token": token,
            "api_key": sms.tenant.api_key,
            "connector_id": sms.tenant.connector_id,
        },
    )
    assert signed.status_code == 302

    shown = browser.get(f"/dashboard/conversations/{suppressed['conversation_id']}")
    opt_outs = browser.get("/dashboard/opt-outs", query_string={"number": USER})

    assert shown.status_code == 200
    assert "(opted_out)" in shown.get_data(as_text=True)
    page = opt_outs.get_data(as_text=True)
    assert opt_outs.status_code == 200
    assert f"(in {MG})" in page and page.count("data-opted-out") == 3  # two members, the service
    assert "<td>keyword</td>" in page
