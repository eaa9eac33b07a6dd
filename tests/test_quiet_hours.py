"""Quiet hours in the recipient's local time: the end of a hold, across daylight-saving changes
and numbers with several time zones; greetings of the outbound API held to that end (scheduled
ones too) on every backend, replies never."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from freezegun import freeze_time
from signal_recorder import Recorder
from store_backends import BACKENDS, storage_url

from flask_polysms.services.quiet_hours import held_until, parse_clock, zones_of

NIGHT = {"start": "21:00", "end": "08:00"}
LUNCH = {"start": "12:00", "end": "13:30"}
NEW_YORK = "+12125552671"
SAN_FRANCISCO = "+14155552671"
PERTH_OR_ADELAIDE = "+61891234567"  # phonenumbers: Australia/Adelaide and Australia/Perth
TOLL_FREE = "+18005550100"  # from Guam to Pago Pago: no hour is outside every zone's night
UNKNOWN_ZONE = "+15555550100"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        # 2026-03-08 01:00 EST; the clocks go forward at 02:00: 08:00 EDT is 12:00 UTC, not 13:00.
        (utc(2026, 3, 8, 6, 0), utc(2026, 3, 8, 12, 0)),
        # 2026-03-07 22:00 EST, the evening before the change: the same morning.
        (utc(2026, 3, 8, 3, 0), utc(2026, 3, 8, 12, 0)),
        # 2026-11-01 01:00 EST, just after the clocks went back: 08:00 EST is 13:00 UTC.
        (utc(2026, 11, 1, 6, 0), utc(2026, 11, 1, 13, 0)),
        # 2026-10-31 23:00 EDT, the evening before: 08:00 the next morning is EST by then.
        (utc(2026, 11, 1, 3, 0), utc(2026, 11, 1, 13, 0)),
        # 10:00 in New York: not quiet.
        (utc(2026, 11, 1, 15, 0), None),
        # 21:00 sharp is quiet, 08:00 sharp is not.
        (utc(2026, 7, 1, 1, 0), utc(2026, 7, 1, 12, 0)),
        (utc(2026, 7, 1, 12, 0), None),
    ],
)
def test_a_night_window_ends_at_the_local_hour_across_daylight_saving_changes(at, expected):
    assert held_until(NEW_YORK, at, NIGHT) == expected


def test_the_recipients_zone_decides_not_the_servers():
    at = utc(2026, 7, 1, 2, 0)  # 22:00 in New York, 19:00 in San Francisco
    assert held_until(NEW_YORK, at, NIGHT) == utc(2026, 7, 1, 12, 0)
    assert held_until(SAN_FRANCISCO, at, NIGHT) is None


def test_a_window_within_one_day():
    assert held_until(NEW_YORK, utc(2026, 7, 1, 16, 30), LUNCH) == utc(2026, 7, 1, 17, 30)
    assert held_until(NEW_YORK, utc(2026, 7, 1, 17, 30), LUNCH) is None
    assert held_until(NEW_YORK, utc(2026, 7, 1, 3, 0), LUNCH) is None


def test_several_zones_wait_until_quiet_hours_have_ended_in_all_of_them():
    assert {z.key for z in zones_of(PERTH_OR_ADELAIDE)} == {"Australia/Adelaide", "Australia/Perth"}
    # 22:30 in Adelaide (quiet), 20:00 in Perth (not yet): Adelaide's night ends at 21:30 UTC,
    # when it is 05:30 in Perth, whose night ends at 08:00 Perth (00:00 UTC).
    held = held_until(PERTH_OR_ADELAIDE, utc(2026, 11, 1, 12, 0), NIGHT)
    assert held == utc(2026, 11, 2, 0, 0)
    for zone in zones_of(PERTH_OR_ADELAIDE):
        assert held_until(PERTH_OR_ADELAIDE, held, NIGHT) is None, zone


def test_a_number_whose_zones_span_the_day_is_held_past_the_night_it_was_sent_in():
    at = utc(2026, 11, 1, 15, 0)
    held = held_until(TOLL_FREE, at, NIGHT)
    assert held is not None and held > at
    assert held - at < (utc(2026, 11, 3) - utc(2026, 11, 1))  # bounded: no endless hold


def test_nothing_is_held_without_quiet_hours_an_empty_window_or_a_known_zone():
    at = utc(2026, 7, 1, 3, 0)  # 23:00 in New York
    assert held_until(NEW_YORK, at, None) is None
    assert held_until(NEW_YORK, at, {"start": "21:00", "end": "21:00"}) is None
    assert zones_of(UNKNOWN_ZONE) == ()
    assert held_until(UNKNOWN_ZONE, at, NIGHT) is None


@pytest.mark.parametrize("text", ["9:00", "24:00", "12:60", "ab:cd", "12-00", "", None, "12:000"])
def test_clock_times_are_hh_mm(text):
    with pytest.raises(ValueError):
        parse_clock(text)


# -- through the outbound API, on every backend ----------------------------------------------------
AGENT = "+14155552671"
USER = SAN_FRANCISCO  # America/Los_Angeles: DST from 2026-03-08 10:00 UTC to 2026-11-01 09:00 UTC


@pytest.fixture(params=BACKENDS)
def backend_url(request, tmp_path) -> str:
    return storage_url(request, request.param, tmp_path)


@pytest.fixture
def sms(make_sms, backend_url):
    harness = make_sms(agent=lambda conv, text: f"agent: {text}", numbers=(AGENT,),
                       POLYSMS_STORAGE_URL=backend_url)  # fmt: skip
    yield harness
    harness.store.disconnect()


def set_quiet_hours(sms, hours) -> None:
    response = sms.client.patch(
        "/v1/project", json={"quiet_hours": hours}, headers=sms.tenant.headers
    )
    assert response.status_code == 200, response.get_json()


def greeting(sms, accepted: dict) -> dict:
    return sms.conversation(accepted["conversation_id"])["messages"][0]


def test_a_greeting_in_quiet_hours_waits_for_their_local_end_across_the_spring_change(sms):
    set_quiet_hours(sms, NIGHT)
    with freeze_time(utc(2026, 3, 8, 9, 30)) as clock:  # 01:30 PST, before clocks go forward
        accepted = sms.send_ok(USER, "Your table is ready")
        assert accepted["status"] == "scheduled"
        assert sms.conversation(accepted["conversation_id"])["state"] == "scheduled"
        # 08:00 in San Francisco that day is PDT: 15:00 UTC, not 16:00.
        assert greeting(sms, accepted)["send_at"] == utc(2026, 3, 8, 15, 0).isoformat()
        clock.move_to(utc(2026, 3, 8, 14, 59))
        sms.run_due_timers()
        assert sms.outbox == []
        clock.move_to(utc(2026, 3, 8, 15, 0, 1))
        sms.run_due_timers()
        assert [m["to"] for m in sms.outbox] == [USER]
        assert greeting(sms, accepted)["status"] == "sent"


def test_a_scheduled_send_that_falls_in_quiet_hours_moves_to_their_end_across_the_fall_change(
    sms,
):
    set_quiet_hours(sms, NIGHT)
    with freeze_time(utc(2026, 10, 31, 18, 0)):
        # 2026-11-01 09:30 UTC is 01:30 PST, half an hour after the clocks went back.
        accepted = sms.send_ok(USER, "Reminder", send_at=utc(2026, 11, 1, 9, 30).isoformat())
        assert greeting(sms, accepted)["send_at"] == utc(2026, 11, 1, 16, 0).isoformat()


def test_outside_quiet_hours_or_without_them_nothing_waits(sms):
    with freeze_time(utc(2026, 7, 1, 6, 0)):  # 23:00 PDT
        assert sms.send_ok(USER, "No quiet hours set")["status"] != "scheduled"
        set_quiet_hours(sms, NIGHT)
        assert sms.send_ok("+14155552675", "At night")["status"] == "scheduled"
        set_quiet_hours(sms, None)
        assert sms.send_ok("+14155552676", "Off again")["status"] != "scheduled"
    set_quiet_hours(sms, NIGHT)
    with freeze_time(utc(2026, 7, 1, 20, 0)):  # 13:00 PDT
        assert sms.send_ok("+14155552677", "Midday")["status"] != "scheduled"


def test_replies_in_a_conversation_the_user_engaged_in_are_never_held(sms):
    set_quiet_hours(sms, NIGHT)
    with freeze_time(utc(2026, 7, 1, 6, 0)):  # 23:00 PDT
        sms.inbound_ok(USER, "are you open tomorrow?")
        assert [m["body"] for m in sms.outbox] == ["agent: are you open tomorrow?"]


def test_a_held_greeting_opens_its_conversation_once_when_accepted(sms):
    set_quiet_hours(sms, NIGHT)
    recorder = Recorder(sms.app)
    try:
        with freeze_time(utc(2026, 7, 1, 6, 0)) as clock:  # 23:00 PDT: held until 08:00 PDT
            accepted = sms.send_ok(USER, "Your table is ready")
            (opened,) = recorder.kwargs("conversation_opened")
            assert (opened["conversation"]["id"], opened["conversation"]["state"]) == (
                accepted["conversation_id"],
                "scheduled",
            )
            assert recorder.counts() == {"conversation_opened": 1}
            recorder.clear()
            clock.move_to(utc(2026, 7, 1, 15, 0, 1))
            sms.run_due_timers()
        (sent,) = recorder.kwargs("message_status_changed")
        assert sent["message"]["status"] == "sent"
        assert recorder.counts() == {"message_status_changed": 1}  # going out opens nothing
    finally:
        recorder.disconnect()
