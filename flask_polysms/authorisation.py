"""The one rule that lets a caller in, and the headers that carry its credentials.

A request is let in when it names a live API key of the account that owns the connector's
project. The API's authentication, the dashboard's sign-in checks and the store all ask
:func:`refusal` (or :func:`authorises`), so the rule is written once.
"""

from __future__ import annotations

from .errors import Forbidden, InvalidInput, NotFoundError, PolySMSError, Unauthorized
from .records import ApiKey, Connector, Project

AUTH_HEADER = "X-PolyAi-Auth-Token"
CONNECTOR_HEADER = "X-TOKEN-ID"


def refusal(
    key: ApiKey | None,
    connector: Connector | None,
    project: Project | None,
    *,
    connector_named: bool = True,
) -> PolySMSError | None:
    """Why these credentials may not act, in the product's order (401 for the key, 400 for a
    connector not named, 404 for an unknown one, 403 for another account's); None when they may.
    """
    if key is None or key.revoked_at is not None:
        return Unauthorized(f"invalid {AUTH_HEADER}")
    if not connector_named:
        return InvalidInput(f"{CONNECTOR_HEADER} header is required")
    if connector is None or project is None:
        return NotFoundError("connector not found")
    if project.account_id != key.account_id:
        return Forbidden("the API key's account does not own this connector")
    return None


def authorises(key: ApiKey | None, connector: Connector | None, project: Project | None) -> bool:
    """Whether the credentials may act (:func:`refusal` finds nothing against them)."""
    return refusal(key, connector, project) is None
