"""The in-memory Store: one process, thread-safe, for tests and the quick start."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from flask_polysms.clock import utcnow
from flask_polysms.ports.store import (
    Conflict,
    DashboardSignIn,
    NotFound,
    StaleVersion,
    Store,
    check_cursor,
)
from flask_polysms.records import (
    CLOSED,
    INBOUND,
    OUTBOUND,
    PROCESSING,
    QUEUED,
    RECEIVED,
    SENDING,
    Account,
    ApiKey,
    Connector,
    Message,
    OptOutEvent,
    Project,
    Sender,
    Session,
    StatusEvent,
    Template,
    new_id,
)

from .memory_idempotency import IdempotencyRecordsInMemory
from .memory_opt_out_pages import MemoryOptOutPages
from .memory_opt_outs import MemoryOptOuts
from .memory_scheduled import MemoryScheduled
from .memory_turns import MemoryTurns
from .memory_webhooks import MemoryWebhooks


def _copy(record):
    # Callers get copies: mutating a returned record must never change the store behind a lock.
    return copy.deepcopy(record)


def _apply(record, fields: dict[str, Any], frozen: tuple[str, ...] = ("id",)) -> None:
    """Set ``fields`` on ``record``; like the database backends, unknown or frozen names raise."""
    for name in fields:
        if name in frozen or not hasattr(record, name):
            raise TypeError(f"{type(record).__name__} has no updatable field {name!r}")
    for name, value in fields.items():
        setattr(record, name, copy.deepcopy(value))


class MemoryStore(
    MemoryOptOuts,
    MemoryOptOutPages,
    MemoryTurns,
    MemoryScheduled,
    IdempotencyRecordsInMemory,
    MemoryWebhooks,
    Store,
):
    """Everything in dictionaries guarded by one lock; every method is atomic."""

    schemes = ("memory",)
    creates_schema_on_start = True

    def __init__(self, url: str = "memory://", **options: Any) -> None:
        super().__init__(url)
        self._lock = threading.RLock()
        self.drop_schema()

    def drop_schema(self) -> None:
        with getattr(self, "_lock", threading.RLock()):
            self._accounts: dict[str, Account] = {}
            self._keys: dict[str, ApiKey] = {}
            self._projects: dict[str, Project] = {}
            self._senders: dict[str, Sender] = {}
            self._connectors: dict[str, Connector] = {}
            self._sessions: dict[str, Session] = {}
            self._session_seq: dict[str, int] = {}
            self._messages: dict[str, Message] = {}
            self._messages_by_sid: dict[str, str] = {}
            self._messages_by_session: dict[str, list[str]] = {}
            self._events: dict[tuple[str, str], StatusEvent] = {}
            self._claims: dict[str, datetime] = {}
            self._turns: dict[str, tuple[str, datetime]] = {}
            self._templates: dict[str, Template] = {}
            self._opt_outs: set[tuple[str, str]] = set()
            self._opt_out_history: list[OptOutEvent] = []
            self._metrics: dict[tuple[str, str, date, str], int] = {}
            self._blocks: dict[tuple[str, str], datetime] = {}
            self._sign_ins: dict[str, DashboardSignIn] = {}
            self._idempotent_requests = {}
            self._webhooks = {}
            self._webhook_deliveries = []
            self._seq = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- accounts, keys, projects -----------------------------------------------------------------
    def create_account(self, name: str) -> Account:
        with self._lock:
            account = Account(id=new_id("acc_"), name=name, created_at=utcnow())
            self._accounts[account.id] = account
            return _copy(account)

    def get_account(self, account_id: str) -> Account | None:
        with self._lock:
            return _copy(self._accounts.get(account_id))

    def add_api_key(self, account_id: str, key_hash: str, prefix: str) -> ApiKey:
        with self._lock:
            if account_id not in self._accounts:
                raise NotFound(f"no account {account_id}")
            key = ApiKey(
                id=new_id("key_"),
                account_id=account_id,
                key_hash=key_hash,
                prefix=prefix,
                created_at=utcnow(),
            )
            self._keys[key.id] = key
            return _copy(key)

    def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        with self._lock:
            for key in self._keys.values():
                if key.key_hash == key_hash:
                    return _copy(key)
            return None

    def get_api_key(self, key_id: str) -> ApiKey | None:
        with self._lock:
            return _copy(self._keys.get(key_id))

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.revoked_at is not None:
                return False
            key.revoked_at = at
            return True

    def create_project(self, account_id: str, name: str) -> Project:
        with self._lock:
            if account_id not in self._accounts:
                raise NotFound(f"no account {account_id}")
            project = Project(
                id=new_id("prj_"), account_id=account_id, name=name, created_at=utcnow()
            )
            self._projects[project.id] = project
            return _copy(project)

    def get_project(self, project_id: str) -> Project | None:
        with self._lock:
            return _copy(self._projects.get(project_id))

    def update_project(self, project_id: str, **fields: Any) -> Project:
        with self._lock:
            project = self._projects.get(project_id)
            if project is None:
                raise NotFound(f"no project {project_id}")
            _apply(project, fields)
            return _copy(project)

    def change_project_settings(self, project_id: str, change) -> Project:
        with self._lock:  # the change runs holding the store: one after the other
            project = self._projects.get(project_id)
            if project is None:
                raise NotFound(f"no project {project_id}")
            project.settings = change(copy.deepcopy(project.settings))
            return _copy(project)

    def list_encrypted_auth_tokens(self) -> list[tuple[str, str]]:
        with self._lock:
            return [
                (p.id, p.twilio_auth_token_encrypted)
                for p in self._projects.values()
                if p.twilio_auth_token_encrypted
            ]

    def replace_auth_token(self, project_id: str, old: str, new: str) -> bool:
        with self._lock:
            project = self._projects.get(project_id)
            if project is None or project.twilio_auth_token_encrypted != old:
                return False
            project.twilio_auth_token_encrypted = new
            return True

    # -- senders and connectors -------------------------------------------------------------------
    def add_sender(self, sender: Sender) -> Sender:
        with self._lock:
            if sender.project_id not in self._projects:
                raise NotFound(f"no project {sender.project_id}")
            if sender.address in self._senders:
                raise Conflict(f"sender {sender.address} is provisioned already")
            self._senders[sender.address] = _copy(sender)
            return _copy(sender)

    def get_sender(self, address: str) -> Sender | None:
        with self._lock:
            return _copy(self._senders.get(address))

    def list_senders(self, project_id: str, environment: str | None = None) -> list[Sender]:
        with self._lock:
            found = [
                s
                for s in self._senders.values()
                if s.project_id == project_id and environment in (None, s.environment)
            ]
            return [_copy(s) for s in sorted(found, key=lambda s: (s.created_at, s.address))]

    def update_sender(self, address: str, **fields: Any) -> Sender:
        with self._lock:
            sender = self._senders.get(address)
            if sender is None:
                raise NotFound(f"no sender {address}")
            new_address = fields.get("address", address)
            if new_address != address and new_address in self._senders:
                raise Conflict(f"sender {new_address} is provisioned already")
            _apply(sender, fields)
            if new_address != address:
                self._senders[new_address] = self._senders.pop(address)
            return _copy(sender)

    def create_connector(self, project_id: str, environment: str) -> Connector:
        with self._lock:
            if project_id not in self._projects:
                raise NotFound(f"no project {project_id}")
            connector = Connector(
                id=new_id("con_"),
                project_id=project_id,
                environment=environment,
                created_at=utcnow(),
            )
            self._connectors[connector.id] = connector
            return _copy(connector)

    def get_connector(self, connector_id: str) -> Connector | None:
        with self._lock:
            return _copy(self._connectors.get(connector_id))

    # -- sessions ---------------------------------------------------------------------------------
    def create_session(self, session: Session) -> Session:
        with self._lock:
            if session.id in self._sessions:
                raise Conflict(f"session {session.id} exists")
            self._sessions[session.id] = _copy(session)
            self._session_seq[session.id] = self._next_seq()
            return _copy(session)

    def get_session(self, session_id: str) -> Session | None:
        with self._lock:
            return _copy(self._sessions.get(session_id))

    def find_open_session(
        self, project_id: str, user_number: str, agent_number: str
    ) -> Session | None:
        with self._lock:
            found = [
                s
                for s in self._sessions.values()
                if s.project_id == project_id
                and s.user_number == user_number
                and s.agent_number == agent_number
                and s.state != CLOSED
            ]
            if not found:
                return None
            return _copy(max(found, key=lambda s: self._session_seq[s.id]))

    def update_session(self, session_id: str, expected_version: int, **fields: Any) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFound(f"no session {session_id}")
            if session.version != expected_version:
                raise StaleVersion(f"session {session_id} is at version {session.version}")
            _apply(session, fields, frozen=("id", "version"))
            session.version += 1
            return _copy(session)

    def list_sessions(
        self,
        project_id: str,
        *,
        environment: str | None = None,
        user_number: str | None = None,
        state: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Session], str | None]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after_id = check_cursor(cursor)
        with self._lock:
            after = None
            if after_id is not None:
                last = self._sessions.get(after_id)
                if last is None or last.project_id != project_id:
                    return [], None  # names no session of the project
                after = self._session_seq[after_id]
            rows = [
                (self._session_seq[s.id], s)
                for s in self._sessions.values()
                if s.project_id == project_id
                and environment in (None, s.environment)
                and user_number in (None, s.user_number)
                and state in (None, s.state)
            ]
            rows.sort(key=lambda row: row[0], reverse=True)
            if after is not None:
                rows = [row for row in rows if row[0] < after]
            page = rows[:limit]
            next_cursor = page[-1][1].id if len(rows) > limit else None
            return [_copy(s) for _, s in page], next_cursor

    def waking_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        return self._open_sessions_by("wake_at", now, limit)

    def due_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        return self._open_sessions_by("deadline_at", now, limit)

    def _open_sessions_by(self, time: str, now: datetime, limit: int) -> list[Session]:
        """Sessions not closed whose ``time`` field is at or before ``now``, earliest first."""
        with self._lock:
            found = [
                s
                for s in self._sessions.values()
                if s.state != CLOSED and getattr(s, time) is not None and getattr(s, time) <= now
            ]
            found.sort(key=lambda s: getattr(s, time))
            return [_copy(s) for s in found[:limit]]

    def last_agent_number(self, project_id: str, environment: str, user_number: str) -> str | None:
        with self._lock:
            found = [
                s
                for s in self._sessions.values()
                if s.project_id == project_id
                and s.environment == environment
                and s.user_number == user_number
            ]
            if not found:
                return None
            return max(found, key=lambda s: self._session_seq[s.id]).agent_number

    def sender_user_numbers(
        self, project_id: str, agent_number: str, newest: int
    ) -> tuple[list[str], bool]:
        with self._lock:
            ours = [s for s in self._sessions.values() if s.project_id == project_id]
            ours.sort(key=lambda s: self._session_seq[s.id], reverse=True)
            numbers = {s.user_number for s in ours[:newest] if s.agent_number == agent_number}
            return sorted(numbers), len(ours) > newest

    # -- messages ---------------------------------------------------------------------------------
    def add_message(self, message: Message) -> Message:
        with self._lock:
            if message.id in self._messages:
                raise Conflict(f"message {message.id} exists")
            self._messages[message.id] = _copy(message)
            if message.twilio_sid:
                self._messages_by_sid[message.twilio_sid] = message.id
            if message.session_id:
                self._messages_by_session.setdefault(message.session_id, []).append(message.id)
            return _copy(message)

    def get_message(self, message_id: str) -> Message | None:
        with self._lock:
            return _copy(self._messages.get(message_id))

    def get_message_by_sid(self, twilio_sid: str) -> Message | None:
        with self._lock:
            message_id = self._messages_by_sid.get(twilio_sid)
            return _copy(self._messages.get(message_id)) if message_id else None

    def list_messages(self, session_id: str) -> list[Message]:
        with self._lock:
            return [_copy(self._messages[i]) for i in self._messages_by_session.get(session_id, [])]

    def list_messages_of_sessions(self, session_ids: Sequence[str]) -> dict[str, list[Message]]:
        with self._lock:
            return {session_id: self.list_messages(session_id) for session_id in session_ids}

    def update_message(
        self, message_id: str, expected_status: str | tuple[str, ...] | None = None, **fields: Any
    ) -> Message | None:
        with self._lock:
            message = self._messages.get(message_id)
            if message is None:
                return None
            if expected_status is not None:
                allowed = (
                    (expected_status,) if isinstance(expected_status, str) else expected_status
                )
                if message.status not in allowed:
                    return None
            _apply(message, fields)
            if message.twilio_sid:
                self._messages_by_sid[message.twilio_sid] = message.id
            return _copy(message)

    def stuck_messages(self, older_than: datetime, limit: int = 500) -> list[Message]:
        with self._lock:
            stuck = [
                m
                for m in self._messages.values()
                if (
                    (m.direction == OUTBOUND and m.status in (QUEUED, SENDING))
                    or (m.direction == INBOUND and m.status in (RECEIVED, PROCESSING))
                )
                and m.updated_at < older_than
            ]
            stuck.sort(key=lambda m: m.updated_at)
            return [_copy(m) for m in stuck[:limit]]

    def add_status_event(self, event: StatusEvent) -> bool:
        with self._lock:
            key = (event.twilio_sid, event.status)
            if key in self._events:
                return False
            self._events[key] = _copy(event)
            return True

    def list_status_events(self, twilio_sid: str) -> list[StatusEvent]:
        with self._lock:
            found = [e for (sid, _), e in self._events.items() if sid == twilio_sid]
            return [_copy(e) for e in sorted(found, key=lambda e: e.received_at)]

    def claim_inbound(self, message_sid: str, at: datetime) -> bool:
        with self._lock:
            if message_sid in self._claims:
                return False
            self._claims[message_sid] = at
            return True

    # -- templates --------------------------------------------------------------------------------
    def _title_taken(self, project_id: str, title: str, other_than: str | None = None) -> bool:
        return any(
            t.project_id == project_id and t.title == title and t.id != other_than
            for t in self._templates.values()
        )

    def create_template(self, template: Template) -> Template:
        with self._lock:
            if template.id in self._templates:
                raise Conflict(f"template {template.id} exists")
            if self._title_taken(template.project_id, template.title):
                raise Conflict(f"a template titled {template.title!r} exists")
            self._templates[template.id] = _copy(template)
            return _copy(template)

    def get_template(self, project_id: str, template_id: str) -> Template | None:
        with self._lock:
            template = self._templates.get(template_id)
            if template is None or template.project_id != project_id:
                return None
            return _copy(template)

    def get_template_by_title(self, project_id: str, title: str) -> Template | None:
        with self._lock:
            for template in self._templates.values():
                if template.project_id == project_id and template.title == title:
                    return _copy(template)
            return None

    def list_templates(self, project_id: str) -> list[Template]:
        with self._lock:
            found = [t for t in self._templates.values() if t.project_id == project_id]
            return [_copy(t) for t in sorted(found, key=lambda t: t.title)]

    def update_template(self, project_id: str, template_id: str, **fields: Any) -> Template:
        with self._lock:
            template = self._templates.get(template_id)
            if template is None or template.project_id != project_id:
                raise NotFound(f"no template {template_id}")
            title = fields.get("title")
            if title is not None and self._title_taken(project_id, title, other_than=template_id):
                raise Conflict(f"a template titled {title!r} exists")
            _apply(template, fields, frozen=("id", "project_id"))
            return _copy(template)

    def delete_template(self, project_id: str, template_id: str) -> bool:
        with self._lock:
            template = self._templates.get(template_id)
            if template is None or template.project_id != project_id:
                return False
            del self._templates[template_id]
            return True

    # -- metrics ----------------------------------------------------------------------------------
    def incr_metric(
        self, project_id: str, environment: str, day: date, name: str, amount: int = 1
    ) -> None:
        with self._lock:
            key = (project_id, environment, day, name)
            self._metrics[key] = self._metrics.get(key, 0) + amount

    def get_metrics(
        self, project_id: str, environment: str, start: date, end: date
    ) -> dict[date, dict[str, int]]:
        with self._lock:
            result: dict[date, dict[str, int]] = {}
            for (pid, env, day, name), value in self._metrics.items():
                if pid == project_id and env == environment and start <= day <= end:
                    result.setdefault(day, {})[name] = value
            return result

    def metric_totals(self, names: Sequence[str]) -> dict[str, int]:
        with self._lock:
            totals = dict.fromkeys(names, 0)
            for (_, _, _, name), value in self._metrics.items():
                if name in totals:
                    totals[name] += value
            return totals

    def oldest_unsent_at(self, now: datetime) -> datetime | None:
        with self._lock:
            return min(
                (
                    m.created_at
                    for m in self._messages.values()
                    if m.direction == OUTBOUND and m.status in (QUEUED, SENDING)
                ),
                default=None,
            )

    def count_due_sessions(self, now: datetime, cap: int = 10_000) -> int:
        with self._lock:
            due = sum(
                1
                for s in self._sessions.values()
                if s.state != CLOSED and s.deadline_at is not None and s.deadline_at <= now
            )
            return min(due, cap)

    # -- inbound abuse blocks ---------------------------------------------------------------------
    def block_number(self, project_id: str, number: str, until: datetime, reason: str) -> None:
        with self._lock:
            key = (project_id, number)
            current = self._blocks.get(key)
            if current is None or until > current:
                self._blocks[key] = until

    def blocked_until(self, project_id: str, number: str) -> datetime | None:
        with self._lock:
            return self._blocks.get((project_id, number))

    # -- dashboard sign-ins -----------------------------------------------------------------------
    def add_dashboard_sign_in(self, sign_in: DashboardSignIn) -> DashboardSignIn:
        with self._lock:
            if sign_in.id in self._sign_ins:
                raise Conflict("a dashboard sign-in with this id exists")
            self._sign_ins[sign_in.id] = _copy(sign_in)
            return _copy(sign_in)

    def get_dashboard_sign_in(self, sign_in_id: str) -> DashboardSignIn | None:
        with self._lock:
            return _copy(self._sign_ins.get(sign_in_id))

    def touch_dashboard_sign_in(self, sign_in_id: str, at: datetime) -> bool:
        with self._lock:
            sign_in = self._sign_ins.get(sign_in_id)
            if sign_in is None or sign_in.ended_at is not None:
                return False
            sign_in.last_seen_at = at
            return True

    def end_dashboard_sign_in(self, sign_in_id: str, at: datetime, reason: str) -> bool:
        with self._lock:
            sign_in = self._sign_ins.get(sign_in_id)
            if sign_in is None or sign_in.ended_at is not None:
                return False
            sign_in.ended_at, sign_in.end_reason = at, reason
            return True
