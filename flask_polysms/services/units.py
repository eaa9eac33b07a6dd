"""Units of work: the Store writes of one request or job in one transaction, its jobs after it.

A request that opens a session and queues its greeting writes several rows and enqueues a few
jobs. Done one by one, that is one commit per row and one Redis round trip per job, and a job may
start before the rows it reads are committed. :func:`unit_of_work` commits the rows once and hands
the jobs to the scheduler together, after the commit; when the transaction fails, no job leaves.
The signals it emits (:mod:`.events`) are sent after the commit too, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from . import events

if TYPE_CHECKING:
    from .state import PolySMSState

T = TypeVar("T")


def unit_of_work(state: PolySMSState, work: Callable[[], T]) -> T:
    """Run ``work()`` in one Store transaction; the jobs it enqueues go out after the commit, and
    the signals it emits are sent after the commit (before the jobs leave).

    The Store may run ``work`` again (a deadlock victim is rolled back whole): the jobs and
    signals of a failed try are dropped before the next one. Nested units join the outermost one.
    """
    with state.scheduler.holding() as held, events.holding() as emitted:
        mark, emitted_mark = len(held), len(emitted)

        def attempt() -> T:
            del held[mark:]
            del emitted[emitted_mark:]
            return work()

        return state.store.atomic(attempt)
