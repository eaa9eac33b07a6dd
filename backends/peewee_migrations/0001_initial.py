"""The schema of flask-polysms 0.1.0, as 0.1.0 created it.

A frozen copy of 0.1.0's models and indexes (``backends/peewee.py`` at the v0.1.0 tag): every
table, column, collation and index as 0.1.0's ``create_schema`` made them. A database made by
0.1.0 has these tables and no history; ``present`` recognises it, and the upgrade records this
script without running it.
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix

MADE_BY = "flask-polysms 0.1.0"


def models(db: pw.Database) -> list[type[pw.Model]]:
    """0.1.0's model classes on ``db``, named with the store's table prefix, with their indexes."""
    prefix = table_prefix()
    c = frozen.Columns(db)
    key, opt_key, json = c.key, c.opt_key, c.json
    Base = frozen.base_model(db)

    class Account(Base):
        id = key(primary_key=True)
        name = pw.TextField()
        created_at = c.datetime()

        class Meta:
            table_name = prefix + "account"

    class ApiKey(Base):
        id = key(primary_key=True)
        account_id = key()
        key_hash = key(255)
        prefix = key(64)
        created_at = c.datetime()
        revoked_at = c.datetime(null=True)

        class Meta:
            table_name = prefix + "api_key"

    class Project(Base):
        id = key(primary_key=True)
        account_id = key()
        name = pw.TextField()
        created_at = c.datetime()
        twilio_account_sid = opt_key()
        twilio_auth_token_encrypted = pw.TextField(null=True)
        settings = json()

        class Meta:
            table_name = prefix + "project"

    class Sender(Base):
        id = key(primary_key=True)
        project_id = key()
        environment = key(32)
        address = key()
        created_at = c.datetime()
        kind = key(32)
        country = opt_key(8)
        number_type = opt_key(32)
        registration = key(32)
        campaign_id = pw.TextField(null=True)

        class Meta:
            table_name = prefix + "sender"

    class Connector(Base):
        id = key(primary_key=True)
        project_id = key()
        environment = key(32)
        created_at = c.datetime()

        class Meta:
            table_name = prefix + "connector"

    class Session(Base):
        seq = pw.BigAutoField()
        id = key(unique=True)
        project_id = key()
        environment = key(32)
        user_number = key()
        agent_number = key()
        created_at = c.datetime()
        last_activity_at = c.datetime()
        state = key(32)
        engaged = pw.BooleanField()
        closed_at = c.datetime(null=True)
        end_reason = opt_key(32)
        deadline_at = c.datetime(null=True)
        timer_kind = opt_key(32)
        wake_at = c.datetime(null=True)
        version = pw.IntegerField()
        data = json()
        entities = json()
        metadata = json()
        language = opt_key(32)

        class Meta:
            table_name = prefix + "session"

    class Message(Base):
        seq = pw.BigAutoField()
        id = key(unique=True)
        project_id = key()
        environment = key(32)
        session_id = opt_key()
        direction = key(16)
        kind = key(32)
        body = pw.TextField()
        to = key()
        from_number = opt_key()
        created_at = c.datetime()
        updated_at = c.datetime()
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

        class Meta:
            table_name = prefix + "message"

    class StatusEvent(Base):
        seq = pw.BigAutoField()
        twilio_sid = key()
        status = key(32)
        received_at = c.datetime()
        error_code = pw.IntegerField(null=True)

        class Meta:
            table_name = prefix + "status_event"

    class InboundClaim(Base):
        message_sid = key(primary_key=True)
        claimed_at = c.datetime()

        class Meta:
            table_name = prefix + "inbound_claim"

    class Template(Base):
        id = key(primary_key=True)
        project_id = key()
        title = key(255)
        body = pw.TextField()
        env_phone_numbers = json()
        created_at = c.datetime()
        updated_at = c.datetime()

        class Meta:
            table_name = prefix + "template"

    class OptOut(Base):
        seq = pw.BigAutoField()
        recipient = key()
        sender = key()
        project_id = key()
        opted_out = pw.BooleanField()
        updated_at = c.datetime()

        class Meta:
            table_name = prefix + "opt_out"

    class OptOutEvent(Base):
        seq = pw.BigAutoField()
        project_id = key()
        recipient = key()
        sender = key()
        action = key(16)
        keyword = pw.TextField(null=True)
        at = c.datetime()

        class Meta:
            table_name = prefix + "opt_out_event"

    class Metric(Base):
        seq = pw.BigAutoField()
        project_id = key()
        environment = key(32)
        day = pw.DateField()
        name = key(64)
        value = pw.BigIntegerField()

        class Meta:
            table_name = prefix + "metric"

    class NumberBlock(Base):
        seq = pw.BigAutoField()
        project_id = key()
        number = key()
        blocked_until = c.datetime()
        reason = pw.TextField()

        class Meta:
            table_name = prefix + "number_block"

    def index(model: type[pw.Model], name: str, *fields: pw.Field, unique: bool = False) -> None:
        model.add_index(*fields, unique=unique, name=prefix + name)

    index(ApiKey, "api_key_hash", ApiKey.key_hash)
    index(Project, "project_account", Project.account_id)
    index(Sender, "sender_address", Sender.address, unique=True)
    index(Sender, "sender_project", Sender.project_id, Sender.environment, Sender.created_at)
    index(Connector, "connector_project", Connector.project_id)
    index(
        Session,
        "session_open_seq",
        Session.project_id,
        Session.user_number,
        Session.agent_number,
        Session.seq,
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
    index(StatusEvent, "status_event_pair", StatusEvent.twilio_sid, StatusEvent.status, unique=True)
    index(Template, "template_title", Template.project_id, Template.title, unique=True)
    index(OptOut, "opt_out_pair", OptOut.recipient, OptOut.sender, unique=True)
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
    return [
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
    ]


def present(db: pw.Database) -> bool:
    """Whether 0.1.0's tables are all there (a database 0.1.0 made); False when none is."""
    return frozen.tables_present(db, models(db), MADE_BY)


def up(migrator, db: pw.Database) -> None:
    """Create 0.1.0's tables and indexes."""
    db.create_tables(models(db), safe=False)


def down(migrator, db: pw.Database) -> None:
    """Drop them, with every row."""
    db.drop_tables(models(db), safe=False)
