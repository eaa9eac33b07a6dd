"""Setting up tenants: accounts, projects, Twilio connections, senders, connectors, API keys.

Shared by the CLI and the testing helpers; every function validates before it writes, so bad input
changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..clock import utcnow
from ..phone import is_e164, is_messaging_service_sid
from ..records import Project, Sender, canonical_environment, new_id
from .sender_facts import describe_address
from .tenancy import issue_api_key

if TYPE_CHECKING:
    from .state import PolySMSState

ACCOUNT_SID_PATTERN = "AC + 32 hex characters"


class ProvisioningError(ValueError):
    """Input that cannot be provisioned; the message says why."""


def environment_name(name: str) -> str:
    env = canonical_environment(name)
    if env is None:
        raise ProvisioningError(
            f"unknown environment {name!r}: use sandbox (or dev), pre-release or live"
        )
    return env


def _project(state: PolySMSState, project_id: str) -> Project:
    project = state.store.get_project(project_id)
    if project is None:
        raise ProvisioningError(f"no project {project_id!r}")
    return project


def create_account(state: PolySMSState, name: str):
    if not name or not name.strip():
        raise ProvisioningError("an account needs a name")
    return state.store.create_account(name.strip())


def create_project(state: PolySMSState, account_id: str, name: str) -> Project:
    if state.store.get_account(account_id) is None:
        raise ProvisioningError(f"no account {account_id!r}")
    if not name or not name.strip():
        raise ProvisioningError("a project needs a name")
    return state.store.create_project(account_id, name.strip())


def connect_twilio(state: PolySMSState, project_id: str, account_sid: str, auth_token: str):
    """Store the project's Twilio credentials; the token is encrypted before it is written."""
    _project(state, project_id)
    if not (account_sid.startswith("AC") and len(account_sid) == 34):
        raise ProvisioningError(f"Twilio Account SID must be {ACCOUNT_SID_PATTERN}")
    if not auth_token or len(auth_token) < 16:
        raise ProvisioningError("Twilio Auth Token looks wrong (expected 32 characters)")
    return state.store.update_project(
        project_id,
        twilio_account_sid=account_sid,
        twilio_auth_token_encrypted=state.cipher.encrypt(auth_token),
    )


def add_sender(
    state: PolySMSState,
    project_id: str,
    address: str,
    environment: str,
    *,
    registration: str | None = None,
    campaign_id: str | None = None,
    messaging_service_sid: str | None = None,
) -> Sender:
    """Provision an E.164 number or Messaging Service SID for one environment of a project.

    ``messaging_service_sid``: the Messaging Service (provisioned for the project) the number
    belongs to. A number the project already has in that environment then only joins the
    service, so that numbers provisioned before their service can be put in it.
    """
    from ..ports.store import Conflict

    _project(state, project_id)
    env = environment_name(environment)
    if not (is_e164(address) or is_messaging_service_sid(address)):
        raise ProvisioningError(
            f"{address!r} is neither an E.164 number (+14155552671) nor a Messaging Service SID "
            "(MG + 32 hex characters)"
        )
    facts = describe_address(address)
    sender = Sender(
        id=new_id("snd_"),
        project_id=project_id,
        environment=env,
        address=address,
        created_at=utcnow(),
        kind=facts["kind"],
        country=facts["country"],
        number_type=facts["number_type"],
    )
    if registration is not None or campaign_id is not None:
        from ..errors import PolySMSError
        from .senders import check_registration

        try:
            check_registration(sender, registration or "unknown", campaign_id)
        except PolySMSError as exc:
            raise ProvisioningError(exc.detail) from exc
        sender.registration = registration or "unknown"
        sender.campaign_id = campaign_id
    if messaging_service_sid is not None:
        from .pools import membership_problem

        problem = membership_problem(state, sender, messaging_service_sid)
        if problem is not None:
            raise ProvisioningError(f"--messaging-service: {problem}")
        sender.messaging_service_sid = messaging_service_sid
    try:
        return state.store.add_sender(sender)
    except Conflict as exc:
        existing = state.store.get_sender(address)
        joins = (
            messaging_service_sid is not None
            and registration is None
            and campaign_id is None
            and existing is not None
            and (existing.project_id, existing.environment) == (project_id, env)
        )
        if joins:
            return state.store.update_sender(address, messaging_service_sid=messaging_service_sid)
        raise ProvisioningError(f"{address} is provisioned already") from exc


def create_connector(state: PolySMSState, project_id: str, environment: str):
    _project(state, project_id)
    return state.store.create_connector(project_id, environment_name(environment))


def create_api_key(state: PolySMSState, account_id: str) -> tuple[str, str]:
    """(key id, key): the key is shown once and only its hash is kept."""
    if state.store.get_account(account_id) is None:
        raise ProvisioningError(f"no account {account_id!r}")
    return issue_api_key(state.store, account_id)


def set_variant(
    state: PolySMSState, project_id: str, environment: str, attribute: str, value: str
) -> dict[str, str]:
    """Set one variant attribute (``${attribute}`` in templates) of the project's
    ``environment``; returns that environment's attributes."""
    if not attribute or not attribute.replace("_", "a").isascii() or not attribute.isidentifier():
        raise ProvisioningError(f"attribute {attribute!r}: ASCII letters, digits and _ only")
    env = environment_name(environment)
    _project(state, project_id)

    def changed(settings: dict[str, Any]) -> dict[str, Any]:
        variants = {name: dict(values) for name, values in (settings.get("variants") or {}).items()}
        variants.setdefault(env, {})[attribute] = value
        return {**settings, "variants": variants}

    # Applied to the settings as stored when it runs: a change made meanwhile is kept.
    project = state.store.change_project_settings(project_id, changed)
    return project.settings["variants"][env]
