"""The Store contract on messages, run against every backend: recording and reading them, media,
status compare-and-set, stuck and scheduled messages, status events, claiming inbound messages
once, and the send job's two calls (claim_send, record_sent).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from store_contract_support import (
    AGENT,
    OTHER_AGENT,
    T0,
    USER,
    a_message,
    a_project,
    a_sender,
    a_session,
    backend_fixture,  # noqa: F401
    run_in_threads,
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
    table_prefix_fixture,  # noqa: F401
)

from flask_polysms.ports.store import Store
from flask_polysms.records import (
    CANCELED,
    DELIVERED,
    FAILED,
    INBOUND,
    QUEUED,
    RECEIVED,
    SCHEDULED,
    SENDING,
    SENT,
    StatusEvent,
)


# -- messages -------------------------------------------------------------------------------------
def test_messages_add_get_and_list_in_recording_order(store: Store) -> None:
    session = store.create_session(a_session())
    # Created-at times out of order: the list follows the recording order, not the times.
    first = store.add_message(a_message(session.id, kind="greeting", created_at=T0))
    second = store.add_message(
        a_message(
            session.id,
            direction=INBOUND,
            kind="user",
            body="Hi ✓",
            to=AGENT,
            from_=USER,
            status=RECEIVED,
            twilio_sid="SM" + "1" * 32,
            created_at=T0 - timedelta(minutes=5),
        )
    )
    third = store.add_message(a_message(session.id, body="x" * 1600, segments=11, template="t"))
    store.add_message(a_message(None, body="no session"))
    store.add_message(a_message("ses_other"))

    assert store.get_message(second.id) == second
    assert store.get_message("msg_missing") is None
    assert [m.id for m in store.list_messages(session.id)] == [first.id, second.id, third.id]
    assert store.list_messages(session.id)[2] == third
    assert store.list_messages("ses_missing") == []
    assert store.get_message_by_sid("SM" + "1" * 32) == second
    assert store.get_message_by_sid("SM" + "2" * 32) is None


def test_a_messages_media_round_trips_through_every_read(store: Store) -> None:
    """A message's pictures (a list of {"url", "content_type"}) come back as written, in order,
    from every read, the send job's claim and ``sent`` record included; none is ``[]``."""
    session = store.create_session(a_session())
    media = [
        {
            "url": "https://api.twilio.com/2010-04-01/Accounts/AC1/Media/ME1",
            "content_type": "image/jpeg",
        },
        {"url": "https://example.org/é?q=1&x=<b>", "content_type": None},
    ]
    plain = store.add_message(a_message(session.id))
    inbound = store.add_message(
        a_message(
            session.id, direction=INBOUND, status=RECEIVED, twilio_sid="MM" + "1" * 32, media=media
        )
    )
    outbound = store.add_message(a_message(session.id, status=QUEUED, media=media[1:]))
    assert plain.media == [] and store.get_message(plain.id).media == []
    assert inbound.media == media and store.get_message(inbound.id).media == media
    assert store.get_message_by_sid("MM" + "1" * 32).media == media
    assert [m.media for m in store.list_messages(session.id)] == [[], media, media[1:]]
    assert [m.media for m in store.list_messages_of_sessions([session.id])[session.id]] == [
        [],
        media,
        media[1:],
    ]
    claim = store.claim_send(outbound.id, T0 + timedelta(seconds=1))
    assert claim.message.media == media[1:]
    sent, _ = store.record_sent(outbound.id, "MM" + "2" * 32, T0 + timedelta(seconds=2))
    assert sent.media == media[1:]
    updated = store.update_message(inbound.id, RECEIVED, status="processing")
    assert updated.media == media


def test_update_message_with_expected_status(store: Store) -> None:
    message = store.add_message(a_message())
    later = T0 + timedelta(seconds=30)

    claimed = store.update_message(message.id, QUEUED, status=SENDING, attempts=1, updated_at=later)
    assert (claimed.status, claimed.attempts, claimed.updated_at) == (SENDING, 1, later)
    # A second claimer expecting "queued" loses and changes nothing.
    assert store.update_message(message.id, QUEUED, status=SENDING, attempts=2) is None
    assert store.get_message(message.id) == claimed

    sid = "SM" + "a" * 32
    sent = store.update_message(message.id, (SENDING, QUEUED), status=SENT, twilio_sid=sid)
    assert (sent.status, sent.twilio_sid) == (SENT, sid)
    assert store.get_message_by_sid(sid).id == message.id

    assert store.update_message(message.id, (QUEUED, SENDING), status=FAILED) is None
    # Writing the value already stored still counts as a match.
    assert store.update_message(message.id, SENT, status=SENT).status == SENT
    delivered = store.update_message(message.id, status=DELIVERED)  # unconditional
    assert delivered.status == DELIVERED
    failed = store.update_message(message.id, DELIVERED, error_code=30003, error_message="x")
    assert (failed.status, failed.error_code, failed.error_message) == (DELIVERED, 30003, "x")
    assert store.update_message("msg_missing", status=SENT) is None
    assert store.update_message("msg_missing", QUEUED, status=SENT) is None


def test_stuck_messages(store: Store) -> None:
    cutoff = T0 + timedelta(minutes=10)
    old_sending = store.add_message(a_message(status=SENDING, updated_at=T0 + timedelta(minutes=1)))
    old_queued = store.add_message(a_message(status=QUEUED, updated_at=T0))
    store.add_message(a_message(status=SENT, updated_at=T0))
    store.add_message(a_message(status=QUEUED, updated_at=cutoff))  # not before the cutoff
    store.add_message(a_message(direction=INBOUND, status=QUEUED, updated_at=T0))

    assert [m.id for m in store.stuck_messages(cutoff)] == [old_queued.id, old_sending.id]
    assert [m.id for m in store.stuck_messages(cutoff, limit=1)] == [old_queued.id]
    assert store.stuck_messages(T0) == []


def test_scheduled_messages_due_and_listed(store: Store) -> None:
    at = T0 + timedelta(hours=1)
    later = store.add_message(a_message(status=SCHEDULED, send_at=at + timedelta(minutes=5)))
    due = store.add_message(a_message(status=SCHEDULED, send_at=at))
    early = store.add_message(a_message(status=SCHEDULED, send_at=at - timedelta(minutes=5)))
    store.add_message(a_message(status=CANCELED, send_at=at - timedelta(minutes=9)))
    store.add_message(a_message(status=QUEUED, send_at=at - timedelta(minutes=9)))  # released
    store.add_message(a_message(status=SCHEDULED, environment="sandbox", send_at=at))
    other = store.add_message(a_message(status=SCHEDULED, project_id="prj_b", send_at=at))
    assert store.get_message(due.id).send_at == at  # round trip, aware UTC
    assert store.add_message(a_message()).send_at is None

    found = store.due_scheduled_messages(at)
    assert [m.id for m in found if m.project_id == "prj_a" and m.environment == "live"] == [
        early.id,
        due.id,
    ]
    assert {m.id for m in found} >= {other.id}
    assert len(store.due_scheduled_messages(at, limit=1)) == 1
    assert store.due_scheduled_messages(at - timedelta(minutes=6)) == []
    listed = store.list_scheduled_messages("prj_a", "live")
    assert [m.id for m in listed] == [early.id, due.id, later.id]
    assert [m.id for m in store.list_scheduled_messages("prj_a", "live", limit=2)] == [
        early.id,
        due.id,
    ]
    # Released (a compare-and-set on scheduled), it is neither due nor listed any more.
    assert store.update_message(due.id, SCHEDULED, status=QUEUED) is not None
    assert store.update_message(due.id, SCHEDULED, status=CANCELED) is None
    assert [m.id for m in store.list_scheduled_messages("prj_a", "live")] == [early.id, later.id]
    assert store.list_scheduled_messages("prj_a", "pre-release") == []


def test_status_events_are_recorded_once_per_sid_and_status(store: Store) -> None:
    sid, other = "SM" + "b" * 32, "SM" + "c" * 32
    delivered = StatusEvent(sid, DELIVERED, T0 + timedelta(seconds=5))
    sent = StatusEvent(sid, SENT, T0 + timedelta(seconds=1))
    assert store.add_status_event(delivered) is True  # out of order, as Twilio may send them
    assert store.add_status_event(sent) is True
    assert store.add_status_event(StatusEvent(sid, SENT, T0 + timedelta(seconds=9))) is False
    assert store.add_status_event(StatusEvent(other, SENT, T0, error_code=30007)) is True
    assert store.list_status_events(sid) == [sent, delivered]
    assert store.list_status_events(other) == [StatusEvent(other, SENT, T0, error_code=30007)]
    assert store.list_status_events("SM_missing") == []


def test_claim_inbound_once(store: Store) -> None:
    sid = "SM" + "d" * 32
    assert store.claim_inbound(sid, T0) is True
    assert store.claim_inbound(sid, T0 + timedelta(seconds=1)) is False
    assert store.claim_inbound(sid.lower(), T0) is True
    assert store.claim_inbound("SM" + "e" * 32, T0) is True


def test_claim_inbound_with_context_claims_once_and_reads_the_context(store: Store) -> None:
    sid = "SM" + "c" * 32
    opened = store.create_session(a_session(agent_number=AGENT))
    store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0)
    first = store.claim_inbound_with_context(sid, T0, "prj_a", USER, AGENT)
    assert first == (True, opened, None, True)
    assert first[1:] == store.inbound_context("prj_a", USER, AGENT)
    # Claimed already, by either method: nothing read.
    assert store.claim_inbound_with_context(sid, T0, "prj_a", USER, AGENT) == (
        False,
        None,
        None,
        False,
    )
    assert store.claim_inbound(sid, T0) is False
    other = "SM" + "d" * 32
    assert store.claim_inbound(other, T0) is True
    assert store.claim_inbound_with_context(other, T0, "prj_a", USER, AGENT)[0] is False
    # Inside a caller's transaction too.
    third = "SM" + "f" * 32
    claimed = store.atomic(
        lambda: store.claim_inbound_with_context(third, T0, "prj_a", USER, OTHER_AGENT)
    )
    assert claimed == (True, None, None, False)


# -- the send job's two calls ---------------------------------------------------------------------
def test_claim_send_moves_queued_to_sending_and_reads_what_the_send_needs(store: Store) -> None:
    project_id = a_project(store)
    store.add_sender(a_sender(project_id, AGENT, country="US", registration="registered"))
    message = store.add_message(a_message(project_id=project_id, attempts=1))
    at = T0 + timedelta(seconds=5)

    claim = store.claim_send(message.id, at)

    assert claim is not None
    assert claim.message == replace(message, status=SENDING, attempts=2, updated_at=at)
    assert store.get_message(message.id) == claim.message
    assert claim.opted_out is False
    assert claim.project == store.get_project(project_id)
    assert claim.sender == store.get_sender(AGENT)
    # Of two claims, one wins; a message that is not queued (or absent) is nobody's to send.
    assert store.claim_send(message.id, at) is None
    assert store.claim_send("msg_missing", at) is None
    assert store.get_message(message.id).attempts == 2


def test_claim_send_reads_the_opt_out_of_the_messages_own_sender(store: Store) -> None:
    service = "MG" + "a" * 32
    store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0)
    opted_out = store.add_message(a_message())
    other_number = store.add_message(a_message(from_=OTHER_AGENT))
    through_service = store.add_message(a_message(from_=None, messaging_service_sid=service))
    store.set_opt_out("prj_a", USER, service, True, "STOP", T0)

    first = store.claim_send(opted_out.id, T0)
    second = store.claim_send(other_number.id, T0)
    third = store.claim_send(through_service.id, T0)

    assert first is not None and first.opted_out is True
    assert second is not None and second.opted_out is False
    assert third is not None and third.opted_out is True
    # Neither the project ("prj_a" was never created) nor the senders exist: None, not an error.
    assert (first.project, first.sender, third.sender) == (None, None, None)


def test_claim_send_reads_the_opt_out_of_the_senders_messaging_service(store: Store) -> None:
    project_id = a_project(store)
    service = "MG" + "b" * 32
    store.add_sender(a_sender(project_id, service, kind="messaging_service"))
    store.add_sender(a_sender(project_id, AGENT, messaging_service_sid=service))
    store.add_sender(a_sender(project_id, OTHER_AGENT))
    # The member's own row, opted back in, must not hide its service's opt-out.
    store.set_opt_out(project_id, USER, AGENT, True, "STOP", T0)
    store.set_opt_out(project_id, USER, AGENT, False, "START", T0)
    store.set_opt_out(project_id, USER, service, True, "STOP", T0)
    member = store.add_message(a_message(project_id=project_id))
    outside = store.add_message(a_message(project_id=project_id, from_=OTHER_AGENT))
    other_user = store.add_message(a_message(project_id=project_id, to="+14155550124"))

    claims = [store.claim_send(m.id, T0) for m in (member, outside, other_user)]

    assert [c.opted_out for c in claims] == [True, False, False]
    assert claims[0].sender == store.get_sender(AGENT)
    assert claims[0].sender.messaging_service_sid == service


def test_claim_send_race_has_one_winner(store: Store) -> None:
    message = store.add_message(a_message())
    results = run_in_threads(store, lambda i: store.claim_send(message.id, T0))
    assert not [r for r in results if isinstance(r, BaseException)]
    assert len([r for r in results if r is not None]) == 1
    assert store.get_message(message.id).attempts == 1


def test_record_sent_records_counts_and_returns_callbacks_that_raced_ahead(store: Store) -> None:
    day = T0.date()
    message = store.add_message(
        a_message(status=SENDING, error_code=20429, error_message="Too Many Requests")
    )
    quiet = store.add_message(a_message(status=SENDING))
    store.add_status_event(StatusEvent("SM1", DELIVERED, T0))
    at = T0 + timedelta(seconds=1)

    sent, raced = store.record_sent(message.id, "SM1", at)
    quiet_sent, quiet_raced = store.record_sent(quiet.id, "SM2", at)

    expected = replace(
        message, status=SENT, twilio_sid="SM1", error_code=None, error_message=None, updated_at=at
    )
    assert sent == expected == store.get_message(message.id)
    assert [(e.twilio_sid, e.status) for e in raced] == [("SM1", DELIVERED)]
    assert quiet_sent is not None and quiet_raced == []
    assert store.get_metrics("prj_a", "live", day, day) == {day: {"sent": 2}}
    # Only a `sending` message is recorded: nothing changes, nothing is counted.
    assert store.record_sent(message.id, "SM3", at) == (None, [])
    assert store.record_sent("msg_missing", "SM4", at) == (None, [])
    assert store.get_message(message.id).twilio_sid == "SM1"
    assert store.get_metrics("prj_a", "live", day, day) == {day: {"sent": 2}}
