"""Delivery metrics: daily counters kept as events happen, read back per project and environment."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from ..clock import utcnow

if TYPE_CHECKING:
    from .state import PolySMSState

COUNTERS = (
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "suppressed",
    "api_failures",
    "conversations",
    "agent_errors",
    "inbound",
    "inbound_dropped",
)


def count(state: PolySMSState, project_id: str, environment: str, name: str, n: int = 1) -> None:
    """Add ``n`` to today's (UTC) counter ``name``."""
    state.store.incr_metric(project_id, environment, utcnow().date(), name, n)


def delivery_rate(counters: dict[str, int]) -> float | None:
    """delivered / (delivered + undelivered + failed); None with nothing to divide."""
    done = counters["delivered"] + counters["undelivered"] + counters["failed"]
    return round(counters["delivered"] / done, 4) if done else None


def summarise(
    state: PolySMSState, project_id: str, environment: str, start: date, end: date
) -> dict:
    """Totals and per-day figures between two dates (inclusive)."""
    per_day = state.store.get_metrics(project_id, environment, start, end)
    totals = dict.fromkeys(COUNTERS, 0)
    by_day = []
    # Offsets from start, not day += 1: the day after 9999-12-31 does not exist.
    for offset in range((end - start).days + 1):
        day = start + timedelta(days=offset)
        counters = {name: per_day.get(day, {}).get(name, 0) for name in COUNTERS}
        for name, value in counters.items():
            totals[name] += value
        by_day.append(
            {"date": day.isoformat(), **counters, "delivery_rate": delivery_rate(counters)}
        )
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "environment": environment,
        **totals,
        "delivery_rate": delivery_rate(totals),
        "by_day": by_day,
    }
