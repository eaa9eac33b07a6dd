"""One conversation's agent turns: one at a time, in arrival order, across worker processes.

A turn job first claims the session's turn in the Store, a claim with an expiry
(``POLYSMS_STUCK_AFTER``, when the sweep also gives a dead turn's message back), so a crashed
worker's claim is taken over once it runs out. Holding it, the job answers the session's waiting
messages oldest first until none is left, reading the session afresh for each turn: a turn sees
the ``conv.state`` the previous one saved. A job that finds the turn claimed leaves its message
waiting for the holder, which looks again after letting the claim go, so a message whose job met
the claim just before it was released is answered too.

With ``POLYSMS_MERGE_WINDOW``, user messages arriving within the window of each other go to the
agent as one turn, texts joined with a newline. Each such message's job is scheduled the window
after it arrived: a group whose newest message is younger than that waits for that message's job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..clock import utcnow
from ..records import HANDLED, PROCESSING, RECEIVED, Message, new_id

if TYPE_CHECKING:
    from .state import PolySMSState

#: Messages read per look at a session's waiting messages (a merged turn takes at most these).
WAITING_PAGE = 100


def run_turns(state: PolySMSState, session_id: str, answer: Callable[[Message], bool]) -> bool:
    """Answer the session's waiting messages with ``answer(message) -> bool`` (one call per turn,
    a merged turn as one message whose text joins theirs), holding the session's turn; True when
    a turn was answered. Returns at once, answering nothing, when another job holds the turn."""
    store = state.store
    owner = new_id("turn_")
    answered = False
    while True:
        if not _claim(state, session_id, owner):
            return answered
        try:
            while (group := next_turn(state, session_id)) is not None:
                answered = _take_turn(state, group, answer) or answered
                # The claim is renewed for the next turn; lost (a turn outlived it and another
                # job took over), the other job goes on with the waiting messages.
                if not _claim(state, session_id, owner):
                    return answered
        finally:
            store.release_turn(session_id, owner)
        if next_turn(state, session_id) is None:
            return answered


def _claim(state: PolySMSState, session_id: str, owner: str) -> bool:
    now = utcnow()
    return state.store.claim_turn(session_id, owner, now, now + state.settings.stuck_after)


def next_turn(state: PolySMSState, session_id: str) -> list[Message] | None:
    """The waiting messages the session's next turn answers, oldest first; None when no message
    waits, or when the merge window of the newest one in the group is still open (more may
    join: that message's own job comes when it closes)."""
    waiting = state.store.waiting_turn_messages(session_id, limit=WAITING_PAGE)
    if not waiting:
        return None
    window = state.settings.merge_window
    if not window:
        return waiting[:1]
    group = [waiting[0]]
    for message in waiting[1:]:
        if message.created_at - group[-1].created_at > window:
            return group  # the next message starts a turn of its own: this group is complete
        group.append(message)
    if utcnow() < group[-1].created_at + window:
        return None
    return group


def _take_turn(
    state: PolySMSState, group: list[Message], answer: Callable[[Message], bool]
) -> bool:
    """Claim the group's messages (``received`` -> ``processing``), answer them as one turn and
    mark them ``handled``; False when none could be claimed (the sweep took one back)."""
    store = state.store
    claimed = [
        m
        for m in group
        if store.update_message(
            m.id, expected_status=RECEIVED, status=PROCESSING, updated_at=utcnow()
        )
        is not None
    ]
    if not claimed:
        return False
    turn = claimed[0]
    if len(claimed) > 1:
        turn = dataclasses.replace(
            claimed[-1],
            body="\n".join(m.body for m in claimed),
            media=[item for m in claimed for item in m.media],
        )
    try:
        return answer(turn)
    finally:
        for m in claimed:
            store.update_message(
                m.id, expected_status=PROCESSING, status=HANDLED, updated_at=utcnow()
            )
