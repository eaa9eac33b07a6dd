"""Webhook subscriptions and their delivery log, and the project's ``webhook_events`` kept with
them."""

from __future__ import annotations

from flask_polysms.ports.store import NotFound
from flask_polysms.ports.store_optional import webhook_events_of
from flask_polysms.records import WebhookDelivery, WebhookSubscription

from .statements import StatementRunner, _record, _values


class WebhookRecords(StatementRunner):
    """The store's webhook subscriptions and deliveries."""

    def add_webhook_subscription(self, subscription: WebhookSubscription) -> WebhookSubscription:
        """Record it and the project's ``webhook_events``, in one transaction holding the
        project's row (NotFound for an unknown project)."""
        W = self._m.WebhookSubscription

        def work() -> None:
            if not self._lock_project(subscription.project_id):
                raise NotFound(f"no project {subscription.project_id}")
            self._insert(W, _values(subscription))
            self._refresh_webhook_events(subscription.project_id)

        self._atomically(work)
        return self._roundtrip(W, WebhookSubscription, subscription)

    def list_webhook_subscriptions(
        self, project_id: str, event_type: str | None = None
    ) -> list[WebhookSubscription]:
        """Oldest first; filtered by event type in Python (a project has a few)."""
        W = self._m.WebhookSubscription
        query = W.select().where(W.project_id == project_id).order_by(W.created_at, W.id)
        found = [_record(WebhookSubscription, row) for row in query.dicts()]
        return [s for s in found if event_type is None or event_type in s.events]

    def get_webhook_subscription(
        self, project_id: str, subscription_id: str
    ) -> WebhookSubscription | None:
        W = self._m.WebhookSubscription
        row = self._first(
            W.select().where((W.id == subscription_id) & (W.project_id == project_id))
        )
        return _record(WebhookSubscription, row) if row else None

    def delete_webhook_subscription(self, project_id: str, subscription_id: str) -> bool:
        """Delete it and its delivery log, and set the project's ``webhook_events`` again, in
        one transaction holding the project's row."""
        W, D = self._m.WebhookSubscription, self._m.WebhookDelivery

        def work() -> bool:
            if not self._lock_project(project_id):
                return False
            mine = (W.id == subscription_id) & (W.project_id == project_id)
            if not W.delete().where(mine).execute():
                return False
            D.delete().where(D.subscription_id == subscription_id).execute()
            self._refresh_webhook_events(project_id)
            return True

        return self._atomically(work)

    def list_encrypted_webhook_secrets(self) -> list[tuple[str, str]]:
        W = self._m.WebhookSubscription
        return list(W.select(W.id, W.secret_encrypted).order_by(W.id).tuples())

    def replace_webhook_secret(self, subscription_id: str, old: str, new: str) -> bool:
        """In one conditional statement."""
        W = self._m.WebhookSubscription
        query = W.update(secret_encrypted=new).where(
            (W.id == subscription_id) & (W.secret_encrypted == old)
        )
        return self._atomically(query.execute, one_statement=True) == 1

    def add_webhook_delivery(self, delivery: WebhookDelivery) -> WebhookDelivery:
        D = self._m.WebhookDelivery
        self._atomically(lambda: self._insert(D, _values(delivery)), one_statement=True)
        return self._roundtrip(D, WebhookDelivery, delivery)

    def list_webhook_deliveries(
        self, project_id: str, subscription_id: str, limit: int = 100
    ) -> list[WebhookDelivery]:
        D = self._m.WebhookDelivery
        query = (
            D.select()
            .where((D.subscription_id == subscription_id) & (D.project_id == project_id))
            .order_by(D.seq.desc())
            .limit(limit)
        )
        return [_record(WebhookDelivery, row) for row in query.dicts()]

    def _lock_project(self, project_id: str) -> bool:
        """Hold the project's row until the transaction ends (SQLite's IMMEDIATE transaction
        holds the whole database already): changes of one project's subscriptions then run one
        after the other, and each sets ``webhook_events`` from what the one before committed."""
        P = self._m.Project
        query = P.select(P.id).where(P.id == project_id)
        if not self._is_sqlite:
            query = query.for_update()
        return self._first(query) is not None

    def _refresh_webhook_events(self, project_id: str) -> None:
        P, W = self._m.Project, self._m.WebhookSubscription
        lists = W.select(W.events).where(W.project_id == project_id).tuples()
        P.update(webhook_events=webhook_events_of(events for (events,) in lists)).where(
            P.id == project_id
        ).execute()
