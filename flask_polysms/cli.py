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
@click.option("--simple/--fork", default=True, show_default=True,
              help="SimpleWorker runs jobs in-process (fast); --fork forks a work-horse per job")
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
    # Never carry a database connection across the fork of a work-horse (PITFALLS).
    state.store.close()
    worker_class = SimpleWorker if simple else Worker
    w = worker_class([state.scheduler.queue], connection=state.scheduler.connection)
    w.work(with_scheduler=True, burst=burst)
