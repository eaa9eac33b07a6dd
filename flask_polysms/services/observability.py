"""What the Prometheus endpoint reports, in one ``CollectorRegistry`` per app.

Read at scrape time, the same from every process (sends happen in workers, which serve no
HTTP, so per-process counters in the web process would never see them):

- ``polysms_sends_total{outcome}``: messages sent (Twilio accepted them), suppressed (opted
  out) and failed (``api_failures``), from the Store's daily counters summed over every day,
  project and environment.
- ``polysms_send_retries_total{cause}``: attempts that will be tried again, after a Twilio
  error (429, 5xx, connection lost: ``error``) or no answer in time (``timeout``).
- ``polysms_deliveries_total{status}``: Twilio's final delivery callbacks.
- ``polysms_queue_depth{queue}``: jobs waiting in each lane's RQ queue (``rq`` scheduler only).
- ``polysms_oldest_unsent_message_age_seconds``: how long the oldest outbound message still
  ``queued`` or ``sending`` has waited (0 when none waits).
- ``polysms_timers_due``: sessions whose deadline has passed and whose timer has not fired.

Kept in the process that serves the webhooks:

- ``polysms_webhook_duration_seconds{webhook}``: time spent in our two Twilio webhooks
  (``inbound``, ``status``), a histogram.

No label holds a phone number, a body or a tenant's id. A source that cannot be read (the
database or Redis down) leaves its figures out of that scrape and logs a warning.

Imported only when ``POLYSMS_METRICS_ENDPOINT`` is set: ``prometheus_client`` is the
``metrics`` extra.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..clock import utcnow

if TYPE_CHECKING:
    from .state import PolySMSState

log = logging.getLogger("flask_polysms.observability")

#: ``outcome`` label -> the Store's daily counter.
SEND_OUTCOMES = {"sent": "sent", "suppressed": "suppressed", "failed": "api_failures"}
#: ``cause`` label -> the Store's daily counter (kept by the send job).
RETRY_CAUSES = {"error": "send_retries", "timeout": "send_timeouts"}
#: ``status`` label -> the Store's daily counter (kept from status callbacks).
DELIVERY_STATUSES = {"delivered": "delivered", "undelivered": "undelivered", "failed": "failed"}
#: Twilio gives a webhook 15 s; the upper buckets show how close we come.
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
#: ``webhook`` label -> the webhook view's endpoint.
WEBHOOK_ENDPOINTS = {
    "inbound": "polysms_twilio.inbound_sms",
    "status": "polysms_twilio.status_callback",
}
#: Due timers are counted up to this many (the count is a bounded query).
DUE_TIMERS_CAP = 10_000


class StoreCollector(Collector):
    """The figures read at scrape time from the Store and the scheduler's queue."""

    def __init__(self, state: PolySMSState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """Every family whose source answers now."""
        for source in (self._counters, self._waiting, self._queue):
            try:
                families = list(source())
            except NotImplementedError as exc:
                log.debug("metrics left out: %s", exc)
                continue
            except Exception as exc:  # a scrape reports what it can; the log says what failed
                log.warning("metrics left out: %s failed (%s)", source.__name__, type(exc).__name__)
                continue
            yield from families

    def _counters(self) -> Iterator[Metric]:
        names = [*SEND_OUTCOMES.values(), *RETRY_CAUSES.values(), *DELIVERY_STATUSES.values()]
        totals = self._state.store.metric_totals(sorted(set(names)))
        for name, doc, label, mapping in (
            ("polysms_sends", "Outbound messages by outcome", "outcome", SEND_OUTCOMES),
            (
                "polysms_send_retries",
                "Send attempts that will be tried again, by cause",
                "cause",
                RETRY_CAUSES,
            ),
            (
                "polysms_deliveries",
                "Final delivery statuses reported by Twilio",
                "status",
                DELIVERY_STATUSES,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=[label])
            for value, counter in mapping.items():
                family.add_metric([value], totals.get(counter, 0))
            yield family

    def _waiting(self) -> Iterator[Metric]:
        store = self._state.store
        now = utcnow()
        oldest = store.oldest_unsent_at(now)
        age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "polysms_oldest_unsent_message_age_seconds",
            "Seconds the oldest outbound message still queued or sending has waited",
            value=age,
        )
        yield GaugeMetricFamily(
            "polysms_timers_due",
            f"Sessions whose deadline has passed and whose timer has not fired "
            f"(counted up to {DUE_TIMERS_CAP})",
            value=store.count_due_sessions(now, cap=DUE_TIMERS_CAP),
        )

    def _queue(self) -> Iterator[Metric]:
        queues = getattr(self._state.scheduler, "queues", None)
        if queues is None:  # only the rq scheduler has queues others can see
            return
        family = GaugeMetricFamily(
            "polysms_queue_depth", "Jobs waiting in each lane's RQ queue", labels=["queue"]
        )
        for queue in queues.values():
            family.add_metric([queue.name], queue.count)
        yield family


@dataclass(frozen=True)
class Observability:
    """One app's metrics: its registry and the webhook histogram."""

    registry: CollectorRegistry
    webhook_seconds: Histogram


def build(state: PolySMSState) -> Observability:
    """A registry of its own for one app (never prometheus_client's global one: two apps in a
    process, or the host's own metrics, must not collide), with every family above."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(state))
    webhook_seconds = Histogram(
        "polysms_webhook_duration_seconds",
        "Time spent answering Twilio's webhooks",
        ["webhook"],
        buckets=WEBHOOK_BUCKETS,
        registry=registry,
    )
    for webhook in WEBHOOK_ENDPOINTS:
        webhook_seconds.labels(webhook=webhook)  # reported from the start, at 0
    return Observability(registry=registry, webhook_seconds=webhook_seconds)
