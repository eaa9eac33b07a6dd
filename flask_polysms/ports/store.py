"""The Store: the one storage contract every backend fulfils.

Every method here is the whole promise; the contract test suite (tests/test_store_*.py, its
fixtures in tests/store_contract_support.py) runs unchanged against each backend. Methods that
decide a race (claims, compare-and-set updates, opt-out changes, unique inserts) are atomic in
every backend, across threads and, for the database backends, across processes.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from ..records import (
    QUEUED,
    SENDING,
    SENT,
    SOURCE_KEYWORD,
    Account,
    ApiKey,
    Connector,
    Message,
    OptOut,
    OptOutEvent,
    Project,
    Sender,
    Session,
    StatusEvent,
    Template,
)
from .schema_versions import (  # noqa: F401 - re-exported: the port's address
    SchemaError,
    SchemaTooNew,
    SchemaUpgrade,
    SchemaVersion,
    migration_number,
)
from .store_errors import Conflict, NotFound, StaleVersion, StoreError  # noqa: F401
from .store_optional import (
    DashboardSignIn,  # noqa: F401 - re-exported: the port's address
    DashboardSignIns,
    EventWebhookRecords,
    IdempotencyKeys,
    OperationsFigures,
    OutboundReads,
    ProjectSettingsChanges,
    TurnClaims,
)

T = TypeVar("T")


from ..authorisation import authorises  # noqa: E402,F401 - the rule, re-exported for backends

log = logging.getLogger("flask_polysms.store")


@dataclass(frozen=True)
class SendClaim:
    """What a send job needs once it holds a message (see :meth:`Store.claim_send`)."""

    message: Message  # now ``sending``, its attempt counted
    opted_out: bool  # whether its recipient opted out from its sender (or the sender's service)
    project: Project | None
    sender: Sender | None  # the sender's record (number or Messaging Service), if provisioned


# A store cursor is the id of the last row of the previous page (ids are letters, digits, "_").
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,100}")


def check_cursor(cursor: str | None) -> str | None:
    """A store cursor as given, None for none; ValueError when it cannot be one (not a row id).

    A store cursor is the id of the last row of the previous page, never a position in an
    ordering that other projects share. The API does not show it as it is: it hands out an
    encrypted cursor bound to the project (:mod:`flask_polysms.services.cursors`).
    """
    if not cursor:
        return None
    if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
        raise ValueError("invalid cursor")
    return cursor


class Store(
    OutboundReads,
    ProjectSettingsChanges,
    TurnClaims,
    OperationsFigures,
    DashboardSignIns,
    IdempotencyKeys,
    EventWebhookRecords,
    ABC,
):
    """Persistence for accounts, projects, sessions, messages, templates, opt-outs and metrics."""

    #: URL schemes this backend serves (used by the backend registry).
    schemes: tuple[str, ...] = ()
    #: Whether init_app creates or upgrades the schema (embedded stores); server databases use
    #: `flask polysms db upgrade` (or `init-db`), and init_app only checks they are not newer.
    creates_schema_on_start: bool = False
    #: Exceptions meaning the storage cannot be reached right now (a dropped connection): the API
    #: answers them with 503 and a detail, and the next request connects again.
    unavailable_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url

    # -- life cycle -------------------------------------------------------------------------------
    def create_schema(self) -> None:  # noqa: B027 - optional for backends without a schema
        """Create the tables and indexes, or bring them up to date (idempotent)."""

    def drop_schema(self) -> None:  # noqa: B027
        """Remove everything (tests only)."""

    def schema_version(self) -> SchemaVersion | None:
        """Where the database's schema stands (:class:`SchemaVersion`); None for a backend whose
        schema has no versions (``memory://``). Reads only."""
        return None

    def upgrade_schema(self) -> SchemaUpgrade:
        """Apply the migrations the database lacks, in order (on an empty database: all of
        them); what :meth:`create_schema` does. Raises :class:`SchemaTooNew` on a database a
        newer version upgraded, before changing anything."""
        self.create_schema()
        return SchemaUpgrade()

    def check_schema(self) -> None:
        """Raise :class:`SchemaTooNew` when the database holds migrations this version does not
        know (one read; a no-op for a backend without schema versions)."""
        version = self.schema_version()
        if version is not None and version.unknown:
            raise SchemaTooNew(version)

    def connect(self) -> None:  # noqa: B027
        """Open this thread's connection if the backend has one (called per request and job)."""

    def close(self) -> None:  # noqa: B027
        """Close this thread's connection if open (a pooled backend returns it to its pool)."""

    def disconnect(self) -> None:
        """Close every connection this store keeps, idle pooled ones too (before a fork)."""
        self.close()

    def available(self) -> bool:
        """Whether the storage answers a read of its tables now; False, never an exception, when
        it cannot (an outage, or a schema not created yet)."""
        try:
            self.get_project("prj_readiness_probe")
        except Exception as exc:  # a readiness probe reports; the request path raises
            log.warning("storage not available: %s", type(exc).__name__)
            return False
        return True

    def atomic(self, work: Callable[[], T]) -> T:
        """Run ``work()`` with every Store call it makes in one transaction, and return its result.

        A database backend may run ``work`` again when the database rolled the transaction back
        as a deadlock victim, so ``work`` must not have effects outside the Store (see
        :func:`flask_polysms.services.units.unit_of_work`, which holds jobs until the commit). The
        memory
        store runs it once; its methods are atomic one by one.
        """
        return work()

    # -- accounts, keys, projects -----------------------------------------------------------------
    @abstractmethod
    def create_account(self, name: str) -> Account: ...

    @abstractmethod
    def get_account(self, account_id: str) -> Account | None: ...

    @abstractmethod
    def add_api_key(self, account_id: str, key_hash: str, prefix: str) -> ApiKey:
        """Store a key's hash (never the key). Raises NotFound for an unknown account."""

    @abstractmethod
    def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    @abstractmethod
    def get_api_key(self, key_id: str) -> ApiKey | None: ...

    def get_credentials(
        self, key_hash: str, connector_id: str | None
    ) -> tuple[ApiKey | None, Connector | None, Project | None]:
        """What one authenticated request needs: the API key with this hash and, when the key
        exists, the connector and the connector's project (None where absent). A backend may
        answer in one round trip; this default asks the getters."""
        key = self.get_api_key_by_hash(key_hash)
        if key is None or not connector_id:
            return key, None, None
        connector = self.get_connector(connector_id)
        project = self.get_project(connector.project_id) if connector is not None else None
        return key, connector, project

    @abstractmethod
    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        """Mark a key revoked; False when unknown or revoked already."""

    @abstractmethod
    def create_project(self, account_id: str, name: str) -> Project:
        """Raises NotFound for an unknown account."""

    @abstractmethod
    def get_project(self, project_id: str) -> Project | None: ...

    @abstractmethod
    def update_project(self, project_id: str, **fields: Any) -> Project:
        """Set the named fields (name, settings, Twilio SID, encrypted Auth Token)."""

    def list_encrypted_auth_tokens(self) -> list[tuple[str, str]]:
        """``(project id, encrypted Auth Token)`` of every project that has a token, in any
        account: what ``flask polysms rotate-keys`` re-encrypts. Backends that cannot list
        projects raise NotImplementedError (rotation is then not available)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list the stored Auth Tokens")

    def replace_auth_token(self, project_id: str, old: str, new: str) -> bool:
        """Compare-and-set the project's encrypted Auth Token: ``new`` only if it is still
        ``old``; False (nothing changed) otherwise. This default reads then writes; the
        built-in backends do it in one atomic step."""
        project = self.get_project(project_id)
        if project is None or project.twilio_auth_token_encrypted != old:
            return False
        self.update_project(project_id, twilio_auth_token_encrypted=new)
        return True

    # -- senders and connectors -------------------------------------------------------------------
    @abstractmethod
    def add_sender(self, sender: Sender) -> Sender:
        """Provision a sender; its address is unique across all projects (Conflict otherwise)."""

    @abstractmethod
    def get_sender(self, address: str) -> Sender | None:
        """The sender with this address (E.164 number or MG SID), in whatever project."""

    def get_sender_with_project(self, address: str) -> tuple[Sender | None, Project | None]:
        """The sender with this address and its project (as :meth:`get_sender` then
        :meth:`get_project`): what a webhook reads to authenticate. Backends may answer both in
        one query."""
        sender = self.get_sender(address)
        return sender, self.get_project(sender.project_id) if sender else None

    @abstractmethod
    def list_senders(self, project_id: str, environment: str | None = None) -> list[Sender]:
        """A project's senders, oldest first, optionally of one environment."""

    @abstractmethod
    def update_sender(self, address: str, **fields: Any) -> Sender: ...

    @abstractmethod
    def create_connector(self, project_id: str, environment: str) -> Connector: ...

    @abstractmethod
    def get_connector(self, connector_id: str) -> Connector | None: ...

    # -- sessions ---------------------------------------------------------------------------------
    @abstractmethod
    def create_session(self, session: Session) -> Session:
        """Record a new session. One not closed becomes its (project, user number, agent
        number)'s open session, the one :meth:`find_open_session` returns; an older open session
        of the triple stays open (superseded, it ends at its deadline). Raises Conflict when the
        id is taken."""

    def open_session(self, session: Session) -> tuple[Session, bool]:
        """Record ``session`` unless its triple already has an open session (as
        :meth:`find_open_session` finds it): ``(the triple's open session, whether it is the
        one just recorded)``. Two callers at once get one session: the built-in backends decide
        with a unique key (database backends, across processes) or under their lock (memory).
        This default, for third-party backends, reads then writes and does not decide a race."""
        found = self.find_open_session(
            session.project_id, session.user_number, session.agent_number
        )
        if found is not None:
            return found, False
        return self.create_session(session), True

    @abstractmethod
    def get_session(self, session_id: str) -> Session | None: ...

    @abstractmethod
    def find_open_session(
        self, project_id: str, user_number: str, agent_number: str
    ) -> Session | None:
        """The newest session of the triple that is not closed."""

    def inbound_context(
        self, project_id: str, user_number: str, agent_number: str
    ) -> tuple[Session | None, datetime | None, bool]:
        """What routing an inbound message reads: the open session of the triple (as
        :meth:`find_open_session`), when the user's number is blocked until (as
        :meth:`blocked_until`) and whether the pair is opted out (as :meth:`is_opted_out`, so an
        opt-out of the agent number's Messaging Service counts).
        Backends may answer all three in one query."""
        return (
            self.find_open_session(project_id, user_number, agent_number),
            self.blocked_until(project_id, user_number),
            self.is_opted_out(user_number, agent_number),
        )

    def claim_inbound_with_context(
        self, message_sid: str, at: datetime, project_id: str, user_number: str, agent_number: str
    ) -> tuple[bool, Session | None, datetime | None, bool]:
        """:meth:`claim_inbound`, then (only when the claim is ours) :meth:`inbound_context`:
        ``(claimed, open session, blocked until, opted out)``. Backends may do both in one
        statement; a claim lost answers ``(False, None, None, False)``."""
        if not self.claim_inbound(message_sid, at):
            return False, None, None, False
        return (True, *self.inbound_context(project_id, user_number, agent_number))

    @abstractmethod
    def update_session(self, session_id: str, expected_version: int, **fields: Any) -> Session:
        """Compare-and-set: apply ``fields`` and bump the version only if the stored version is
        ``expected_version``; otherwise raise StaleVersion (NotFound if absent)."""

    @abstractmethod
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
        """A page of a project's sessions, newest first (the order they were created in), and
        the cursor of the next page: the id of the page's last session, None on the last page.

        ``cursor`` is such an id: the page starts after that session. Raises ValueError when it
        cannot be an id (see :func:`check_cursor`) or for a limit below 1; an id that names no
        session of the project gives an empty page.
        """

    @abstractmethod
    def waking_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        """Sessions not closed whose wake-up time (``wake_at``) is at or before ``now``, earliest
        first: the ones a wake-up job at ``now`` must look at (fire, or sleep until a deadline that
        moved later)."""

    @abstractmethod
    def due_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        """Sessions not closed whose deadline is at or before ``now``, earliest first."""

    @abstractmethod
    def last_agent_number(self, project_id: str, environment: str, user_number: str) -> str | None:
        """The agent number of this user's most recent session in the environment, if any."""

    def senders_for_user(
        self, project_id: str, environment: str, user_number: str
    ) -> tuple[list[Sender], str | None]:
        """The environment's senders (as :meth:`list_senders`) and this user's last agent number
        (as :meth:`last_agent_number`): what choosing a sender for a new conversation reads.
        Backends may answer both in one query."""
        return (
            self.list_senders(project_id, environment),
            self.last_agent_number(project_id, environment, user_number),
        )

    def senders_for_outbound(
        self, project_id: str, environment: str, user_number: str
    ) -> tuple[list[Sender], str | None, frozenset[str]]:
        """What opening a conversation with ``user_number`` reads: :meth:`senders_for_user`, and
        the addresses among those senders that the user opted out from (as
        :meth:`is_opted_out` says). Backends may answer all three in one query."""
        senders, previous = self.senders_for_user(project_id, environment, user_number)
        opted_out = frozenset(
            s.address for s in senders if self.is_opted_out(user_number, s.address)
        )
        return senders, previous, opted_out

    def sender_user_numbers(
        self, project_id: str, agent_number: str, newest: int
    ) -> tuple[list[str], bool]:
        """The user numbers (distinct, sorted) of the sessions whose agent number is
        ``agent_number`` among the project's ``newest`` most recent sessions, and whether the
        project has older sessions, left unread: what a sender's compliance report reads for its
        destination countries. The built-in backends answer in one bounded query; this default
        pages through :meth:`list_sessions`."""
        numbers: set[str] = set()
        cursor: str | None = None
        scanned = 0
        while scanned < newest:
            sessions, cursor = self.list_sessions(
                project_id, cursor=cursor, limit=min(200, newest - scanned)
            )
            numbers.update(s.user_number for s in sessions if s.agent_number == agent_number)
            scanned += len(sessions)
            if cursor is None:
                return sorted(numbers), False
        return sorted(numbers), True

    # -- messages ---------------------------------------------------------------------------------
    @abstractmethod
    def add_message(self, message: Message) -> Message: ...

    @abstractmethod
    def get_message(self, message_id: str) -> Message | None: ...

    @abstractmethod
    def get_message_by_sid(self, twilio_sid: str) -> Message | None: ...

    @abstractmethod
    def list_messages(self, session_id: str) -> list[Message]:
        """A session's messages in the order they were recorded."""

    def list_messages_of_sessions(self, session_ids: Sequence[str]) -> dict[str, list[Message]]:
        """Each session's messages (as :meth:`list_messages`), keyed by session id, every id
        given a key (``[]`` without messages): what a page of conversations reads. The built-in
        backends answer in one query; this default asks per session."""
        return {session_id: self.list_messages(session_id) for session_id in session_ids}

    @abstractmethod
    def update_message(
        self, message_id: str, expected_status: str | tuple[str, ...] | None = None, **fields: Any
    ) -> Message | None:
        """Apply ``fields``; when ``expected_status`` is given, only if the stored status is (one
        of) it, atomically. Returns the updated message, or None when the status did not match."""

    def claim_send(self, message_id: str, at: datetime) -> SendClaim | None:
        """Move a ``queued`` message to ``sending`` and count the attempt, atomically (of two jobs
        one wins), and read what its send needs: whether its recipient opted out from its sender
        (read now, at send time), its project and its sender's record. None when the message is
        absent or not ``queued``. A backend may answer in one round trip; this default asks the
        getters."""
        message = self.get_message(message_id)
        if message is None or message.status != QUEUED:
            return None
        claimed = self.update_message(
            message_id,
            expected_status=QUEUED,
            status=SENDING,
            attempts=message.attempts + 1,
            updated_at=at,
        )
        if claimed is None:
            return None
        sender = claimed.messaging_service_sid or claimed.from_ or ""
        return SendClaim(
            message=claimed,
            opted_out=self.is_opted_out(claimed.to, sender),
            project=self.get_project(claimed.project_id),
            sender=self.get_sender(sender),
        )

    def record_sent(
        self, message_id: str, twilio_sid: str, at: datetime
    ) -> tuple[Message | None, list[StatusEvent]]:
        """Move a ``sending`` message to ``sent`` with Twilio's SID (clearing the last error), add
        one to its project's ``sent`` counter of ``at``'s day, and return it with the status
        callbacks already recorded for the SID (one can beat this update). ``(None, [])`` when the
        message was not ``sending``: nothing changed. A backend may answer in one round trip."""
        sent = self.update_message(
            message_id,
            expected_status=SENDING,
            status=SENT,
            twilio_sid=twilio_sid,
            error_code=None,
            error_message=None,
            updated_at=at,
        )
        if sent is None:
            return None, []
        self.incr_metric(sent.project_id, sent.environment, at.date(), "sent")
        return sent, self.list_status_events(twilio_sid)

    @abstractmethod
    def stuck_messages(self, older_than: datetime, limit: int = 500) -> list[Message]:
        """Messages waiting for a job, last updated before ``older_than``: outbound ``queued`` or
        ``sending``, inbound ``received`` or ``processing`` (the agent's turn)."""

    @abstractmethod
    def due_scheduled_messages(self, now: datetime, limit: int = 500) -> list[Message]:
        """``scheduled`` messages whose ``send_at`` is at or before ``now``, soonest first."""

    @abstractmethod
    def list_scheduled_messages(
        self, project_id: str, environment: str, limit: int = 100
    ) -> list[Message]:
        """A project's ``scheduled`` messages in one environment, soonest ``send_at`` first."""

    @abstractmethod
    def add_status_event(self, event: StatusEvent) -> bool:
        """Record a status callback; False when the (SID, status) pair was recorded already."""

    @abstractmethod
    def list_status_events(self, twilio_sid: str) -> list[StatusEvent]: ...

    @abstractmethod
    def claim_inbound(self, message_sid: str, at: datetime) -> bool:
        """True for exactly one caller per inbound MessageSid, ever."""

    # -- templates --------------------------------------------------------------------------------
    @abstractmethod
    def create_template(self, template: Template) -> Template:
        """Raises Conflict when the project has a template with this title."""

    @abstractmethod
    def get_template(self, project_id: str, template_id: str) -> Template | None: ...

    @abstractmethod
    def get_template_by_title(self, project_id: str, title: str) -> Template | None: ...

    @abstractmethod
    def list_templates(self, project_id: str) -> list[Template]:
        """A project's templates ordered by title."""

    @abstractmethod
    def update_template(self, project_id: str, template_id: str, **fields: Any) -> Template:
        """Raises NotFound, or Conflict when a new title is taken."""

    @abstractmethod
    def delete_template(self, project_id: str, template_id: str) -> bool: ...

    # -- opt-outs ---------------------------------------------------------------------------------
    @abstractmethod
    def set_opt_out(
        self,
        project_id: str,
        recipient: str,
        sender: str,
        opted_out: bool,
        keyword: str | None,
        at: datetime,
        source: str = SOURCE_KEYWORD,
        api_key_id: str | None = None,
    ) -> bool:
        """Opt the pair out (or back in) and append the change to its history (with ``source``:
        ``keyword``, ``carrier``, ``api``, ``import``, and for ``api`` the id of the API key that
        made it), atomically. Returns False, and records nothing, when the pair was in that state
        already. ``sender`` is stored as given: callers opting a user out of a Messaging
        Service's member pass the service's SID."""

    @abstractmethod
    def is_opted_out(self, recipient: str, sender: str) -> bool:
        """Whether the recipient opted out from ``sender`` or, when ``sender`` is a number of a
        Messaging Service (its record's ``messaging_service_sid``), from that service: an
        opt-out through a pool is one record under the service's SID and covers every member.
        Resolved in the backend's own query, not by the caller."""

    @abstractmethod
    def opt_out_history(
        self, project_id: str, recipient: str, sender: str | None = None
    ) -> list[OptOutEvent]:
        """The pair's (or the recipient's) opt-out changes, oldest first."""

    # Not abstract: a third-party backend written for 0.1 keeps loading without the list routes.
    def list_opt_outs(
        self,
        project_id: str | None,
        *,
        recipient: str | None = None,
        sender: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[OptOut], str | None]:
        """A page of the pairs opted out now in the project (every project's for None), in the
        order each pair was first opted out, optionally of one recipient and/or one sender, and
        the cursor of the next page: the ``id`` of the page's last opt-out, None on the last page.

        ``cursor`` is such an id: the page starts after that pair. Raises ValueError when it
        cannot be an id (see :func:`check_cursor`) or for a limit below 1.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list opt-outs")

    def opt_out_events(
        self, project_id: str, recipient: str, *, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[OptOutEvent], str | None]:
        """A page of the recipient's opt-out changes in the project, every sender's, oldest
        first (as :meth:`opt_out_history`, each with its ``id``), and the cursor of the next page
        (the ``id`` of the page's last event; None on the last page). Raises ValueError for a
        cursor that cannot be an id or a limit below 1."""
        raise NotImplementedError(f"{type(self).__name__} cannot page opt-out history")

    # -- metrics ----------------------------------------------------------------------------------
    @abstractmethod
    def incr_metric(
        self, project_id: str, environment: str, day: date, name: str, amount: int = 1
    ) -> None:
        """Add to a daily counter, atomically."""

    @abstractmethod
    def get_metrics(
        self, project_id: str, environment: str, start: date, end: date
    ) -> dict[date, dict[str, int]]:
        """Counters per day for ``start`` <= day <= ``end``; days without data are absent."""

    # -- inbound abuse blocks ---------------------------------------------------------------------
    @abstractmethod
    def block_number(self, project_id: str, number: str, until: datetime, reason: str) -> None:
        """Block inbound from a number until a time (a later block extends it)."""

    @abstractmethod
    def blocked_until(self, project_id: str, number: str) -> datetime | None: ...
