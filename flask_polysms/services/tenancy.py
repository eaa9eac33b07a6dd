"""Who is calling: accounts, API keys and connectors resolved to (account, project, environment)."""

from __future__ import annotations

from dataclasses import dataclass

from ..authorisation import AUTH_HEADER, CONNECTOR_HEADER, refusal
from ..clock import utcnow
from ..crypto import hash_api_key, key_prefix, new_api_key
from ..errors import Unauthorized
from ..ports.store import Store
from ..records import ApiKey, Connector, Project, Sender

#: What an outbound message chooses its sender from: the environment's senders, the user's last
#: agent number, and the senders the user opted out from.
OutboundSenders = tuple[list[Sender], str | None, frozenset[str]]

__all__ = ["AUTH_HEADER", "CONNECTOR_HEADER", "Tenant", "authenticate", "issue_api_key"]


@dataclass(frozen=True)
class Tenant:
    """The caller of an authenticated route: everything it may see is inside ``project``."""

    account_id: str
    project: Project
    environment: str
    connector: Connector
    api_key_id: str

    @property
    def project_id(self) -> str:
        return self.project.id

    @classmethod
    def of(cls, key: ApiKey, connector: Connector, project: Project) -> Tenant:
        """The caller these credentials (already authorised) name."""
        return cls(
            account_id=key.account_id,
            project=project,
            environment=connector.environment,
            connector=connector,
            api_key_id=key.id,
        )


def issue_api_key(store: Store, account_id: str) -> tuple[str, str]:
    """Create a key for the account; returns (key id, the key itself — shown once, never stored)."""
    key = new_api_key()
    record = store.add_api_key(account_id, hash_api_key(key), key_prefix(key))
    return record.id, key


def authenticate(store: Store, api_key: str | None, connector_id: str | None) -> Tenant:
    """The caller named by the two auth headers, or the product's error (see
    :func:`flask_polysms.authorisation.refusal`): reads the headers' credentials only."""
    if not api_key:
        raise Unauthorized(f"missing {AUTH_HEADER} header")
    # Looked up by hash: the comparison happens on a digest inside the store's index, not in Python.
    # Key, connector and project come together (one round trip on the database backends).
    key, connector, project = store.get_credentials(hash_api_key(api_key), connector_id)
    return _authorised(key, connector, project, connector_id)


def authenticate_with_senders(
    store: Store, api_key: str | None, connector_id: str | None, user_number: str
) -> tuple[Tenant, OutboundSenders]:
    """:func:`authenticate`, and the senders a message to ``user_number`` chooses from (see
    :meth:`~flask_polysms.ports.store.Store.senders_for_outbound`), read together."""
    if not api_key:
        raise Unauthorized(f"missing {AUTH_HEADER} header")
    key, connector, project, senders = store.get_credentials_and_senders(
        hash_api_key(api_key), connector_id, user_number
    )
    return _authorised(key, connector, project, connector_id), senders


def _authorised(key, connector, project, connector_id: str | None) -> Tenant:
    problem = refusal(key, connector, project, connector_named=bool(connector_id))
    if problem is not None:
        raise problem
    return Tenant.of(key, connector, project)


def revoke_api_key(store: Store, key_id: str) -> bool:
    """Revoke a key at once; False when unknown or revoked already."""
    return store.revoke_api_key(key_id, utcnow())
