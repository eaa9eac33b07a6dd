"""Who is calling: accounts, API keys and connectors resolved to (account, project, environment)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .clock import utcnow
from .crypto import hash_api_key, key_prefix, new_api_key
from .errors import Forbidden, InvalidInput, NotFoundError, Unauthorized
from .records import Connector, Project, Sender
from .store import Store

AUTH_HEADER = "X-PolyAi-Auth-Token"
CONNECTOR_HEADER = "X-TOKEN-ID"


@dataclass(frozen=True)
class Tenant:
    """The caller of an authenticated route: everything it may see is inside ``project``."""

    account_id: str
    project: Project
    environment: str
    connector: Connector
    api_key_id: str
    # Read with the credentials when the caller said whose senders it would need:
    # (user number, the environment's senders, the user's last agent number).
    senders_for: tuple[str, list[Sender], str | None] | None = field(default=None, compare=False)

    @property
    def project_id(self) -> str:
        return self.project.id


def issue_api_key(store: Store, account_id: str) -> tuple[str, str]:
    """Create a key for the account; returns (key id, the key itself — shown once, never stored)."""
    key = new_api_key()
    record = store.add_api_key(account_id, hash_api_key(key), key_prefix(key))
    return record.id, key


def authenticate(
    store: Store,
    api_key: str | None,
    connector_id: str | None,
    senders_for_user: str | None = None,
) -> Tenant:
    """Resolve the two auth headers, with the product's rules: 401 for a missing or invalid key
    (revoked included), 400 for a missing connector header, 404 for an unknown connector, 403
    when the key's account is not the connector's account.

    ``senders_for_user``: a user number whose senders the request will read (an outbound
    request's ``user_number``); they come with the credentials, in ``Tenant.senders_for``.
    """
    if not api_key:
        raise Unauthorized(f"missing {AUTH_HEADER} header")
    # Looked up by hash: the comparison happens on a digest inside the store's index, not in Python.
    # Key, connector and project come together (one round trip on the database backends).
    senders = None
    if senders_for_user is None:
        key, connector, project = store.get_credentials(hash_api_key(api_key), connector_id)
    else:
        key, connector, project, senders = store.get_credentials_and_senders(
            hash_api_key(api_key), connector_id, senders_for_user
        )
    if key is None or key.revoked_at is not None:
        raise Unauthorized(f"invalid {AUTH_HEADER}")
    if not connector_id:
        raise InvalidInput(f"{CONNECTOR_HEADER} header is required")
    if connector is None:
        raise NotFoundError("connector not found")
    if project is None:
        raise NotFoundError("connector not found")
    if project.account_id != key.account_id:
        raise Forbidden("the API key's account does not own this connector")
    return Tenant(
        account_id=key.account_id,
        project=project,
        environment=connector.environment,
        connector=connector,
        api_key_id=key.id,
        senders_for=None if senders is None else (senders_for_user, *senders),
    )


def revoke_api_key(store: Store, key_id: str) -> bool:
    """Revoke a key at once; False when unknown or revoked already."""
    return store.revoke_api_key(key_id, utcnow())
