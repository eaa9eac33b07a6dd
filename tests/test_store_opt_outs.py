"""The Store contract on opt-outs, run against every backend: opting out and in per recipient
and sender, messaging services covering their member numbers, the history of changes with their
source, and listing the current opt-outs and a recipient's events in pages.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from store_contract_support import (
    AGENT,
    OTHER_AGENT,
    T0,
    USER,
    a_project,
    a_sender,
    backend_fixture,  # noqa: F401
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
    table_prefix_fixture,  # noqa: F401
)

from flask_polysms.ports.store import Store


# -- opt-outs -------------------------------------------------------------------------------------
def test_opt_out_changes_and_history(store: Store) -> None:
    assert store.is_opted_out(USER, AGENT) is False
    # Opting in a pair that never opted out is no change.
    assert store.set_opt_out("prj_a", USER, AGENT, False, "START", T0) is False
    assert store.opt_out_history("prj_a", USER) == []

    assert store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0) is True
    assert store.set_opt_out("prj_a", USER, AGENT, True, "QUIT", T0 + timedelta(seconds=1)) is False
    assert store.is_opted_out(USER, AGENT) is True
    history = store.opt_out_history("prj_a", USER, AGENT)
    assert [(e.action, e.keyword, e.at) for e in history] == [("opt_out", "STOP", T0)]
    assert (history[0].project_id, history[0].recipient, history[0].sender) == (
        "prj_a",
        USER,
        AGENT,
    )

    later = T0 + timedelta(minutes=5)
    assert store.set_opt_out("prj_a", USER, AGENT, False, "START", later) is True
    assert store.set_opt_out("prj_a", USER, AGENT, False, "UNSTOP", later) is False
    assert store.is_opted_out(USER, AGENT) is False
    assert store.set_opt_out("prj_a", USER, AGENT, True, None, later + timedelta(seconds=1)) is True
    assert [(e.action, e.keyword) for e in store.opt_out_history("prj_a", USER, AGENT)] == [
        ("opt_out", "STOP"),
        ("opt_in", "START"),
        ("opt_out", None),
    ]


def test_an_opt_out_of_a_messaging_service_covers_its_member_numbers(store: Store) -> None:
    project = a_project(store)
    service, other_service = "MG" + "c" * 32, "MG" + "d" * 32
    store.add_sender(a_sender(project, service, kind="messaging_service"))
    store.add_sender(a_sender(project, other_service, kind="messaging_service"))
    store.add_sender(a_sender(project, AGENT, messaging_service_sid=service))
    store.add_sender(a_sender(project, OTHER_AGENT))
    assert store.get_sender(AGENT).messaging_service_sid == service

    assert store.set_opt_out(project, USER, service, True, None, T0, "carrier") is True

    assert store.is_opted_out(USER, service) and store.is_opted_out(USER, AGENT)
    assert not store.is_opted_out(USER, OTHER_AGENT)
    assert not store.is_opted_out(USER, other_service)
    assert not store.is_opted_out("+14155550124", AGENT)
    assert store.inbound_context(project, USER, AGENT)[2] is True
    assert store.inbound_context(project, USER, OTHER_AGENT)[2] is False
    [event] = store.opt_out_history(project, USER)
    assert (event.sender, event.action, event.keyword, event.source) == (
        service,
        "opt_out",
        None,
        "carrier",
    )
    # Membership decides: a number that leaves the service leaves its opt-outs; one that joins
    # another takes that service's.
    store.update_sender(AGENT, messaging_service_sid=None)
    assert not store.is_opted_out(USER, AGENT)
    assert store.inbound_context(project, USER, AGENT)[2] is False
    store.update_sender(OTHER_AGENT, messaging_service_sid=service)
    assert store.is_opted_out(USER, OTHER_AGENT)
    store.set_opt_out(project, USER, service, False, "START", T0 + timedelta(seconds=1))
    assert not store.is_opted_out(USER, OTHER_AGENT)
    assert [e.source for e in store.opt_out_history(project, USER, service)] == [
        "carrier",
        "keyword",
    ]


def test_opt_out_pairs_are_isolated(store: Store) -> None:
    assert store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0) is True
    assert store.is_opted_out(USER, OTHER_AGENT) is False
    assert store.is_opted_out("+14155550124", AGENT) is False
    assert store.set_opt_out("prj_a", USER, OTHER_AGENT, True, "END", T0) is True
    assert store.set_opt_out("prj_b", "+14155550124", "+14155550177", True, "STOP", T0) is True
    assert store.set_opt_out("prj_a", USER, OTHER_AGENT, False, "START", T0) is True
    assert store.is_opted_out(USER, AGENT) is True

    assert [(e.sender, e.action) for e in store.opt_out_history("prj_a", USER)] == [
        (AGENT, "opt_out"),
        (OTHER_AGENT, "opt_out"),
        (OTHER_AGENT, "opt_in"),
    ]
    assert [e.action for e in store.opt_out_history("prj_a", USER, OTHER_AGENT)] == [
        "opt_out",
        "opt_in",
    ]
    assert store.opt_out_history("prj_b", USER) == []
    assert len(store.opt_out_history("prj_b", "+14155550124")) == 1


def test_opt_out_changes_keep_their_source_and_api_key(store: Store) -> None:
    store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0)
    store.set_opt_out("prj_a", USER, AGENT, False, None, T0 + timedelta(seconds=1), "api", "key_1")
    store.set_opt_out(
        "prj_a", USER, AGENT, True, "twilio:21610", T0 + timedelta(seconds=2), "carrier"
    )
    store.set_opt_out("prj_a", USER, OTHER_AGENT, True, "ARRET", T0, source="import")
    history = store.opt_out_history("prj_a", USER)
    assert [(e.action, e.keyword, e.source, e.api_key_id) for e in history] == [
        ("opt_out", "STOP", "keyword", None),
        ("opt_in", None, "api", "key_1"),
        ("opt_out", "twilio:21610", "carrier", None),
        ("opt_out", "ARRET", "import", None),
    ]
    # A refused change (already in that state) records nothing, whatever its source.
    assert store.set_opt_out("prj_a", USER, AGENT, True, None, T0, "api", "key_2") is False
    assert len(store.opt_out_history("prj_a", USER)) == 4


def test_current_opt_outs_list_by_project_and_filters_in_pages(store: Store) -> None:
    users = [f"+1415555{n:04d}" for n in range(5)]
    for i, user in enumerate(users):
        store.set_opt_out("prj_a", user, AGENT, True, f"STOP{i}", T0 + timedelta(seconds=i))
    store.set_opt_out("prj_a", users[0], OTHER_AGENT, True, None, T0, "api", "key_1")
    store.set_opt_out("prj_b", users[0], "+14155550177", True, "STOP", T0)
    store.set_opt_out("prj_a", users[1], AGENT, False, "START", T0 + timedelta(minutes=1))

    everything, cursor = store.list_opt_outs("prj_a", limit=50)
    assert cursor is None
    assert [(o.recipient, o.sender, o.keyword, o.source) for o in everything] == [
        (users[0], AGENT, "STOP0", "keyword"),
        (users[2], AGENT, "STOP2", "keyword"),
        (users[3], AGENT, "STOP3", "keyword"),
        (users[4], AGENT, "STOP4", "keyword"),
        (users[0], OTHER_AGENT, None, "api"),
    ]
    assert everything[1].created_at == T0 + timedelta(seconds=2)
    assert {o.project_id for o in everything} == {"prj_a"}

    # Pages of two follow each other without gaps or repeats.
    seen, cursor = [], None
    while True:
        page, cursor = store.list_opt_outs("prj_a", cursor=cursor, limit=2)
        seen.extend(page)
        assert len(page) <= 2
        if cursor is None:
            break
    assert [(o.recipient, o.sender) for o in seen] == [(o.recipient, o.sender) for o in everything]

    by_user, _ = store.list_opt_outs("prj_a", recipient=users[0])
    assert [o.sender for o in by_user] == [AGENT, OTHER_AGENT]
    by_sender, _ = store.list_opt_outs("prj_a", sender=OTHER_AGENT)
    assert [o.recipient for o in by_sender] == [users[0]]
    pair, _ = store.list_opt_outs("prj_a", recipient=users[1], sender=AGENT)
    assert pair == []  # opted back in
    other, _ = store.list_opt_outs("prj_b")
    assert [(o.recipient, o.sender) for o in other] == [(users[0], "+14155550177")]
    every_project, _ = store.list_opt_outs(None)
    assert len(every_project) == 6

    # A pair opted out again keeps its place and shows its latest opt-out.
    store.set_opt_out("prj_a", users[1], AGENT, True, "QUIT", T0 + timedelta(minutes=2))
    again, _ = store.list_opt_outs("prj_a", recipient=users[1])
    assert [(o.keyword, o.created_at) for o in again] == [("QUIT", T0 + timedelta(minutes=2))]
    assert [o.recipient for o in store.list_opt_outs("prj_a")[0]][:2] == users[:2]

    with pytest.raises(ValueError):
        store.list_opt_outs("prj_a", cursor="not a cursor!")
    with pytest.raises(ValueError):
        store.list_opt_outs("prj_a", limit=0)
    assert store.list_opt_outs("prj_a", cursor="999999") == ([], None)


def test_opt_out_events_page_a_recipients_history(store: Store) -> None:
    for i in range(3):
        store.set_opt_out("prj_a", USER, AGENT, True, "STOP", T0 + timedelta(minutes=2 * i))
        store.set_opt_out("prj_a", USER, AGENT, False, "START", T0 + timedelta(minutes=2 * i + 1))
    store.set_opt_out("prj_a", "+14155550124", AGENT, True, "STOP", T0)
    store.set_opt_out("prj_b", USER, "+14155550177", True, "STOP", T0)

    seen, cursor = [], None
    while True:
        page, cursor = store.opt_out_events("prj_a", USER, cursor=cursor, limit=4)
        seen.extend(page)
        if cursor is None:
            break
    assert [e.action for e in seen] == ["opt_out", "opt_in"] * 3
    assert [e.at for e in seen] == [T0 + timedelta(minutes=i) for i in range(6)]
    assert all(e.id for e in seen) and len({e.id for e in seen}) == 6
    assert [e.id for e in seen] == [e.id for e in store.opt_out_history("prj_a", USER)]
    assert [e.sender for e in store.opt_out_events("prj_b", USER)[0]] == ["+14155550177"]
    assert store.opt_out_events("prj_b", "+14155550124") == ([], None)
    with pytest.raises(ValueError):
        store.opt_out_events("prj_a", USER, limit=0)
