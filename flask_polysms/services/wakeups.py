"""The shared wake-up jobs of session timers: one per second of wake-up time."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .state import PolySMSState


def schedule_wake(state: PolySMSState, when: datetime) -> None:
    """Schedule the wake-up job of the second ``when`` falls in (or the next whole one).

    The slot is the next whole second: its job wakes every session due by then. Its id names
    the second, so the same slot scheduled twice (two sessions, two processes) is one job (RQ
    replaces by id), and a slot scheduled from inside a running wake-up is always a later one.
    """
    slot = math.ceil(when.timestamp())
    at = datetime.fromtimestamp(slot, timezone.utc)
    state.scheduler.enqueue_at(at, "wake", job_id=f"wake-{slot}")
