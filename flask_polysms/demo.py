"""The demo tenant of ``flask polysms demo``: provisioned once, remembered in the instance folder
(a private file), printed as a working curl."""

from __future__ import annotations

from pathlib import Path

from .services import provisioning
from .services.tenancy import revoke_api_key

#: The file in the app's instance folder that remembers the demo tenant, its API key included, so
#: ``flask polysms demo`` prints the same working curl every time. A demo convenience only: a real
#: deployment keeps no key, only its hash.
DEMO_RECORD = "demo.json"
#: ``app.extensions[DEMO_SETUP]``: a host app's ``setup(state, record)``, called in the transaction
#: that provisions a new demo tenant, to add its own demo data (templates, variants, the curl's
#: ``record["message"]``).
DEMO_SETUP = "polysms_demo_setup"
DEMO_NUMBER = "+14155550100"
DEMO_USER = "+14155552672"
DEMO_MESSAGE = "Hello from flask-polysms!"


def write_private_file(path, text: str, *, replace: bool = True) -> bool:
    """Write ``text`` to ``path``, readable and writable by its owner only from its first moment.

    The text goes to a new file created with mode 0600, which then takes the place of ``path``:
    no reader sees a half-written file or a moment of wider permissions. With ``replace=False``
    an existing ``path`` is kept (another process created it first) and False is returned.
    """
    import os
    import secrets

    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)  # fails when the file exists: creation is exclusive
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def read_private_file(path) -> str | None:
    """The text of a file written by :func:`write_private_file`, or None when there is none.

    A file left readable by others (by an older version) is made private first.
    """
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        path.chmod(0o600)
    return path.read_text(encoding="utf-8")


def demo_record_path(app) -> Path:
    """Where the app's demo tenant is recorded: ``demo.json`` in its instance folder."""
    return Path(app.instance_path) / DEMO_RECORD


def read_demo_record(app) -> dict | None:
    """The recorded demo tenant of ``app`` (ids, API key), or None."""
    import json

    text = read_private_file(demo_record_path(app))
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None  # a damaged record: a new demo tenant replaces it
    return record if isinstance(record, dict) else None


def _demo_signs_in(state, record: dict) -> bool:
    """The recorded key and connector still authenticate and the environment has a sender."""
    from .errors import PolySMSError
    from .services.tenancy import authenticate

    try:
        tenant = authenticate(state.store, record.get("api_key"), record.get("connector_id"))
    except PolySMSError:
        return False
    return tenant.project_id == record.get("project_id") and bool(
        state.store.list_senders(tenant.project_id, tenant.environment)
    )


def _retire_demo(state, record: dict) -> None:
    """Revoke the API key of a demo tenant that is being replaced."""
    from .crypto import hash_api_key

    key = state.store.get_api_key_by_hash(hash_api_key(record.get("api_key") or ""))
    if key is not None and key.revoked_at is None:
        revoke_api_key(state.store, key.id)


def _provision_demo(state, old: dict | None, number, environment, account_sid, auth_token) -> dict:
    import secrets

    from .phone import is_e164, is_messaging_service_sid

    # Checked before anything is written.
    environment = provisioning.environment_name(environment)
    if not (is_e164(number) or is_messaging_service_sid(number)):
        raise provisioning.ProvisioningError(
            f"{number!r} is neither an E.164 number (+14155552671) nor a Messaging Service SID "
            "(MG + 32 hex characters)"
        )
    holder = state.store.get_sender(number)
    if holder is not None and holder.project_id != (old or {}).get("project_id"):
        raise provisioning.ProvisioningError(
            f"{number} is provisioned already, in a project that is not the demo's: "
            "choose another with --number"
        )
    generated = not (account_sid and auth_token)
    if generated:  # made-up credentials: good for the local Twilio emulator only
        account_sid, auth_token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
    if old is not None:
        _retire_demo(state, old)
    account = provisioning.create_account(state, "Demo")
    project = provisioning.create_project(state, account.id, "Demo")
    provisioning.connect_twilio(state, project.id, account_sid, auth_token)
    if holder is None:
        provisioning.add_sender(state, project.id, number, environment)
    else:  # the number of the demo tenant being replaced moves to the new one, out of its pool
        state.store.update_sender(
            number, project_id=project.id, environment=environment, messaging_service_sid=None
        )
    connector = provisioning.create_connector(state, project.id, environment)
    _, api_key = provisioning.create_api_key(state, account.id)
    record = {
        "account_id": account.id,
        "project_id": project.id,
        "connector_id": connector.id,
        "api_key": api_key,
        "number": number,
        "environment": environment,
        "twilio_account_sid": account_sid,
    }
    if generated:
        # Only made-up credentials are written down; a real Auth Token stays encrypted in the
        # database alone.
        record["twilio_auth_token"] = auth_token
    return record


def demo_tenant(
    state,
    *,
    reset: bool = False,
    number: str = DEMO_NUMBER,
    environment: str = "live",
    account_sid: str | None = None,
    auth_token: str | None = None,
) -> tuple[dict, bool]:
    """The app's demo tenant and whether it was created now: the recorded one while its key and
    connector still sign in, else (or with ``reset``) a new one, which is then recorded.

    A new tenant replaces the recorded one: that one's API key is revoked and its number moves
    over. The options apply only to a new tenant. Raises ProvisioningError on bad options.
    """
    import json

    app = state.app
    old = read_demo_record(app)
    if old is not None and not reset and _demo_signs_in(state, old):
        return old, False
    setup = app.extensions.get(DEMO_SETUP)

    def provision() -> dict:
        record = _provision_demo(state, old, number, environment, account_sid, auth_token)
        if setup is not None:
            setup(state, record)
        return record

    record = state.store.atomic(provision)
    path = demo_record_path(app)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, json.dumps(record, indent=2) + "\n")
    return record, True


def demo_curl(record: dict, base_url: str, url_prefix: str = "") -> str:
    """The curl command that sends the demo tenant's first message through the app."""
    import json
    import shlex

    body = json.dumps(
        {"user_number": DEMO_USER, "message": record.get("message") or DEMO_MESSAGE},
        ensure_ascii=False,
    )
    return (
        f"curl -X POST {base_url.rstrip('/')}{url_prefix}/v1/outbound-sms "
        f"-H {shlex.quote('X-PolyAi-Auth-Token: ' + record['api_key'])} "
        f"-H {shlex.quote('X-TOKEN-ID: ' + record['connector_id'])} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
