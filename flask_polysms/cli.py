"""``flask polysms ...``: set up tenants, run workers and the sweep."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .cli_opt_outs import opt_outs_cli
from .demo import (  # noqa: F401 - re-exported: example_app and tests import them from here
    DEMO_MESSAGE,
    DEMO_NUMBER,
    DEMO_RECORD,
    DEMO_SETUP,
    DEMO_USER,
    demo_curl,
    demo_record_path,
    demo_tenant,
    read_demo_record,
    read_private_file,
    write_private_file,
)
from .ports.schedulers.base import LANES
from .ports.store import SchemaError, SchemaTooNew, SchemaVersion, migration_number
from .services import provisioning
from .services.state import get_state
from .services.tenancy import revoke_api_key

polysms_cli = AppGroup("polysms", help="flask-polysms: tenants, senders, workers and timers.")
polysms_cli.add_command(opt_outs_cli)


def _state():
    return get_state(current_app._get_current_object())


def _run(func, *args, **kwargs):
    """Call a provisioning function; its error is one line and a non-zero exit."""
    try:
        return func(_state(), *args, **kwargs)
    except provisioning.ProvisioningError as exc:
        raise click.ClickException(str(exc)) from exc


@polysms_cli.command("init-db")
def init_db() -> None:
    """Create the tables and indexes: `db upgrade`, from an empty database or not (idempotent)."""
    version = _upgrade_schema()
    ready = "polysms schema ready"
    click.echo(ready if version is None else f"{ready} at {_version_name(version.current)}")


db_cli = AppGroup("db", help="The database schema: its version and its migrations.")
polysms_cli.add_command(db_cli)


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations the database lacks, in order (idempotent).

    A database made by flask-polysms 0.1.0 (its tables, no migration history) is recognised: its
    first migration is recorded without running, the later ones applied, every row kept.
    """
    version = _upgrade_schema()
    if version is None:
        click.echo("this store keeps no schema versions: nothing to upgrade")
    else:
        click.echo(_describe_version(version))


@db_cli.command("current")
def db_current() -> None:
    """Print the schema's version and whether it is up to date; exit 1 when it is not, so a
    deployment can wait for `flask polysms db upgrade`."""
    store = _state().store
    try:
        version = store.schema_version()
        if version is not None and version.unknown:
            raise SchemaTooNew(version)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from exc
    if version is None:
        click.echo("this store keeps no schema versions")
        return
    click.echo(_describe_version(version))
    if not version.up_to_date:
        raise click.exceptions.Exit(1)


def _upgrade_schema() -> SchemaVersion | None:
    """Upgrade the store's schema, naming each migration recorded or applied; the version
    reached (None for a store without versions). A refusal is one line and exit status 1."""
    store = _state().store
    try:
        done = store.upgrade_schema()
        version = store.schema_version()
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from exc
    for name in done.recorded:
        click.echo(f"recorded {name}: its tables were there already (made without a history)")
    for name in done.applied:
        click.echo(f"applied {name}")
    return version


def _version_name(name: str | None) -> str:
    return "no schema" if name is None else f"version {migration_number(name)} ({name})"


def _describe_version(version: SchemaVersion) -> str:
    """One line: the version, then what is missing and how to add it."""
    text = _version_name(version.current)
    if version.up_to_date:
        return f"{text}, up to date"
    parts = [text]
    if version.unrecorded:
        parts.append(
            "found without a migration history (made by flask-polysms 0.1.0): "
            + ", ".join(version.unrecorded)
        )
    if version.pending:
        count = len(version.pending)
        parts.append(
            f"{count} migration{'s' if count > 1 else ''} pending: {', '.join(version.pending)}"
        )
    return "; ".join(parts) + "; run `flask polysms db upgrade`"


@polysms_cli.command("create-account")
@click.argument("name")
def create_account(name: str) -> None:
    """Create an account; prints its id."""
    click.echo(_run(provisioning.create_account, name).id)


@polysms_cli.command("create-project")
@click.argument("account_id")
@click.argument("name")
def create_project(account_id: str, name: str) -> None:
    """Create a project in an account; prints its id."""
    click.echo(_run(provisioning.create_project, account_id, name).id)


@polysms_cli.command("connect-twilio")
@click.argument("project_id")
@click.argument("account_sid")
@click.option("--auth-token", prompt=True, hide_input=True, help="read from a prompt if absent")
def connect_twilio(project_id: str, account_sid: str, auth_token: str) -> None:
    """Store a project's Twilio Account SID and (encrypted) Auth Token."""
    _run(provisioning.connect_twilio, project_id, account_sid, auth_token)
    click.echo(f"project {project_id} connected to Twilio account {account_sid}")


@polysms_cli.command("add-number")
@click.argument("project_id")
@click.argument("address")
@click.option("--environment", "-e", default="live", show_default=True)
@click.option("--registration", default=None, help="unknown, registered, not_registered, ...")
@click.option("--campaign-id", default=None)
@click.option(
    "--messaging-service",
    "messaging_service_sid",
    default=None,
    metavar="MG…",
    help="the Messaging Service (provisioned for the project) the number belongs to; a number "
    "already provisioned joins it",
)
def add_number(
    project_id, address, environment, registration, campaign_id, messaging_service_sid
) -> None:
    """Provision an E.164 number or a Messaging Service SID for an environment."""
    sender = _run(
        provisioning.add_sender,
        project_id,
        address,
        environment,
        registration=registration,
        campaign_id=campaign_id,
        messaging_service_sid=messaging_service_sid,
    )
    pool = f", in {sender.messaging_service_sid}" if sender.messaging_service_sid else ""
    click.echo(
        f"{sender.address} ({sender.number_type or sender.kind}, {sender.country or 'unknown'}"
        f"{pool}) provisioned for {sender.environment}"
    )


@polysms_cli.command("create-connector")
@click.argument("project_id")
@click.option("--environment", "-e", default="live", show_default=True)
def create_connector(project_id: str, environment: str) -> None:
    """Create a connector (the X-TOKEN-ID) for a project's environment; prints its id."""
    click.echo(_run(provisioning.create_connector, project_id, environment).id)


@polysms_cli.command("create-api-key")
@click.argument("account_id")
def create_api_key(account_id: str) -> None:
    """Create an API key; prints 'KEY_ID KEY'. The key is shown this once only."""
    key_id, key = _run(provisioning.create_api_key, account_id)
    click.echo(f"{key_id} {key}")


@polysms_cli.command("create-template")
@click.argument("project_id")
@click.argument("title")
@click.argument("body")
@click.option(
    "--sender",
    "senders",
    multiple=True,
    required=True,
    metavar="ENV=ADDRESS",
    help="the template's sender in an environment (a number or an MG SID); live is required",
)
def create_template_command(project_id: str, title: str, body: str, senders: tuple[str, ...]):
    """Save an SMS template (tokens: ${attribute}, {{entity:name}}, {{vrbl:ID}}); prints its id."""
    from .errors import PolySMSError
    from .services.templates import create_template

    env_phone_numbers = {}
    for given in senders:
        environment, sep, address = given.partition("=")
        if not sep:
            raise click.BadParameter(f"{given!r}: write ENV=ADDRESS", param_hint="--sender")
        try:
            env_phone_numbers[provisioning.environment_name(environment)] = address
        except provisioning.ProvisioningError as exc:
            raise click.BadParameter(str(exc), param_hint="--sender") from exc
    try:
        template = create_template(
            _state(), project_id, title=title, body=body, env_phone_numbers=env_phone_numbers
        )
    except PolySMSError as exc:
        problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in (exc.errors or {}).items())
        raise click.ClickException(f"{exc.detail}{': ' + problems if problems else ''}") from exc
    click.echo(template.id)


@polysms_cli.command("set-variant")
@click.argument("project_id")
@click.argument("environment")
@click.argument("attribute")
@click.argument("value")
def set_variant_command(project_id: str, environment: str, attribute: str, value: str) -> None:
    """Set a variant attribute of an environment (what ${attribute} becomes in templates)."""
    values = _run(provisioning.set_variant, project_id, environment, attribute, value)
    click.echo(", ".join(f"{k}={v}" for k, v in sorted(values.items())))


@polysms_cli.command("revoke-api-key")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke an API key at once."""
    if not revoke_api_key(_state().store, key_id):
        raise click.ClickException(f"no active API key {key_id!r}")
    click.echo(f"revoked {key_id}")


@polysms_cli.command("rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored Twilio Auth Token and webhook secret with the first
    POLYSMS_ENCRYPTION_KEYS key.

    Run it after putting a new key first in the list (with the old keys still after it), on
    every process. Idempotent: tokens under the first key already are left as they are. Exits
    with status 1 when a token opens with no key of the list (it is left untouched).
    """
    from .crypto import rotate_stored_tokens, rotate_stored_webhook_secrets

    state = _state()
    try:
        result = rotate_stored_tokens(state.store, state.cipher)
    except NotImplementedError as exc:
        raise click.ClickException(str(exc)) from exc
    secrets = rotate_stored_webhook_secrets(state.store, state.cipher)
    click.echo(
        f"{result.rotated} Twilio Auth Token(s) re-encrypted with the first key, "
        f"{result.current} already under it"
    )
    click.echo(
        f"{secrets.rotated} webhook secret(s) re-encrypted with the first key, "
        f"{secrets.current} already under it"
    )
    if result.unreadable:
        click.echo(
            f"{len(result.unreadable)} token(s) open with no key of POLYSMS_ENCRYPTION_KEYS "
            f"(projects {', '.join(result.unreadable)}): add the key they were stored under, "
            "or run connect-twilio again for them",
            err=True,
        )
    if secrets.unreadable:
        click.echo(
            f"{len(secrets.unreadable)} webhook secret(s) open with no key of "
            f"POLYSMS_ENCRYPTION_KEYS (subscriptions {', '.join(secrets.unreadable)}): add the "
            "key they were stored under, or subscribe again",
            err=True,
        )
    if result.unreadable or secrets.unreadable:
        click.get_current_context().exit(1)


@polysms_cli.command("sweep")
def sweep_command() -> None:
    """Fire every overdue session timer and enqueue again the work whose job was lost (or never
    reached Redis); print what it did. Every worker also sweeps by itself every few seconds.
    Exits 1 when Redis could not be reached (nothing could be enqueued)."""
    from .services.lifecycle import run_sweep

    report = run_sweep(_state())
    for line in report.lines():
        click.echo(line)
    if report.broker_reachable is False:
        click.get_current_context().exit(1)


@polysms_cli.command("worker")
@click.option(
    "--simple/--fork",
    default=True,
    show_default=True,
    help="SimpleWorker runs jobs in-process (fast); --fork forks a work-horse per job",
)
@click.option("--burst", is_flag=True, help="stop when the queue is empty")
@click.option(
    "--lane",
    "lanes",
    multiple=True,
    type=click.Choice(LANES),
    help="take jobs of this lane only (repeat for several; default: every lane, main first)",
)
def worker(simple: bool, burst: bool, lanes: tuple[str, ...]) -> None:
    """Run an RQ worker with its scheduler, every job in this app's context.

    Its exit takes seconds, also with --burst, and its scheduler process ends with it. Event
    deliveries, which wait on the projects' receivers, have a lane (an RQ queue) of their own:
    workers given ``--lane deliveries`` and others given ``--lane main`` keep a receiver that
    hangs from holding up sends.
    """
    from .jobs import set_worker_app
    from .ports.schedulers import RQScheduler, keep_worker, worker_class

    state = _state()
    if not isinstance(state.scheduler, RQScheduler):
        raise click.ClickException("the worker needs POLYSMS_SCHEDULER = 'rq'")
    set_worker_app(current_app._get_current_object())
    # Never carry a database connection across the fork of a work-horse: pooled
    # idle ones included. SimpleWorker jobs then share one pooled connection, job after job.
    state.store.disconnect()
    if not simple:
        from .jobs import preload

        preload()  # once here, not once per work horse (~0.5 s each)
    queues = [state.scheduler.queues[lane] for lane in LANES if lane in (lanes or LANES)]
    w = worker_class(fork=not simple)(
        queues, connection=state.scheduler.connection, serializer=queues[0].serializer
    )
    # Reports the worker alive, runs the sweep every few seconds (not in burst mode).
    keeper = keep_worker(state.scheduler, w, burst=burst)
    try:
        w.work(with_scheduler=True, burst=burst)
    finally:
        keeper.stop()


def _sender_service(func, *args, **kwargs):
    """Call a sender service; its PolySMSError is one line and a non-zero exit."""
    from .errors import PolySMSError

    try:
        return func(_state(), *args, **kwargs)
    except PolySMSError as exc:
        raise click.ClickException(exc.detail) from exc


@polysms_cli.command("set-registration")
@click.argument("address")
@click.argument("state")
@click.option(
    "--campaign-id",
    default=None,
    help="the A2P 10DLC campaign id; required with 'registered' for a US long code",
)
def set_registration_command(address: str, state: str, campaign_id: str | None) -> None:
    """Record the registration STATE of the sender ADDRESS.

    STATE is one of unknown, registered, not_registered, verified, not_verified, not_required.
    Without --campaign-id, 'registered' keeps the recorded campaign id and any other state clears
    it. The sender's remaining compliance problems are printed after it.
    """
    from .services.senders import UNSET, sender_compliance, set_registration

    sender = _sender_service(
        set_registration, address, state, UNSET if campaign_id is None else campaign_id
    )
    click.echo(
        f"{sender.address}: registration {sender.registration}"
        + (f", campaign {sender.campaign_id}" if sender.campaign_id else "")
    )
    # Destinations are left out: this is about the state just recorded, not the traffic.
    for problem in _sender_service(sender_compliance, sender, ())["problems"]:
        click.echo(f"  {problem['severity']}: {problem['message']}")


def _report_lines(report: dict) -> list[str]:
    """One compliance report as indented human-readable lines."""
    what = " ".join(str(part) for part in (report["country"], report["number_type"]) if part)
    head = (
        f"{report['sender']} ({report['environment']}): {what or 'unknown type'}, "
        f"registration {report['registration']}"
    )
    if report["campaign_id"]:
        head += f", campaign {report['campaign_id']}"
    lines = [head]
    if report["blocked"]:
        guard = "on" if report["guard_enabled"] else "off for this project"
        lines.append(f"  BLOCKED by the sender guard (guard {guard})")
    if report["missing"]:
        lines.append(f"  missing: {'; '.join(report['missing'])}")
    mps = report["throughput"]["mps"]
    lines.append(
        f"  throughput: {'unknown' if mps is None else f'{mps} MPS'}"
        + (f" - {report['throughput']['note']}" if report["throughput"]["note"] else "")
    )
    for problem in report["problems"]:
        lines.append(f"  {problem['severity']}: {problem['message']}")
    two_way = {True: "two-way", False: "no two-way", None: "two-way unknown"}
    destinations = ", ".join(
        f"{d['country']} {two_way[d['two_way']]}" for d in report["destinations"]
    )
    source = report["destinations_source"]
    if report["destinations_truncated"]:
        source += ", newest only"
    lines.append(f"  destinations ({source}): {destinations or 'none'}")
    return lines


@polysms_cli.command("check-senders")
@click.option(
    "--project",
    "project_ids",
    multiple=True,
    metavar="PROJECT_ID",
    help="a project to check (repeatable); required: the Store cannot list every project",
)
@click.option("--json", "as_json", is_flag=True, help="print the reports as JSON")
def check_senders(project_ids: tuple[str, ...], as_json: bool) -> None:
    """Print the compliance report of every sender of the projects.

    Exits with status 1 when the send-time guard blocks any live sender (carriers would drop that
    traffic even with the guard turned off), so a deployment check can fail on it.
    """
    import json

    from .services.senders import project_compliance

    if not project_ids:
        raise click.ClickException(
            "name the project to check with --project PROJECT_ID (repeatable)"
        )
    reports = []
    for project_id in project_ids:
        reports.extend(_sender_service(project_compliance, project_id))
    blocked = [r["sender"] for r in reports if r["environment"] == "live" and r["blocked"]]
    if as_json:
        click.echo(json.dumps({"senders": reports, "blocked_live_senders": blocked}, indent=2))
    else:
        for project_id in project_ids:
            click.echo(f"project {project_id}")
            for report in reports:
                if report["project_id"] == project_id:
                    click.echo("\n".join("  " + line for line in _report_lines(report)))
        if blocked:
            click.echo(
                f"{len(blocked)} live sender(s) blocked by the sender guard: {', '.join(blocked)}"
            )
        else:
            click.echo("no live sender is blocked by the sender guard")
    if blocked:
        click.get_current_context().exit(1)


# -- the demo tenant ------------------------------------------------------------------------------


@polysms_cli.command("demo")
@click.option("--number", default=DEMO_NUMBER, show_default=True, help="the sender to add")
@click.option("--environment", "-e", default="live", show_default=True)
@click.option(
    "--account-sid", envvar="TWILIO_ACCOUNT_SID", default=None, help="$TWILIO_ACCOUNT_SID"
)
@click.option("--auth-token", envvar="TWILIO_AUTH_TOKEN", default=None, help="$TWILIO_AUTH_TOKEN")
@click.option(
    "--url",
    default=None,
    help="where the app runs  [default: POLYSMS_PUBLIC_URL or SERVER_NAME, else "
    "http://127.0.0.1:5000]",
)
@click.option(
    "--reset", is_flag=True, help="revoke the demo's API key and provision a new demo tenant"
)
def demo(number, environment, account_sid, auth_token, url, reset) -> None:
    """Print a working curl for the demo tenant, provisioning it on the first run.

    The demo tenant (account, project, number, connector, API key) is recorded in the instance
    folder's demo.json (mode 0600): later runs print the same curl; --reset starts over.
    """
    state = _state()
    try:
        record, created = demo_tenant(
            state,
            reset=reset,
            number=number,
            environment=environment,
            account_sid=account_sid,
            auth_token=auth_token,
        )
    except provisioning.ProvisioningError as exc:
        raise click.ClickException(str(exc)) from exc
    connector = state.store.get_connector(record["connector_id"])
    numbers = [
        s.address for s in state.store.list_senders(record["project_id"], connector.environment)
    ]
    click.echo(
        f"{'new demo' if created else 'demo'} project {record['project_id']}: "
        f"{', '.join(numbers)} ({connector.environment}), recorded in "
        f"{demo_record_path(state.app)} (--reset starts over)"
    )
    if not created:
        ctx = click.get_current_context()
        given = [
            "--" + name.replace("_", "-")
            for name in ("number", "environment", "account_sid", "auth_token")
            if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            click.echo(
                f"{', '.join(given)}: used for a new demo tenant only (add --reset)", err=True
            )
    base_url = url or state.settings.public_url or "http://127.0.0.1:5000"
    click.echo(demo_curl(record, base_url, state.settings.url_prefix))
