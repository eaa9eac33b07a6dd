"""Daily counters and the totals the Prometheus endpoint reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

import peewee as pw

from flask_polysms.records import CLOSED, OUTBOUND, QUEUED, SENDING

from .statements import StatementRunner


class MetricRecords(StatementRunner):
    """The store's daily counters and operational totals."""

    # -- metrics ----------------------------------------------------------------------------------
    def incr_metric(
        self, project_id: str, environment: str, day: date, name: str, amount: int = 1
    ) -> None:
        """Add ``amount`` to a daily counter, in one upsert."""
        M = self._m.Metric

        # One upsert statement: the database adds to the stored value, no read-modify-write.
        def build(param: Callable[[int], pw.Value]) -> Any:
            return M.insert(
                project_id=param(0),
                environment=param(1),
                day=param(2),
                name=param(3),
                value=param(4),
            ).on_conflict(
                update={M.value: M.value + param(5)},
                **self._conflict_target(M.project_id, M.environment, M.day, M.name),
            )

        args = [project_id, environment, M.day.db_value(day), name, amount, amount]
        if self._db.in_transaction():
            # With the transaction's next statement, or its COMMIT: the counter row, shared by
            # every request of the project, is then locked for the shortest time.
            self._defer("incr_metric", build, args)
            return
        self._run("incr_metric", build, args)

    def get_metrics(
        self, project_id: str, environment: str, start: date, end: date
    ) -> dict[date, dict[str, int]]:
        """Counters per day for ``start`` <= day <= ``end``; days without data are absent."""
        M = self._m.Metric
        query = M.select(M.day, M.name, M.value).where(
            (M.project_id == project_id)
            & (M.environment == environment)
            & (M.day >= start)
            & (M.day <= end)
        )
        result: dict[date, dict[str, int]] = {}
        for row in query.dicts():
            result.setdefault(row["day"], {})[row["name"]] = int(row["value"])
        return result

    # -- operations: what the Prometheus endpoint reads ------------------------------------------
    def metric_totals(self, names: Sequence[str]) -> dict[str, int]:
        """Each daily counter of ``names`` summed over every project, environment and day (0 for a
        name never counted)."""
        # One grouped scan of the counter table (a row per project, environment, day and name).
        M = self._m.Metric
        totals = dict.fromkeys(names, 0)
        if not totals:
            return totals
        query = (
            M.select(M.name, pw.fn.SUM(M.value).alias("total"))
            .where(M.name.in_(list(totals)))
            .group_by(M.name)
        )
        for row in query.dicts():
            totals[row["name"]] = int(row["total"] or 0)
        return totals

    def oldest_unsent_at(self, now: datetime) -> datetime | None:
        """When the oldest outbound message still waiting to go out was recorded, or None."""
        # The waiting rows are found through the (status, updated_at) index.
        M = self._m.Message
        query = M.select(pw.fn.MIN(M.created_at).alias("oldest")).where(
            M.status.in_([QUEUED, SENDING]) & (M.direction == OUTBOUND)
        )
        oldest = query.scalar()
        return None if oldest is None else M.created_at.python_value(oldest)

    def count_due_sessions(self, now: datetime, cap: int = 10_000) -> int:
        """How many open sessions have a deadline at or before ``now`` (counting up to ``cap``)."""
        S = self._m.Session
        due = (
            S.select(S.seq)
            .where(
                # "state != closed" as two ranges, so that the (state, deadline) index serves it.
                ((S.state < CLOSED) | (S.state > CLOSED))
                & S.deadline_at.is_null(False)
                & (S.deadline_at <= now)
            )
            .limit(cap)
        )
        return due.count()
