"""The memory store's webhook subscriptions and delivery log."""

from __future__ import annotations

import copy
import threading

from flask_polysms.ports.store import NotFound
from flask_polysms.ports.store_optional import webhook_events_of
from flask_polysms.records import Project, WebhookDelivery, WebhookSubscription


class MemoryWebhooks:
    """Mixin of :class:`~flask_polysms.backends.memory.MemoryStore`: it holds ``_lock`` and
    ``_projects``; the subscriptions and deliveries live here, each change under the lock."""

    _lock: threading.RLock
    _projects: dict[str, Project]
    _webhooks: dict[str, WebhookSubscription]
    _webhook_deliveries: list[WebhookDelivery]

    def add_webhook_subscription(self, subscription: WebhookSubscription) -> WebhookSubscription:
        """Record it and the project's ``webhook_events``, under one lock."""
        with self._lock:
            project = self._projects.get(subscription.project_id)
            if project is None:
                raise NotFound(f"no project {subscription.project_id}")
            self._webhooks[subscription.id] = copy.deepcopy(subscription)
            self._refresh_webhook_events(project)
            return copy.deepcopy(subscription)

    def list_webhook_subscriptions(
        self, project_id: str, event_type: str | None = None
    ) -> list[WebhookSubscription]:
        """Oldest first (insertion order)."""
        with self._lock:
            return [
                copy.deepcopy(s)
                for s in self._webhooks.values()
                if s.project_id == project_id and (event_type is None or event_type in s.events)
            ]

    def get_webhook_subscription(
        self, project_id: str, subscription_id: str
    ) -> WebhookSubscription | None:
        with self._lock:
            found = self._webhooks.get(subscription_id)
            return copy.deepcopy(found) if found and found.project_id == project_id else None

    def delete_webhook_subscription(self, project_id: str, subscription_id: str) -> bool:
        with self._lock:
            found = self._webhooks.get(subscription_id)
            if found is None or found.project_id != project_id:
                return False
            del self._webhooks[subscription_id]
            self._webhook_deliveries = [
                d for d in self._webhook_deliveries if d.subscription_id != subscription_id
            ]
            project = self._projects.get(project_id)
            if project is not None:
                self._refresh_webhook_events(project)
            return True

    def list_encrypted_webhook_secrets(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(s.id, s.secret_encrypted) for s in self._webhooks.values()]

    def replace_webhook_secret(self, subscription_id: str, old: str, new: str) -> bool:
        with self._lock:
            found = self._webhooks.get(subscription_id)
            if found is None or found.secret_encrypted != old:
                return False
            found.secret_encrypted = new
            return True

    def add_webhook_delivery(self, delivery: WebhookDelivery) -> WebhookDelivery:
        with self._lock:
            self._webhook_deliveries.append(copy.deepcopy(delivery))
            return copy.deepcopy(delivery)

    def list_webhook_deliveries(
        self, project_id: str, subscription_id: str, limit: int = 100
    ) -> list[WebhookDelivery]:
        with self._lock:
            mine = [
                d
                for d in self._webhook_deliveries
                if d.subscription_id == subscription_id and d.project_id == project_id
            ]
            return [copy.deepcopy(d) for d in reversed(mine[-limit:])]

    def _refresh_webhook_events(self, project: Project) -> None:
        project.webhook_events = webhook_events_of(
            s.events for s in self._webhooks.values() if s.project_id == project.id
        )
