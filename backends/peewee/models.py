"""The model classes of one store: its tables, named with its prefix, and their indexes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import peewee as pw

from .fields import DayField, JSONTextField, MediumJSONTextField, UTCDateTimeField


def _build_models(database: pw.Database, prefix: str) -> SimpleNamespace:
    """Model classes bound to ``database`` only, tables named ``<prefix><name>``.

    Built per store, so two stores (two URLs, or two prefixes) never share a binding.
    """
    is_mysql = isinstance(database, pw.MySQLDatabase)
    # PostgreSQL orders text by the database's locale unless told otherwise: "C" orders by code
    # point, as Python and the memory store do. MySQL gets a binary collation per table instead.
    collation = '"C"' if isinstance(database, pw.PostgresqlDatabase) else None
    json_field = MediumJSONTextField if is_mysql else JSONTextField

    def key(length: int = 100, **kwargs: Any) -> pw.CharField:
        # Bounded strings for ids, numbers and codes: MySQL cannot index TEXT columns.
        return pw.CharField(max_length=length, collation=collation, **kwargs)

    def opt_key(length: int = 100) -> pw.CharField:
        return key(length, null=True)

    class Base(pw.Model):
        class Meta:
            database = None
            legacy_table_names = False

    Base._meta.set_database(database)

    class Account(Base):
        id = key(primary_key=True)
        name = pw.TextField()
        created_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "account"

    class ApiKey(Base):
        id = key(primary_key=True)
        account_id = key()
        key_hash = key(255)
        prefix = key(64)
        created_at = UTCDateTimeField()
        revoked_at = UTCDateTimeField(null=True)

        class Meta:
            table_name = prefix + "api_key"

    class Project(Base):
        id = key(primary_key=True)
        account_id = key()
        name = pw.TextField()
        created_at = UTCDateTimeField()
        twilio_account_sid = opt_key()
        twilio_auth_token_encrypted = pw.TextField(null=True)
        settings = json_field()
        # The event types of the project's webhook subscriptions (migration 0010).
        webhook_events = pw.TextField(null=True)

        class Meta:
            table_name = prefix + "project"

    class Sender(Base):
        id = key(primary_key=True)
        project_id = key()
        environment = key(32)
        address = key()
        created_at = UTCDateTimeField()
        kind = key(32)
        country = opt_key(8)
        number_type = opt_key(32)
        registration = key(32)
        campaign_id = pw.TextField(null=True)
        # The Messaging Service the number belongs to (migration 0005).
        messaging_service_sid = opt_key()

        class Meta:
            table_name = prefix + "sender"

    class Connector(Base):
        id = key(primary_key=True)
        project_id = key()
        environment = key(32)
        created_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "connector"

    class Session(Base):
        # The autoincrement position orders sessions newest first and carries the page cursor.
        seq = pw.BigAutoField()
        id = key(unique=True)
        project_id = key()
        environment = key(32)
        user_number = key()
        agent_number = key()
        created_at = UTCDateTimeField()
        last_activity_at = UTCDateTimeField()
        state = key(32)
        engaged = pw.BooleanField()
        closed_at = UTCDateTimeField(null=True)
        end_reason = opt_key(32)
        deadline_at = UTCDateTimeField(null=True)
        timer_kind = opt_key(32)
        wake_at = UTCDateTimeField(null=True)
        version = pw.IntegerField()
        data = json_field()
        entities = json_field()
        metadata = json_field()
        language = opt_key(32)
        # 1 while this is its triple's open session (the one inbound messages join), NULL once
        # closed or superseded: the unique index session_one_open allows one per triple.
        open_mark = pw.SmallIntegerField(null=True)
        # Who runs the session's agent turn, and until when the claim holds (a crashed worker's
        # claim runs out and is taken over).
        turn_owner = opt_key(64)
        turn_until = UTCDateTimeField(null=True)

        class Meta:
            table_name = prefix + "session"

    class Message(Base):
        seq = pw.BigAutoField()  # recording order
        id = key(unique=True)
        project_id = key()
        environment = key(32)
        session_id = opt_key()
        direction = key(16)
        kind = key(32)
        body = pw.TextField()
        to = key()
        from_number = opt_key()
        created_at = UTCDateTimeField()
        updated_at = UTCDateTimeField()
        status = key(32)
        messaging_service_sid = opt_key()
        error_code = pw.IntegerField(null=True)
        error_message = pw.TextField(null=True)
        twilio_sid = opt_key()
        segments = pw.IntegerField()
        encoding = key(16)
        attempts = pw.IntegerField()
        max_attempts = pw.IntegerField()
        template = pw.TextField(null=True)
        drop_reason = pw.TextField(null=True)
        # The last failed send attempt (migration 0003), kept after a successful retry.
        last_error_code = pw.IntegerField(null=True)
        last_error_message = pw.TextField(null=True)
        last_error_at = UTCDateTimeField(null=True)
        # Pictures (migration 0004): a JSON list; NULL on rows written before, read as [].
        media = JSONTextField(null=True)
        # When a scheduled message goes out (migration 0009); NULL unless scheduled.
        send_at = UTCDateTimeField(null=True)

        class Meta:
            table_name = prefix + "message"

    class StatusEvent(Base):
        seq = pw.BigAutoField()
        twilio_sid = key()
        status = key(32)
        received_at = UTCDateTimeField()
        error_code = pw.IntegerField(null=True)

        class Meta:
            table_name = prefix + "status_event"

    class InboundClaim(Base):
        message_sid = key(primary_key=True)  # the primary key is what makes a claim exclusive
        claimed_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "inbound_claim"

    class Template(Base):
        id = key(primary_key=True)
        project_id = key()
        title = key(255)
        body = pw.TextField()
        env_phone_numbers = json_field()
        created_at = UTCDateTimeField()
        updated_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "template"

    class OptOut(Base):
        # One row per (recipient, sender): its conditional update decides every change.
        seq = pw.BigAutoField()
        recipient = key()
        sender = key()
        project_id = key()
        opted_out = pw.BooleanField()
        updated_at = UTCDateTimeField()
        # The keyword and source of the pair's latest change (migration 0008).
        keyword = pw.TextField(null=True)
        source = opt_key(16)

        class Meta:
            table_name = prefix + "opt_out"

    class OptOutEvent(Base):
        seq = pw.BigAutoField()
        project_id = key()
        recipient = key()
        sender = key()
        action = key(16)
        keyword = pw.TextField(null=True)
        at = UTCDateTimeField()
        source = opt_key(16)  # migration 0005
        api_key_id = opt_key()  # migration 0008

        class Meta:
            table_name = prefix + "opt_out_event"

    class Metric(Base):
        seq = pw.BigAutoField()
        project_id = key()
        environment = key(32)
        day = DayField()
        name = key(64)
        value = pw.BigIntegerField()

        class Meta:
            table_name = prefix + "metric"

    class NumberBlock(Base):
        seq = pw.BigAutoField()
        project_id = key()
        number = key()
        blocked_until = UTCDateTimeField()
        reason = pw.TextField()

        class Meta:
            table_name = prefix + "number_block"

    class DashboardSignInRow(Base):
        # The SHA-256 (hex) of the browser's random secret: found by digest, never by the secret.
        id = key(64, primary_key=True)
        api_key_id = key()
        connector_id = key()
        created_at = UTCDateTimeField()
        last_seen_at = UTCDateTimeField()
        ended_at = UTCDateTimeField(null=True)
        end_reason = opt_key(32)

        class Meta:
            table_name = prefix + "dashboard_sign_in"

    class IdempotentRequestRow(Base):
        # A digest of (project, route, key): one row per key, the primary key decides races.
        id = key(64, primary_key=True)
        project_id = key()
        route = key()
        fingerprint = key(64)
        token = key(32)
        created_at = UTCDateTimeField()
        expires_at = UTCDateTimeField()
        response = json_field(null=True)

        class Meta:
            table_name = prefix + "idempotent_request"

    class WebhookSubscriptionRow(Base):
        id = key(primary_key=True)
        project_id = key()
        url = pw.TextField()
        events = json_field()
        secret_encrypted = pw.TextField()
        created_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "webhook_subscription"

    class WebhookDeliveryRow(Base):
        seq = pw.BigAutoField()  # attempt order: the log is read newest first
        id = key(unique=True)
        project_id = key()
        subscription_id = key()
        event_type = key(64)
        webhook_id = key()
        attempt = pw.IntegerField()
        status_code = pw.IntegerField(null=True)
        error = pw.TextField(null=True)
        created_at = UTCDateTimeField()

        class Meta:
            table_name = prefix + "webhook_delivery"

    def index(model: type[pw.Model], name: str, *fields: pw.Field, unique: bool = False) -> None:
        model.add_index(*fields, unique=unique, name=prefix + name)

    # One index per lookup the Store makes; the unique ones are also the race arbiters.
    index(ApiKey, "api_key_hash", ApiKey.key_hash)
    index(Project, "project_account", Project.account_id)
    index(Sender, "sender_address", Sender.address, unique=True)
    index(Sender, "sender_project", Sender.project_id, Sender.environment, Sender.created_at)
    index(Connector, "connector_project", Connector.project_id)
    # The two "newest session of ..." lookups end their index with seq: the newest row is the
    # index's last, whatever plan PostgreSQL caches for the prepared statement (a generic plan
    # otherwise walked the project's sessions along session_list: linear in the table).
    index(
        Session,
        "session_open_seq",
        Session.project_id,
        Session.user_number,
        Session.agent_number,
        Session.seq,
    )
    # Two first messages at once open one session: the second insert clashes here.
    index(
        Session,
        "session_one_open",
        Session.project_id,
        Session.user_number,
        Session.agent_number,
        Session.open_mark,
        unique=True,
    )
    index(Session, "session_due", Session.state, Session.deadline_at)
    index(Session, "session_waking", Session.state, Session.wake_at)
    index(Session, "session_list", Session.project_id, Session.seq)
    index(
        Session,
        "session_user_seq",
        Session.project_id,
        Session.environment,
        Session.user_number,
        Session.seq,
    )
    index(Message, "message_sid", Message.twilio_sid)
    index(Message, "message_session", Message.session_id, Message.seq)
    index(Message, "message_stuck", Message.status, Message.updated_at)
    index(Message, "message_send_at", Message.status, Message.send_at)
    index(StatusEvent, "status_event_pair", StatusEvent.twilio_sid, StatusEvent.status, unique=True)
    index(Template, "template_title", Template.project_id, Template.title, unique=True)
    index(OptOut, "opt_out_pair", OptOut.recipient, OptOut.sender, unique=True)
    index(OptOut, "opt_out_project", OptOut.project_id, OptOut.opted_out, OptOut.seq)
    index(
        OptOutEvent,
        "opt_out_event_pair",
        OptOutEvent.project_id,
        OptOutEvent.recipient,
        OptOutEvent.sender,
    )
    index(
        Metric,
        "metric_day",
        Metric.project_id,
        Metric.environment,
        Metric.day,
        Metric.name,
        unique=True,
    )
    index(NumberBlock, "number_block_pair", NumberBlock.project_id, NumberBlock.number, unique=True)
    index(IdempotentRequestRow, "idempotent_expiry", IdempotentRequestRow.expires_at)
    index(WebhookSubscriptionRow, "webhook_project", WebhookSubscriptionRow.project_id)
    index(
        WebhookDeliveryRow,
        "webhook_delivery_log",
        WebhookDeliveryRow.subscription_id,
        WebhookDeliveryRow.seq,
    )

    return SimpleNamespace(
        Account=Account,
        ApiKey=ApiKey,
        Project=Project,
        Sender=Sender,
        Connector=Connector,
        Session=Session,
        Message=Message,
        StatusEvent=StatusEvent,
        InboundClaim=InboundClaim,
        Template=Template,
        OptOut=OptOut,
        OptOutEvent=OptOutEvent,
        Metric=Metric,
        NumberBlock=NumberBlock,
        DashboardSignIn=DashboardSignInRow,
        IdempotentRequest=IdempotentRequestRow,
        WebhookSubscription=WebhookSubscriptionRow,
        WebhookDelivery=WebhookDeliveryRow,
        all=[
            Account,
            ApiKey,
            Project,
            Sender,
            Connector,
            Session,
            Message,
            StatusEvent,
            InboundClaim,
            Template,
            OptOut,
            OptOutEvent,
            Metric,
            NumberBlock,
            DashboardSignInRow,
            IdempotentRequestRow,
            WebhookSubscriptionRow,
            WebhookDeliveryRow,
        ],
    )
