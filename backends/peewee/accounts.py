"""Accounts, API keys, projects, senders, connectors and dashboard sign-ins: who calls, and on
whose behalf."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import peewee as pw

from flask_polysms.clock import utcnow
from flask_polysms.ports.store import Conflict, DashboardSignIn, NotFound
from flask_polysms.records import Account, ApiKey, Connector, Project, Sender, new_id

from .statements import StatementRunner, _prefixed_record, _record, _values


class AccountRecords(StatementRunner):
    """The store's accounts, API keys, projects, senders, connectors and dashboard sign-ins."""

    # -- accounts, keys, projects -----------------------------------------------------------------
    def create_account(self, name: str) -> Account:
        """Record a new account with a fresh id."""
        account = Account(id=new_id("acc_"), name=name, created_at=utcnow())
        self._insert(self._m.Account, _values(account))
        return self._roundtrip(self._m.Account, Account, account)

    def get_account(self, account_id: str) -> Account | None:
        """The account with this id, None when unknown."""
        A = self._m.Account
        row = self._by(A, "id", account_id)
        return _record(Account, row) if row else None

    def add_api_key(self, account_id: str, key_hash: str, prefix: str) -> ApiKey:
        """Store a key's hash (never the key). Raises NotFound for an unknown account."""
        self._require(self._m.Account, account_id, "account")
        key = ApiKey(
            id=new_id("key_"),
            account_id=account_id,
            key_hash=key_hash,
            prefix=prefix,
            created_at=utcnow(),
        )
        self._insert(self._m.ApiKey, _values(key))
        return self._roundtrip(self._m.ApiKey, ApiKey, key)

    def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash (the oldest, should two share it), None when unknown."""
        K = self._m.ApiKey
        row = self._by(K, "key_hash", key_hash, order=(K.created_at, K.id))
        return _record(ApiKey, row) if row else None

    def _credential_parts(self) -> tuple[tuple[str, type[pw.Model], type], ...]:
        """(column prefix, model, record) of the key, its connector and the connector's project."""
        return (
            ("k_", self._m.ApiKey, ApiKey),
            ("c_", self._m.Connector, Connector),
            ("p_", self._m.Project, Project),
        )

    def _credentials_select(
        self, param: Callable[[int], pw.Value], parts: tuple, *extra: Any
    ) -> pw.ModelSelect:
        """SELECT each part's columns, prefixed, and ``extra``: the key with this hash
        (``param(0)``), the connector ``param(1)`` and its project, by outer joins."""
        K, C, P = self._m.ApiKey, self._m.Connector, self._m.Project
        columns = [
            f.alias(prefix + f.column_name)
            for prefix, model, _ in parts
            for f in model._meta.sorted_fields
        ]
        return (
            K.select(*columns, *extra)
            .join(C, pw.JOIN.LEFT_OUTER, on=(C.id == param(1)))
            .join(P, pw.JOIN.LEFT_OUTER, on=(P.id == C.project_id))
            .where(K.key_hash == param(0))
        )

    def get_credentials(
        self, key_hash: str, connector_id: str | None
    ) -> tuple[ApiKey | None, Connector | None, Project | None]:
        """The key, its connector and the connector's project in one query."""
        K = self._m.ApiKey
        parts = self._credential_parts()

        def build(param: Callable[[int], pw.Value]) -> Any:
            return self._credentials_select(param, parts).order_by(K.created_at, K.id).limit(1)

        rows = self._prefixed_rows("get_credentials", build, [key_hash, connector_id or ""])
        if not rows:
            return None, None, None
        key, connector, project = (_prefixed_record(rows[0], *part) for part in parts)
        return key, connector, project

    def get_api_key(self, key_id: str) -> ApiKey | None:
        """The key with this id, None when unknown."""
        K = self._m.ApiKey
        row = self._by(K, "id", key_id)
        return _record(ApiKey, row) if row else None

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        """Mark a key revoked; False when unknown or revoked already (one of two callers wins)."""
        K = self._m.ApiKey
        # Conditional update: of two revocations, exactly one sees the key still live.
        query = K.update(revoked_at=at).where((K.id == key_id) & K.revoked_at.is_null())
        return self._atomically(query.execute, one_statement=True) == 1

    def create_project(self, account_id: str, name: str) -> Project:
        """Record a new project of the account. Raises NotFound for an unknown account."""
        self._require(self._m.Account, account_id, "account")
        project = Project(id=new_id("prj_"), account_id=account_id, name=name, created_at=utcnow())
        self._insert(self._m.Project, _values(project))
        return self._roundtrip(self._m.Project, Project, project)

    def get_project(self, project_id: str) -> Project | None:
        """The project with this id, None when unknown."""
        P = self._m.Project
        row = self._by(P, "id", project_id)
        return _record(Project, row) if row else None

    def update_project(self, project_id: str, **fields: Any) -> Project:
        """Set the named fields and return the project. Raises NotFound for an unknown project."""
        P = self._m.Project
        changes = self._changes(P, Project, fields)

        def work() -> dict[str, Any] | None:
            if changes:
                P.update(changes).where(P.id == project_id).execute()
            return self._first(P.select().where(P.id == project_id))

        row = self._atomically(work)
        if row is None:
            raise NotFound(f"no project {project_id}")
        return _record(Project, row)

    def change_project_settings(
        self, project_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> Project:
        """Read the settings holding the project's row (SQLite's IMMEDIATE transaction holds the
        whole database already), write ``change(settings)``: one transaction."""
        P = self._m.Project

        def work() -> dict[str, Any]:
            query = P.select(P.settings).where(P.id == project_id)
            row = self._first(query if self._is_sqlite else query.for_update())
            if row is None:
                raise NotFound(f"no project {project_id}")
            settings = change(dict(row["settings"] or {}))
            P.update(settings=settings).where(P.id == project_id).execute()
            return self._first(P.select().where(P.id == project_id))

        return _record(Project, self._atomically(work))

    def list_encrypted_auth_tokens(self) -> list[tuple[str, str]]:
        """``(project id, encrypted Auth Token)`` of every project that has a token."""
        P = self._m.Project
        query = (
            P.select(P.id, P.twilio_auth_token_encrypted)
            .where(P.twilio_auth_token_encrypted.is_null(False))
            .order_by(P.id)
            .tuples()
        )
        return [(project_id, token) for project_id, token in query if token]

    def replace_auth_token(self, project_id: str, old: str, new: str) -> bool:
        """Set the encrypted Auth Token to ``new`` only if it is still ``old``, in one statement;
        False otherwise."""
        P = self._m.Project
        # Conditional update: a token replaced meanwhile (connect-twilio) is left as it is.
        query = P.update(twilio_auth_token_encrypted=new).where(
            (P.id == project_id) & (P.twilio_auth_token_encrypted == old)
        )
        return self._atomically(query.execute, one_statement=True) == 1

    # -- senders and connectors -------------------------------------------------------------------
    def add_sender(self, sender: Sender) -> Sender:
        """Provision a sender. Raises NotFound (unknown project) or Conflict (address taken)."""
        self._require(self._m.Project, sender.project_id, "project")
        try:
            self._insert(self._m.Sender, _values(sender))
        except pw.IntegrityError as exc:
            raise Conflict(f"sender {sender.address} is provisioned already") from exc
        return self._roundtrip(self._m.Sender, Sender, sender)

    def get_sender(self, address: str) -> Sender | None:
        """The sender with this address, in whatever project; None when unknown."""
        S = self._m.Sender
        row = self._by(S, "address", address)
        return _record(Sender, row) if row else None

    def get_sender_with_project(self, address: str) -> tuple[Sender | None, Project | None]:
        """The sender with this address and its project, in one query (None where absent)."""
        S, P = self._m.Sender, self._m.Project

        def build(param: Callable[[int], pw.Value]) -> Any:
            columns = [f.alias("p_" + f.column_name) for f in P._meta.sorted_fields]
            return (
                S.select(S, *columns)
                .join(P, pw.JOIN.LEFT_OUTER, on=(P.id == S.project_id))
                .where(S.address == param(0))
                .limit(1)
            )

        row = self._row("get_sender_with_project", build, [address], S)
        if row is None:
            return None, None
        project = None
        if row["p_id"] is not None:
            fields = P._meta.sorted_fields
            project = _record(
                Project, {f.name: f.python_value(row["p_" + f.column_name]) for f in fields}
            )
        return _record(Sender, row), project

    def list_senders(self, project_id: str, environment: str | None = None) -> list[Sender]:
        """A project's senders, oldest first, optionally of one environment."""
        S = self._m.Sender

        def build(param: Callable[[int], pw.Value]) -> Any:
            query = S.select().where(S.project_id == param(0))
            if environment is not None:
                query = query.where(S.environment == param(1))
            return query.order_by(S.created_at, S.address)

        key = ("list_senders", environment is not None)
        args = [project_id] if environment is None else [project_id, environment]
        return [_record(Sender, row) for row in self._rows(key, build, args, S)]

    def update_sender(self, address: str, **fields: Any) -> Sender:
        """Set the named fields and return the sender. Raises NotFound, or Conflict when a new
        address is taken."""
        S = self._m.Sender
        changes = self._changes(S, Sender, fields)
        new_address = fields.get("address", address)

        def work() -> dict[str, Any] | None:
            if changes and not S.update(changes).where(S.address == address).execute():
                return None
            return self._first(S.select().where(S.address == new_address))

        try:
            row = self._atomically(work)
        except pw.IntegrityError as exc:
            raise Conflict(f"sender {new_address} is provisioned already") from exc
        if row is None:
            raise NotFound(f"no sender {address}")
        return _record(Sender, row)

    def create_connector(self, project_id: str, environment: str) -> Connector:
        """Record a new connector of a project's environment (NotFound: unknown project)."""
        self._require(self._m.Project, project_id, "project")
        connector = Connector(
            id=new_id("con_"), project_id=project_id, environment=environment, created_at=utcnow()
        )
        self._insert(self._m.Connector, _values(connector))
        return self._roundtrip(self._m.Connector, Connector, connector)

    def get_connector(self, connector_id: str) -> Connector | None:
        """The connector with this id, None when unknown."""
        C = self._m.Connector
        row = self._by(C, "id", connector_id)
        return _record(Connector, row) if row else None

    # -- dashboard sign-ins -----------------------------------------------------------------------
    def add_dashboard_sign_in(self, sign_in: DashboardSignIn) -> DashboardSignIn:
        """Record a new sign-in. Raises Conflict when its id is taken."""
        try:
            self._insert(self._m.DashboardSignIn, _values(sign_in))
        except pw.IntegrityError as exc:
            raise Conflict("a dashboard sign-in with this id exists") from exc
        return self._roundtrip(self._m.DashboardSignIn, DashboardSignIn, sign_in)

    def get_dashboard_sign_in(self, sign_in_id: str) -> DashboardSignIn | None:
        """The sign-in with this id (ended ones too), None when unknown."""
        row = self._by(self._m.DashboardSignIn, "id", sign_in_id)
        return _record(DashboardSignIn, row) if row else None

    def touch_dashboard_sign_in(self, sign_in_id: str, at: datetime) -> bool:
        """Set ``last_seen_at`` of a sign-in not ended; False when it is unknown or ended."""
        D = self._m.DashboardSignIn
        query = D.update(last_seen_at=at).where((D.id == sign_in_id) & D.ended_at.is_null())
        return self._atomically(query.execute, one_statement=True) == 1

    def end_dashboard_sign_in(self, sign_in_id: str, at: datetime, reason: str) -> bool:
        """End a sign-in: True for the one caller that ended it, False for every other."""
        D = self._m.DashboardSignIn
        # Conditional update: of two ends (sign-out here, a timeout there), one is recorded.
        query = D.update(ended_at=at, end_reason=reason).where(
            (D.id == sign_in_id) & D.ended_at.is_null()
        )
        return self._atomically(query.execute, one_statement=True) == 1
