"""Twilio webhooks: the signature, idempotent inbound messages, status
callbacks (one event per SID and status, never a step back, counted once), the emulator's real
signed callbacks through a live server, and two processes racing on one MessageSid."""

from __future__ import annotations

import multiprocessing

import pytest
import requests
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from flask_polysms.testing import sign_twilio_request

AGENT = "+14155552671"
OTHER_AGENT = "+14155552672"
USER = "+14155552674"
OTHER_USER = "+14155552675"
# A cap for waiting on the emulator's callbacks, never a measure of speed: generous for busy CI.
CALLBACK_WAIT = 30.0
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


@pytest.fixture
def calls():
    return []


@pytest.fixture
def sms(make_sms, calls):
    def agent(conv, text):
        calls.append(text)
        return f"echo: {text}"

    return make_sms(agent=agent, numbers=(AGENT, OTHER_AGENT))


def inbound_messages(sms) -> list:
    """Every inbound message recorded for the project, whatever its session."""
    with sms.app.app_context():
        sessions, _ = sms.store.list_sessions(sms.tenant.project_id, limit=200)
        found = [m for s in sessions for m in sms.store.list_messages(s.id)]
    return [m for m in found if m.direction == "inbound"]


def assert_nothing_happened(sms, calls) -> None:
    assert inbound_messages(sms) == []
    assert sms.conversations() == []
    assert sms.outbox == []
    assert calls == []
    assert sms.metrics()["inbound"] == 0


# -- the signature ---------------------------------------------------------------------------------


def test_a_signed_inbound_message_answers_empty_twiml(sms, calls):
    response = sms.inbound(USER, "Hello?", to=AGENT)

    assert response.status_code == 200
    assert response.mimetype in ("text/xml", "application/xml")
    assert response.get_data(as_text=True) == EMPTY_TWIML
    [message] = inbound_messages(sms)
    assert (message.from_, message.to, message.body) == (USER, AGENT, "Hello?")
    assert calls == ["Hello?"]


@pytest.mark.parametrize(
    "signature",
    [None, "", "not-a-signature", sign_twilio_request("http://localhost/v1/twilio/sms", {}, "x")],
    ids=["missing", "empty", "garbage", "other-request"],
)
def test_a_bad_or_missing_signature_is_403_and_changes_nothing(sms, calls, signature):
    params = sms.inbound_params(USER, "Hello?", to=AGENT)
    headers = {} if signature is None else {"X-Twilio-Signature": signature}

    response = sms.client.post("/v1/twilio/sms", data=params, headers=headers)

    assert response.status_code == 403
    assert set(response.get_json()) == {"detail"}
    assert_nothing_happened(sms, calls)
    # The MessageSid was not claimed: the genuine request still goes through.
    assert sms.post_signed("/v1/twilio/sms", params).status_code == 200
    assert len(inbound_messages(sms)) == 1
    assert calls == ["Hello?"]


def test_a_signature_with_another_projects_token_is_403(sms, calls):
    other = sms.provision(numbers=("+14155552678",))
    params = sms.inbound_params(USER, "Hello?", to=AGENT)

    response = sms.post_signed("/v1/twilio/sms", params, token=other.twilio_auth_token)

    assert response.status_code == 403
    assert_nothing_happened(sms, calls)


def test_a_tampered_body_is_403(sms, calls):
    params = sms.inbound_params(USER, "Hello?", to=AGENT)
    signature = sign_twilio_request(
        "http://localhost/v1/twilio/sms", params, sms.tenant.twilio_auth_token
    )
    params["Body"] = "STOP"

    response = sms.client.post(
        "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
    )

    assert response.status_code == 403
    assert_nothing_happened(sms, calls)
    with sms.app.app_context():
        assert not sms.store.is_opted_out(USER, AGENT)


def test_a_message_to_an_unknown_number_is_403(sms, calls):
    params = sms.inbound_params(USER, "Hello?", to="+14155552679")

    response = sms.post_signed("/v1/twilio/sms", params)

    assert response.status_code == 403
    assert_nothing_happened(sms, calls)


def test_extra_twilio_parameters_are_accepted_and_signed_over(sms, calls):
    params = {
        **sms.inbound_params(USER, "Hello?", to=AGENT),
        "SmsMessageSid": "SM" + "e" * 32,
        "NumSegments": "1",
        "FromCity": "SAN FRANCISCO",
        "FromCountry": "US",
        "ToZip": "94105",
        "ANewParameterTwilioAddedLastWeek": "surprise",
    }

    assert sms.post_signed("/v1/twilio/sms", params).status_code == 200
    assert calls == ["Hello?"]

    # A signature that leaves an extra parameter out does not cover the request.
    params["MessageSid"] = sms.new_sid()
    partial = {k: v for k, v in params.items() if k != "ANewParameterTwilioAddedLastWeek"}
    signature = sign_twilio_request(
        "http://localhost/v1/twilio/sms", partial, sms.tenant.twilio_auth_token
    )
    response = sms.client.post(
        "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
    )
    assert response.status_code == 403
    assert calls == ["Hello?"]


def test_a_repeated_parameter_is_signed_over_every_value(sms, calls):
    params = MultiDict(sms.inbound_params(USER, "Look at these", to=AGENT))
    params.add("MediaUrl", "https://example.com/a.jpg")
    params.add("MediaUrl", "https://example.com/b.jpg")
    signature = RequestValidator(sms.tenant.twilio_auth_token).compute_signature(
        "http://localhost/v1/twilio/sms", params
    )

    response = sms.client.post(
        "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
    )

    assert response.status_code == 200
    assert calls == ["Look at these"]


def test_with_a_public_url_the_signature_must_be_over_the_public_url(make_sms, calls):
    sms = make_sms(
        agent=lambda conv, text: calls.append(text),
        numbers=(AGENT,),
        POLYSMS_PUBLIC_URL="https://sms.example.com",
    )
    params = sms.inbound_params(USER, "Hello?", to=AGENT)

    internal = sms.post_signed("/v1/twilio/sms", params, url="http://localhost/v1/twilio/sms")
    assert internal.status_code == 403
    assert calls == [] and inbound_messages(sms) == []

    public = sms.post_signed("/v1/twilio/sms", params, url="https://sms.example.com/v1/twilio/sms")
    assert public.status_code == 200
    assert calls == ["Hello?"]


def test_signature_checks_can_be_turned_off(make_sms, calls):
    sms = make_sms(
        agent=lambda conv, text: calls.append(text),
        numbers=(AGENT,),
        POLYSMS_VALIDATE_SIGNATURES=False,
    )

    response = sms.client.post("/v1/twilio/sms", data=sms.inbound_params(USER, "hi", to=AGENT))

    assert response.status_code == 200
    assert calls == ["hi"]


def test_a_signed_request_without_a_required_parameter_is_400(sms, calls):
    params = sms.inbound_params(USER, "Hello?", to=AGENT)
    del params["MessageSid"]

    response = sms.post_signed("/v1/twilio/sms", params)

    assert response.status_code == 400
    assert set(response.get_json()) <= {"detail", "errors"}
    assert_nothing_happened(sms, calls)


# -- idempotency -----------------------------------------------------------------------------------


def test_the_same_message_sid_twice_has_one_effect(sms, calls):
    params = sms.inbound_params(USER, "Book a table", to=AGENT)

    first = sms.post_signed("/v1/twilio/sms", params)
    second = sms.post_signed("/v1/twilio/sms", params)

    assert first.status_code == second.status_code == 200
    assert second.get_data(as_text=True) == EMPTY_TWIML
    assert len(inbound_messages(sms)) == 1
    assert calls == ["Book a table"]
    assert [m["body"] for m in sms.outbox] == ["echo: Book a table"]
    assert sms.metrics()["inbound"] == 1


def test_the_same_stop_twice_is_answered_once(sms, calls):
    params = sms.inbound_params(USER, "STOP", to=AGENT)

    sms.post_signed("/v1/twilio/sms", params)
    sms.post_signed("/v1/twilio/sms", params)

    assert len(sms.outbox) == 1
    with sms.app.app_context():
        assert len(sms.store.opt_out_history(sms.tenant.project_id, USER, AGENT)) == 1


# -- status callbacks (signed by hand) -------------------------------------------------------------


@pytest.fixture
def sent(sms):
    """A greeting handed to the gateway: (conversation id, its Twilio SID)."""
    body = sms.send_ok(USER, "Your order shipped", agent_number=AGENT)
    return body["conversation_id"], sms.outbox[-1]["sid"]


def message_status(sms, conversation_id: str) -> tuple[str, int | None]:
    message = sms.conversation(conversation_id)["messages"][0]
    return message["status"], message["error_code"]


def test_a_status_callback_moves_the_message_forward(sms, sent):
    conversation_id, sid = sent

    assert sms.status_callback(sid, "sent", to=USER).get_data(as_text=True) == EMPTY_TWIML
    assert message_status(sms, conversation_id) == ("sent", None)
    assert sms.status_callback(sid, "delivered", to=USER).status_code == 200

    assert message_status(sms, conversation_id) == ("delivered", None)
    metrics = sms.metrics()
    assert metrics["delivered"] == 1 and metrics["delivery_rate"] == 1.0
    assert sms.conversation(conversation_id)["metadata"]["sms_sends"][0]["status"] == "delivered"


def test_one_event_per_sid_and_status(sms, sent):
    _, sid = sent

    for status in ("sent", "sent", "delivered", "delivered", "sent"):
        assert sms.status_callback(sid, status, to=USER).status_code == 200

    with sms.app.app_context():
        events = sms.store.list_status_events(sid)
    assert sorted(e.status for e in events) == ["delivered", "sent"]


def test_a_final_status_is_never_downgraded(sms, sent):
    conversation_id, sid = sent

    sms.status_callback(sid, "delivered", to=USER)
    sms.status_callback(sid, "sent", to=USER)
    sms.status_callback(sid, "queued", to=USER)

    assert message_status(sms, conversation_id) == ("delivered", None)


def test_a_final_status_does_not_turn_into_another_final_status(sms, sent):
    conversation_id, sid = sent

    sms.status_callback(sid, "undelivered", to=USER, error_code=30003)
    sms.status_callback(sid, "delivered", to=USER)
    sms.status_callback(sid, "failed", to=USER, error_code=30008)

    assert message_status(sms, conversation_id) == ("undelivered", 30003)
    metrics = sms.metrics()
    assert (metrics["undelivered"], metrics["delivered"], metrics["failed"]) == (1, 0, 0)
    assert metrics["delivery_rate"] == 0.0


def test_delivered_is_counted_once_per_message(sms, sent):
    _, sid = sent
    second = sms.send_ok(OTHER_USER, "Yours too", agent_number=AGENT)
    second_sid = sms.outbox[-1]["sid"]

    for _ in range(3):
        sms.status_callback(sid, "delivered", to=USER)
    sms.status_callback(second_sid, "sent", to=OTHER_USER)
    sms.status_callback(second_sid, "delivered", to=OTHER_USER)
    sms.status_callback(second_sid, "delivered", to=OTHER_USER)

    metrics = sms.metrics()
    assert metrics["delivered"] == 2
    assert metrics["sent"] == 2  # counted when handed to Twilio, not per callback
    assert message_status(sms, second["conversation_id"]) == ("delivered", None)


def test_an_unsigned_status_callback_is_403_and_changes_nothing(sms, sent):
    conversation_id, sid = sent
    params = {"MessageSid": sid, "MessageStatus": "delivered", "From": AGENT, "To": USER}

    response = sms.client.post(
        "/v1/twilio/status", data=params, headers={"X-Twilio-Signature": "bogus"}
    )

    assert response.status_code == 403
    assert message_status(sms, conversation_id) == ("sent", None)
    with sms.app.app_context():
        assert sms.store.list_status_events(sid) == []
    # The genuine callback is not blocked by the forged one.
    assert sms.status_callback(sid, "delivered", to=USER).status_code == 200
    assert message_status(sms, conversation_id) == ("delivered", None)


def test_a_status_callback_signed_by_another_project_is_403(sms, sent):
    conversation_id, sid = sent
    other = sms.provision(numbers=("+14155552678",))
    params = {"MessageSid": sid, "MessageStatus": "delivered", "From": AGENT, "To": USER}

    response = sms.post_signed("/v1/twilio/status", params, token=other.twilio_auth_token)

    assert response.status_code == 403
    assert message_status(sms, conversation_id) == ("sent", None)


# -- the emulator's own callbacks, through a live server -------------------------------------------


@pytest.fixture
def live(make_emulated_sms, live_server):
    """(harness, emulator): the emulator posts signed callbacks to a live server of the app."""

    def make(**emulator_options):
        url, bind = live_server
        emulator_options.setdefault("callbacks", "auto")
        sms, emulator = make_emulated_sms(
            numbers=(AGENT, OTHER_AGENT), emulator=emulator_options, POLYSMS_PUBLIC_URL=url
        )
        bind(sms.app)
        return sms, emulator, url

    return make


def test_delivery_through_the_emulators_signed_callbacks(live):
    sms, emulator, url = live()

    body = sms.send_ok(USER, "Hello", agent_number=AGENT)
    posted = emulator.wait_for_callbacks(2, timeout=CALLBACK_WAIT)

    assert [p["status"] for p in posted] == ["sent", "delivered"]
    # Signed over the full URL, the message's id in its query included.
    assert all(p["url"].startswith(f"{url}/v1/twilio/status?message_id=msg_") for p in posted)
    assert all(p["status_code"] == 200 for p in posted), posted
    assert message_status(sms, body["conversation_id"]) == ("delivered", None)
    metrics = sms.metrics()
    assert metrics["sent"] == 1 and metrics["delivered"] == 1 and metrics["delivery_rate"] == 1.0


def test_undelivered_through_the_emulator_keeps_the_error_code(live):
    sms, emulator, _ = live()
    emulator.set_outcome(USER, "undelivered", 30005)

    body = sms.send_ok(USER, "Hello", agent_number=AGENT)
    posted = emulator.wait_for_callbacks(2, timeout=CALLBACK_WAIT)

    assert all(p["status_code"] == 200 for p in posted)
    assert message_status(sms, body["conversation_id"]) == ("undelivered", 30005)
    metrics = sms.metrics()
    assert metrics["undelivered"] == 1 and metrics["delivery_rate"] == 0.0


def test_callbacks_out_of_order_never_step_back(live):
    sms, emulator, _ = live(shuffle_callbacks=True, seed=7)

    body = sms.send_ok(USER, "Hello", agent_number=AGENT)
    posted = emulator.wait_for_callbacks(2, timeout=CALLBACK_WAIT)

    # With two callbacks, shuffling always posts delivered before sent.
    assert [p["status"] for p in posted] == ["delivered", "sent"]
    assert all(p["status_code"] == 200 for p in posted)
    assert message_status(sms, body["conversation_id"]) == ("delivered", None)
    assert sms.metrics()["delivered"] == 1


def test_the_emulators_duplicate_callbacks_are_applied_once(live):
    sms, emulator, _ = live(duplicate_callbacks=True)

    body = sms.send_ok(USER, "Hello", agent_number=AGENT)
    posted = emulator.wait_for_callbacks(4, timeout=CALLBACK_WAIT)

    assert sorted(p["status"] for p in posted) == ["delivered", "delivered", "sent", "sent"]
    assert all(p["status_code"] == 200 for p in posted), posted
    assert message_status(sms, body["conversation_id"]) == ("delivered", None)
    assert sms.metrics()["delivered"] == 1
    with sms.app.app_context():
        assert len(sms.store.list_status_events(posted[0]["message_sid"])) == 2


def test_a_callback_posted_twice_is_applied_once(live):
    sms, emulator, _ = live()
    body = sms.send_ok(USER, "Hello", agent_number=AGENT)
    posted = emulator.wait_for_callbacks(2, timeout=CALLBACK_WAIT)

    # Twilio retries callbacks: post the very same signed requests again.
    for record in posted:
        again = requests.post(
            record["url"],
            data=record["params"],
            headers={"X-Twilio-Signature": record["signature"]},
            timeout=10,
        )
        assert again.status_code == 200

    assert message_status(sms, body["conversation_id"]) == ("delivered", None)
    assert sms.metrics()["delivered"] == 1
    with sms.app.app_context():
        assert len(sms.store.list_status_events(posted[0]["message_sid"])) == 2


# -- two processes, one MessageSid -----------------------------------------------------------------


def _post_in_process(db_url, secret, posts, barrier, results) -> None:
    """Child process: build the app on the shared database and post each request at the barrier."""
    from flask import Flask

    from flask_polysms import PolySMS

    app = Flask("polysms_process")
    app.testing = True
    app.config.update(SECRET_KEY=secret, POLYSMS_GATEWAY="outbox", POLYSMS_STORAGE_URL=db_url)
    PolySMS(app)
    client = app.test_client()
    statuses = []
    for params, signature in posts:
        barrier.wait(timeout=60)
        response = client.post(
            "/v1/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
        )
        statuses.append(response.status_code)
    results.put(statuses)


def test_two_processes_posting_the_same_message_sid_record_it_once(make_sms, tmp_path):
    try:
        import flask_polysms.backends.peewee  # noqa: F401
    except ImportError as exc:  # pragma: no cover - only while the backend is being written
        pytest.skip(f"flask_polysms.backends.peewee does not import yet: {exc}")
    db_url = f"sqlite:///{tmp_path / 'x.db'}"
    sms = make_sms(numbers=(AGENT,), POLYSMS_STORAGE_URL=db_url)
    posts = []
    for n in range(5):
        params = sms.inbound_params(f"+1415555{2680 + n}", f"Hello {n}", to=AGENT)
        signature = sign_twilio_request(
            "http://localhost/v1/twilio/sms", params, sms.tenant.twilio_auth_token
        )
        posts.append((params, signature))
    with sms.app.app_context():
        sms.store.close()  # nothing of the parent's connection is shared with the children

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    secret = sms.app.config["SECRET_KEY"]
    processes = [
        context.Process(target=_post_in_process, args=(db_url, secret, posts, barrier, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert outcomes == [[200] * len(posts)] * 2
    recorded = inbound_messages(sms)
    assert sorted(m.twilio_sid for m in recorded) == sorted(p["MessageSid"] for p, _ in posts)
    assert sms.metrics()["inbound"] == len(posts)
    assert len(sms.conversations()) == len(posts)


# -- the whole flow through the emulator -----------------------------------------------------------


def test_the_whole_flow_through_the_emulator(make_emulated_sms, live_server):
    url, bind = live_server
    calls = []

    def agent(conv, text):
        calls.append(text)
        return f"Sure, {text.lower()}"

    sms, emulator = make_emulated_sms(
        agent=agent,
        numbers=(AGENT,),
        emulator={"callbacks": "auto"},
        POLYSMS_PUBLIC_URL=url,
    )
    bind(sms.app)
    expected_callbacks = 0

    def inbound(text: str) -> None:
        params = sms.inbound_params(USER, text, to=AGENT)
        signature = sign_twilio_request(
            f"{url}/v1/twilio/sms", params, sms.tenant.twilio_auth_token
        )
        # Twilio reaches the live server, exactly as the emulator's callbacks do.
        response = requests.post(
            f"{url}/v1/twilio/sms",
            data=params,
            headers={"X-Twilio-Signature": signature},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.text == EMPTY_TWIML

    # 1. The API opens the conversation; Twilio delivers the greeting.
    conversation_id = sms.send_ok(USER, "Your table is ready", agent_number=AGENT)[
        "conversation_id"
    ]
    expected_callbacks += 2
    # 2. The user answers; the agent answers back from the session's number.
    inbound("Can I bring a friend")
    expected_callbacks += 2
    # 3. STOP: confirmed, then every send to the pair is suppressed.
    inbound("STOP")
    expected_callbacks += 2
    suppressed = sms.send_ok(USER, "Are you coming?", agent_number=AGENT)
    # 4. START: confirmed, and messages are delivered again.
    inbound("start")
    expected_callbacks += 2
    again = sms.send_ok(USER, "Welcome back", agent_number=AGENT)
    expected_callbacks += 2
    posted = emulator.wait_for_callbacks(expected_callbacks, timeout=CALLBACK_WAIT)

    assert calls == ["Can I bring a friend"]
    assert [(m["from"], m["to"], m["body"]) for m in emulator.messages] == [
        (AGENT, USER, "Your table is ready"),
        (AGENT, USER, "Sure, can i bring a friend"),
        (
            AGENT,
            USER,
            "You have been unsubscribed and will not receive further messages. "
            "Reply START to resubscribe.",
        ),
        (AGENT, USER, "You have been resubscribed and will receive messages again."),
        (AGENT, USER, "Welcome back"),
    ]
    assert len(posted) == expected_callbacks
    assert all(p["status_code"] == 200 for p in posted), posted

    first = sms.conversation(conversation_id)
    assert first["engaged"] is True
    assert [(m["kind"], m["direction"], m["status"]) for m in first["messages"]] == [
        ("greeting", "outbound", "delivered"),
        ("user", "inbound", "handled"),
        ("agent", "outbound", "delivered"),
        ("compliance", "inbound", "handled"),
        ("compliance", "outbound", "delivered"),
    ]
    assert suppressed["status"] == "suppressed"
    # START joins the newest open session of the pair: the one whose greeting was suppressed.
    second = sms.conversation(suppressed["conversation_id"])
    assert second["engaged"] is False
    assert [(m["kind"], m["direction"], m["status"]) for m in second["messages"]] == [
        ("greeting", "outbound", "suppressed"),
        ("compliance", "inbound", "handled"),
        ("compliance", "outbound", "delivered"),
    ]
    assert sms.conversation(again["conversation_id"])["messages"][0]["status"] == "delivered"
    metrics = sms.metrics()
    assert metrics["sent"] == 5 and metrics["delivered"] == 5
    assert metrics["suppressed"] == 1 and metrics["api_failures"] == 0
    assert metrics["delivery_rate"] == 1.0
    with sms.app.app_context():
        history = sms.store.opt_out_history(sms.tenant.project_id, USER, AGENT)
    assert [e.action for e in history] == ["opt_out", "opt_in"]
