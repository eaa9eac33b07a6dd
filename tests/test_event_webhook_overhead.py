"""What event forwarding to the project's webhooks costs in SQL statements (SQLite store): a
project without subscriptions runs no statement more on an inbound webhook, a status callback or
the outbound API, and timers closing many conversations read the project once."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from dashboard_webhooks_support import (
    AGENT,
    ALL_EVENTS,
    START,
    receiver_fixture,  # noqa: F401
    subscribe,
)
from freezegun import freeze_time

from flask_polysms.services.state import get_state


# -- what a project without subscriptions pays -----------------------------------------------------
class Statements:
    """The SQL a Peewee store runs inside the block (its query hook)."""

    def __init__(self, sms) -> None:
        self.database = get_state(sms.app).store.database
        self.sql: list[str] = []

    def __enter__(self) -> Statements:
        self.database.query_hooks = [lambda event: self.sql.append(event.sql)]
        return self

    def __exit__(self, *exc) -> None:
        self.database.query_hooks = []


def test_a_project_without_subscriptions_runs_no_statement_more(make_sms, tmp_path, receiver):
    """The inbound webhook, a status callback and the outbound API run the same statements as
    with no event forwarding at all: whether the project has subscriptions is read from the
    project record those requests read anyway. Another project's subscription changes nothing."""
    sms = make_sms(
        agent=lambda conv, text: None,
        numbers=(AGENT,),
        POLYSMS_STORAGE_URL=f"sqlite:///{tmp_path / 'polysms.db'}",
    )
    other = sms.provision(numbers=("+14155552679",))
    subscribe(sms, receiver.url, ALL_EVENTS, tenant=other)
    state = get_state(sms.app)
    forwarder = state.event_forwarder

    def traffic(n: int) -> list[str]:
        with Statements(sms) as statements:
            sms.inbound_ok(f"+1415555{n:04d}", "hello")  # a new conversation
            sms.inbound_ok(f"+1415555{n:04d}", "again")  # an open one
            sms.send_ok(f"+1415556{n:04d}")
            assert sms.status_callback(sms.outbox[-1]["sid"], "delivered").status_code == 200
        # Savepoint names are random: compared as statements, not names.
        return [re.sub(r'"s[0-9a-f]{32}"', '"savepoint"', sql) for sql in statements.sql]

    with_forwarding = traffic(1)
    state.event_forwarder = None
    try:
        without = traffic(2)
    finally:
        state.event_forwarder = forwarder
    assert len(with_forwarding) == len(without)
    assert with_forwarding == without
    assert receiver.requests == []


def test_timers_closing_many_conversations_read_the_project_once(make_sms, tmp_path):
    """Outside a request that read the project, whether it has subscriptions is read once per
    transaction, not once per event: closing several conversations at once costs one read."""
    sms = make_sms(
        agent=lambda conv, text: None,
        numbers=(AGENT,),
        POLYSMS_STORAGE_URL=f"sqlite:///{tmp_path / 'polysms.db'}",
    )
    state = get_state(sms.app)
    forwarder = state.event_forwarder

    def close_five(start: datetime) -> list[str]:
        with freeze_time(start) as clock:
            for n in range(5):
                sms.send_ok(f"+1415557{start.hour:02d}{n:02d}")
            clock.tick(timedelta(hours=25))
            with Statements(sms) as statements:
                sms.run_due_timers()
        return [re.sub(r'"s[0-9a-f]{32}"', '"savepoint"', sql) for sql in statements.sql]

    with_forwarding = close_five(START)
    state.event_forwarder = None
    try:
        without = close_five(START + timedelta(days=2))
    finally:
        state.event_forwarder = forwarder
    closed = [c for c in sms.conversations() if c["state"] == "closed"]
    assert len(closed) == 10
    project_reads = [sql for sql in with_forwarding if sql not in without]
    assert len(with_forwarding) == len(without) + 1
    assert len(project_reads) == 1 and '"polysms_project"' in project_reads[0]
