"""``flask polysms ...``: set up tenants, run workers and the sweep."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from . import provisioning
from .extension import get_state
from .tenancy import revoke_api_key

polysms_cli = AppGroup("polysms", help="flask-polysms: tenants, senders, workers and timers.")


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
    """Create the tables and indexes (idempotent)."""
    _state().store.create_schema()
    click.echo("polysms schema ready")


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
def add_number(project_id, address, environment, registration, campaign_id) -> None:
    """Provision an E.164 number or a Messaging Service SID for an environment."""
    sender = _run(
        provisioning.add_sender,
        project_id,
        address,
        environment,
        registration=registration,
        campaign_id=campaign_id,
    )
    click.echo(
        f"{sender.address} ({sender.number_type or sender.kind}, {sender.country or 'unknown'}) "
        f"provisioned for {sender.environment}"
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


@polysms_cli.command("revoke-api-key")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke an API key at once."""
    if not revoke_api_key(_state().store, key_id):
        raise click.ClickException(f"no active API key {key_id!r}")
    click.echo(f"revoked {key_id}")


@polysms_cli.command("sweep")
def sweep_command() -> None:
    """Fire every overdue session timer and re-queue stuck messages."""
    from .lifecycle import sweep

    click.echo(f"{sweep(_state())} timers fired")


@polysms_cli.command("worker")
@click.option(
    "--simple/--fork",
    default=True,
    show_default=True,
    help="SimpleWorker runs jobs in-process (fast); --fork forks a work-horse per job",
)
@click.option("--burst", is_flag=True, help="stop when the queue is empty")
def worker(simple: bool, burst: bool) -> None:
    """Run an RQ worker with its scheduler, every job in this app's context."""
    from rq import SimpleWorker, Worker

    from .jobs import set_worker_app
    from .schedulers import RQScheduler

    state = _state()
    if not isinstance(state.scheduler, RQScheduler):
        raise click.ClickException("the worker needs POLYSMS_SCHEDULER = 'rq'")
    set_worker_app(current_app._get_current_object())
    # Never carry a database connection across the fork of a work-horse (PITFALLS): pooled
    # idle ones included. SimpleWorker jobs then share one pooled connection, job after job.
    state.store.disconnect()
    if not simple:
        from .jobs import preload

        preload()  # once here, not once per work horse (~0.5 s each)
    worker_class = SimpleWorker if simple else Worker
    queue = state.scheduler.queue
    w = worker_class([queue], connection=state.scheduler.connection, serializer=queue.serializer)
    w.work(with_scheduler=True, burst=burst)


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
    from .senders import UNSET, sender_compliance, set_registration

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

    from .senders import project_compliance

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


@polysms_cli.command("demo")
@click.option("--number", default="+14155550100", show_default=True, help="the sender to add")
@click.option("--environment", "-e", default="live", show_default=True)
@click.option(
    "--account-sid", envvar="TWILIO_ACCOUNT_SID", default=None, help="$TWILIO_ACCOUNT_SID"
)
@click.option("--auth-token", envvar="TWILIO_AUTH_TOKEN", default=None, help="$TWILIO_AUTH_TOKEN")
@click.option(
    "--url", default="http://127.0.0.1:5000", show_default=True, help="where the app runs"
)
def demo(number, environment, account_sid, auth_token, url) -> None:
    """Provision a demo account, project, number, connector and key; print a working curl."""
    import json
    import shlex

    from .testing import provision

    try:
        tenant = provision(
            current_app._get_current_object(),
            environment=environment,
            numbers=(number,),
            twilio_account_sid=account_sid,
            twilio_auth_token=auth_token,
            project_name="demo",
        )
    except provisioning.ProvisioningError as exc:
        raise click.ClickException(str(exc)) from exc
    body = json.dumps({"user_number": "+14155552672", "message": "Hello from flask-polysms!"})
    prefix = _state().settings.url_prefix
    click.echo(f"project {tenant.project_id}: {number} ({tenant.environment})")
    click.echo(
        f"curl -X POST {url.rstrip('/')}{prefix}/v1/outbound-sms "
        f"-H 'X-PolyAi-Auth-Token: {tenant.api_key}' -H 'X-TOKEN-ID: {tenant.connector_id}' "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
