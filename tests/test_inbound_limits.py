"""The inbound abuse limits counted in the real Redis: the three moving windows (same text, sender,
project) are taken in one call, in that order, and kept as the limits library keeps them.

The rules themselves (10 a minute per sender, 100 per project, the same text 5 times) are tested
in test_compliance.py on the memory storage; these tests hold them on Redis too.
"""

from __future__ import annotations

import pytest
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from redis_commands import sent_to_redis

pytestmark = pytest.mark.services

AGENT = "+14155552671"
USER = "+14155552674"
OTHER_USER = "+14155552675"


@pytest.fixture
def sms(make_sms, redis_conn, redis_url):
    return make_sms(
        agent=lambda conv, text: None,
        numbers=(AGENT,),
        POLYSMS_RATE_LIMIT_STORAGE_URL=redis_url,
        POLYSMS_INBOUND_SENDER_LIMIT="4 per minute",
        POLYSMS_DUPLICATE_TEXT_LIMIT="2 per minute",
    )


def remaining(redis_url: str, limit: str, *identifiers: str) -> int:
    """What the limits library itself reads of a window."""
    window = MovingWindowRateLimiter(storage_from_string(redis_url))
    return window.get_window_stats(parse(limit), *identifiers).remaining


def drops(sms) -> list[str]:
    sessions, _ = sms.store.list_sessions(sms.tenant.project_id)
    messages = [m for s in sessions for m in sms.store.list_messages(s.id)]
    return [m.drop_reason for m in messages if m.status == "dropped"]


def test_the_windows_are_the_libraries_own(sms, redis_url):
    project = sms.tenant.project_id
    for n in range(3):
        sms.inbound_ok(USER, f"question {n}", to=AGENT)

    assert remaining(redis_url, "4 per minute", "polysms-sender", project, USER) == 1
    assert remaining(redis_url, "100 per minute", "polysms-project", project) == 97
    sms.inbound_ok(USER, "question 3", to=AGENT)
    sms.inbound_ok(USER, "question 4", to=AGENT)
    assert drops(sms) == ["sender_rate_limited"]
    # Refused by the sender's window: the project's window did not count it.
    assert remaining(redis_url, "100 per minute", "polysms-project", project) == 96
    sms.inbound_ok(OTHER_USER, "hello", to=AGENT)
    assert drops(sms) == ["sender_rate_limited"]


def test_a_repeated_text_refused_first_is_not_counted_by_the_later_windows(sms, redis_url):
    project = sms.tenant.project_id
    for _ in range(3):
        sms.inbound_ok(USER, "WIN A PRIZE", to=AGENT)

    assert drops(sms) == ["duplicate_text"]
    assert remaining(redis_url, "4 per minute", "polysms-sender", project, USER) == 2
    assert remaining(redis_url, "100 per minute", "polysms-project", project) == 98


def test_one_redis_call_takes_the_three_windows(sms, monkeypatch):
    sms.inbound_ok(USER, "first", to=AGENT)  # the script is loaded on the first use
    with sent_to_redis(monkeypatch) as sent:
        sms.inbound_ok(USER, "second", to=AGENT)

    assert len(sent) == 1 and b"EVALSHA" in sent[0], sent
