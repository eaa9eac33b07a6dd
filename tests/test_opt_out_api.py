"""The `/v1/opt-outs` routes on every backend: creating, listing, filtering, paging and
deleting opt-outs and reading their history, tenant isolation, bad requests, concurrent calls for
one pair, opt-outs through a Messaging Service, and the opt-out signals they send."""

from __future__ import annotations

import pytest
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

from flask_polysms.backends import create_store


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
