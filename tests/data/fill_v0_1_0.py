"""Make a database as flask-polysms 0.1.0 made it, with a row in every table; print the rows.

Run by tests/test_migrations.py with 0.1.0's own code first on ``sys.path`` (extracted from the
v0.1.0 commit), never the current package: the schema comes from 0.1.0's ``create_schema`` and the
rows from 0.1.0's Store, so they are what a 0.1.0 deployment holds.

    python fill_v0_1_0.py STORAGE_URL TABLE_PREFIX SECRET_KEY

Prints one JSON object: each record as 0.1.0 returned it (datetimes as ISO text), the API key,
the Twilio Auth Token and the path of the package that ran.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import date, datetime, timedelta, timezone

import flask_polysms
from flask_polysms.backends import create_store
from flask_polysms.crypto import TokenCipher, hash_api_key, key_prefix, new_api_key
from flask_polysms.records import Message, Sender, Session, StatusEvent, Template, new_id

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
AGENT, USER, OTHER_USER = "+14155552671", "+14155552674", "+14155552675"
AUTH_TOKEN = "0.1.0-auth-token-0123456789abcdef"


def as_json(value):
    """Records and their values as JSON (datetimes and days as ISO text)."""
    if dataclasses.is_dataclass(value):
        return {name: as_json(item) for name, item in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(key): as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def main(url: str, prefix: str, secret: str) -> dict:
    store = create_store(url, table_prefix=prefix)
    store.create_schema()
    account = store.create_account("Acme 0.1")
    key = new_api_key()
    api_key = store.add_api_key(account.id, hash_api_key(key), key_prefix(key))
    project = store.create_project(account.id, "Reminders")
    project = store.update_project(
        project.id,
        twilio_account_sid="AC" + "01" * 16,
        twilio_auth_token_encrypted=TokenCipher(secret).encrypt(AUTH_TOKEN),
        settings={"help_reply": "Reply STOP to stop.", "variants": {"live": {"tone": "warm"}}},
    )
    sender = store.add_sender(
        Sender(
            id=new_id("snd_"),
            project_id=project.id,
            environment="live",
            address=AGENT,
            created_at=T0,
            kind="number",
            country="US",
            number_type="long_code",
            registration="registered",
            campaign_id="CZZZZZZ",
        )
    )
    connector = store.create_connector(project.id, "live")
    session = store.create_session(
        Session(
            id=new_id("conv_"),
            project_id=project.id,
            environment="live",
            user_number=USER,
            agent_number=AGENT,
            created_at=T0,
            last_activity_at=T0 + timedelta(minutes=2),
            engaged=True,
            deadline_at=T0 + timedelta(hours=24),
            timer_kind="idle",
            wake_at=T0 + timedelta(hours=24),
            data={"step": 2, "items": ["a", "b"]},
            entities={"name": "Ada", "amount": "12.50"},
            metadata={"warnings": ["10DLC registration pending"], "note": "café ✓"},
            language="en",
        )
    )
    greeting = store.add_message(
        Message(
            id=new_id("msg_"),
            project_id=project.id,
            environment="live",
            session_id=session.id,
            direction="outbound",
            kind="greeting",
            body="Hello Ada, your order of $12.50 is ready",
            to=USER,
            from_=AGENT,
            created_at=T0,
            updated_at=T0 + timedelta(seconds=3),
            status="delivered",
            twilio_sid="SM" + "0a" * 16,
            attempts=1,
            template="Order ready",
        )
    )
    reply = store.add_message(
        Message(
            id=new_id("msg_"),
            project_id=project.id,
            environment="live",
            session_id=session.id,
            direction="inbound",
            kind="user",
            body="Thanks! 👍",
            to=AGENT,
            from_=USER,
            created_at=T0 + timedelta(minutes=2),
            updated_at=T0 + timedelta(minutes=2),
            status="handled",
            twilio_sid="SM" + "0b" * 16,
            segments=1,
            encoding="UCS-2",
        )
    )
    store.add_status_event(StatusEvent(greeting.twilio_sid, "sent", T0 + timedelta(seconds=1)))
    store.add_status_event(
        StatusEvent(greeting.twilio_sid, "delivered", T0 + timedelta(seconds=3), error_code=None)
    )
    store.claim_inbound(reply.twilio_sid, T0 + timedelta(minutes=2))
    template = store.create_template(
        Template(
            id=new_id("tpl_"),
            project_id=project.id,
            title="Order ready",
            body="Hello {{entity:name}}, your order of ${{entity:amount}} is ready",
            env_phone_numbers={"live": AGENT},
            created_at=T0,
            updated_at=T0,
        )
    )
    store.set_opt_out(project.id, OTHER_USER, AGENT, True, "STOP", T0 + timedelta(minutes=5))
    store.incr_metric(project.id, "live", T0.date(), "sent", 3)
    store.incr_metric(project.id, "live", T0.date(), "delivered")
    store.block_number(project.id, OTHER_USER, T0 + timedelta(hours=1), "duplicate_text")
    written = {
        "account": account,
        "api_key": api_key,
        "project": project,
        "sender": sender,
        "connector": connector,
        "session": store.get_session(session.id),
        "messages": store.list_messages(session.id),
        "status_events": store.list_status_events(greeting.twilio_sid),
        "template": template,
        "opt_out_history": store.opt_out_history(project.id, OTHER_USER, AGENT),
        "metrics": store.get_metrics(project.id, "live", T0.date(), T0.date()),
        "blocked_until": store.blocked_until(project.id, OTHER_USER),
    }
    store.disconnect()
    return {
        "records": as_json(written),
        "api_key_secret": key,
        "auth_token": AUTH_TOKEN,
        "inbound_claim": reply.twilio_sid,
        "opted_out": [OTHER_USER, AGENT],
        "package": flask_polysms.__file__,
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
