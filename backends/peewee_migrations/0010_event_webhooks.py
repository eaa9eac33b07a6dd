"""Webhooks for the project's own systems: the tables ``<prefix>webhook_subscription`` and
``<prefix>webhook_delivery`` (the log of every attempt), and ``webhook_events`` on
``<prefix>project`` (the event types its subscriptions listen to).

The column is nullable and null on every existing row: no project had a subscription before.
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix


def models(db: pw.Database) -> list[type[pw.Model]]:
    """The tables of this script, named with the store's table prefix."""
    prefix = table_prefix()
    c = frozen.Columns(db)
    Base = frozen.base_model(db)

    class WebhookSubscription(Base):
        id = c.key(primary_key=True)
        project_id = c.key()
        url = pw.TextField()
        events = c.json()
        secret_encrypted = pw.TextField()
        created_at = c.datetime()

        class Meta:
            table_name = prefix + "webhook_subscription"

    class WebhookDelivery(Base):
        seq = pw.BigAutoField()
        id = c.key(unique=True)
        project_id = c.key()
        subscription_id = c.key()
        event_type = c.key(64)
        webhook_id = c.key()
        attempt = pw.IntegerField()
        status_code = pw.IntegerField(null=True)
        error = pw.TextField(null=True)
        created_at = c.datetime()

        class Meta:
            table_name = prefix + "webhook_delivery"

    WebhookSubscription.add_index(WebhookSubscription.project_id, name=prefix + "webhook_project")
    WebhookDelivery.add_index(
        WebhookDelivery.subscription_id,
        WebhookDelivery.seq,
        name=prefix + "webhook_delivery_log",
    )
    return [WebhookSubscription, WebhookDelivery]


def _project(db: pw.Database) -> type[pw.Model]:
    Base = frozen.base_model(db)

    class Project(Base):
        webhook_events = pw.TextField(null=True)

        class Meta:
            table_name = table_prefix() + "project"
            primary_key = False

    return Project


def up(migrator, db: pw.Database) -> None:
    """Create the tables and their indexes, then add the column."""
    db.create_tables(models(db), safe=False)
    project = _project(db)
    migrator.migrate(
        migrator.add_column(project._meta.table_name, "webhook_events", project.webhook_events)
    )


def down(migrator, db: pw.Database) -> None:
    """Drop the column and the tables, and every subscription and delivery kept."""
    migrator.migrate(migrator.drop_column(table_prefix() + "project", "webhook_events"))
    db.drop_tables(models(db), safe=False)
