"""Quiet hours: when a business-initiated message to a number may go out, in the recipient's
local time.

The time zones of a number come from phonenumbers (its prefix); a number may have several (a
mobile range, a toll-free number), and a held message waits until quiet hours have ended in every
one of them. Local times are computed with the zones' own rules, so a window that crosses a change
of daylight saving time ends at the local hour it names.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as number_zones

#: How many times the end of a hold is pushed on, zone after zone, before giving up on an instant
#: outside every zone's quiet hours (numbers whose zones span most of the day have none).
MAX_PUSHES = 8


def parse_clock(text: str) -> time:
    """``"HH:MM"`` (24-hour) as a time; ValueError otherwise."""
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        raise ValueError("must be HH:MM (24-hour clock)")
    hours, minutes = text[:2], text[3:]
    if not (hours.isdigit() and minutes.isdigit()):
        raise ValueError("must be HH:MM (24-hour clock)")
    if int(hours) > 23 or int(minutes) > 59:
        raise ValueError("must be HH:MM (24-hour clock)")
    return time(int(hours), int(minutes))


def zones_of(number: str) -> tuple[ZoneInfo, ...]:
    """The time zones phonenumbers knows for an E.164 number (none when it knows none)."""
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return ()
    names = number_zones.time_zones_for_number(parsed)
    return tuple(ZoneInfo(name) for name in names if name != number_zones.UNKNOWN_TIMEZONE)


def _quiet_end(at: datetime, zone: ZoneInfo, start: time, end: time) -> datetime | None:
    """When the quiet hours ``at`` falls in end in ``zone`` (UTC), or None when ``at`` is not in
    them there."""
    local = at.astimezone(zone)
    now = local.time().replace(tzinfo=None)
    if start < end:
        quiet = start <= now < end
    else:  # the window crosses midnight
        quiet = now >= start or now < end
    if not quiet:
        return None
    day = local.date() if now < end else local.date() + timedelta(days=1)
    # The local wall time in the zone's own rules: a daylight-saving change in between moves the
    # UTC instant, never the local hour.
    return datetime.combine(day, end, tzinfo=zone).astimezone(timezone.utc)


def held_until(number: str, at: datetime, quiet_hours: dict | None) -> datetime | None:
    """When a business-initiated message to ``number`` may go out if ``at`` (aware) falls in the
    project's quiet hours (``{"start": "HH:MM", "end": "HH:MM"}`` in the recipient's local
    time), or None when it may go at ``at``: no quiet hours set, a window of no length, a number
    whose time zone is unknown, or ``at`` outside the quiet hours of every zone of the number."""
    if not quiet_hours:
        return None
    start, end = parse_clock(quiet_hours["start"]), parse_clock(quiet_hours["end"])
    if start == end:
        return None
    zones = zones_of(number)
    if not zones:
        return None
    until = at.astimezone(timezone.utc)
    for _ in range(MAX_PUSHES):
        ends = [e for e in (_quiet_end(until, z, start, end) for z in zones) if e is not None]
        if not ends:
            break
        until = max(ends)
    return None if until <= at else until
