"""The embedded demo: a local Twilio emulator, a demo tenant provisioned once, a working curl.

The demo tenant is the one ``flask polysms demo`` manages, recorded in ``instance/demo.json`` (mode
0600) so a restart keeps the same API key, connector and Twilio credentials; this app adds its
templates and clinic name when the tenant is created (``flask polysms demo --reset`` starts over).
The demo's key is kept on disk on purpose: it exists so the printed curl works every time; a real
deployment never stores a key, only its hash.

Where the app is served — the URL in the banner's curl, the status callbacks the emulator posts
and the phone simulator's webhook — comes from ``POLYSMS_PUBLIC_URL`` when it is exported (a
proxy), else from the arguments the development server was started with (``flask run --host
--port --cert``, ``FLASK_RUN_PORT``), which it records in the instance folder for the other
``flask`` commands (``flask polysms demo`` prints a curl for that server): never from a request.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.helpers import get_debug_flag
from werkzeug.serving import is_running_from_reloader

from flask_polysms import get_state
from flask_polysms.cli import DEMO_NUMBER, DEMO_SETUP, demo_curl, demo_tenant, write_private_file
from flask_polysms.services import templates
from flask_polysms.testing import TwilioEmulator

#: Set to 1 to start without the banner (it shows the demo's API key).
QUIET_ENV = "EXAMPLE_APP_QUIET"
#: In the instance folder: where ``flask run`` last listened, for the other ``flask`` commands.
SERVED_URL_FILE = "served_url"
REMINDER = (
    "Hi! This is Sunrise Clinic: you have an appointment tomorrow at 10:00. "
    "Reply 1 to confirm, 2 to reschedule or 3 to cancel."
)
TEMPLATES = {
    "appointment_confirmed": (
        "Your appointment at ${clinic_name} is confirmed for {{vrbl:slot}}. See you then!"
    ),
    "appointment_confirmed_es": (
        "Su cita en ${clinic_name} está confirmada para {{vrbl:slot}}. ¡Hasta pronto!"
    ),
    "appointment_cancelled": "Your appointment at ${clinic_name} is cancelled. Call us to rebook.",
}


def _run_command() -> click.Context | None:
    """The click context of ``flask run`` when that command is loading the app, else None."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.command.name == "run" and "port" in ctx.params:
        return ctx
    return None


def _url_host(host: str) -> str:
    """``host`` as it goes in a URL the local curl and emulator can call."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"  # listening everywhere: this machine answers on its loopback
    if host == "::":
        return "[::1]"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name, such as localhost
    return f"[{address}]" if address.version == 6 else host


def served_url(instance: Path | None = None) -> str:
    """The app's base URL in this process: the exported ``POLYSMS_PUBLIC_URL``, else where the
    development server starting now listens (its ``--host``, ``--port``, ``--cert``), else
    ``FLASK_RUN_HOST``/``FLASK_RUN_PORT``, else where ``flask run`` last listened with this
    ``instance`` folder (for the other ``flask`` commands), else http://127.0.0.1:5000."""
    exported = os.environ.get("POLYSMS_PUBLIC_URL")
    if exported:
        return exported.rstrip("/")
    scheme, host, port = "http", None, None
    run = _run_command()
    if run is not None:
        # click has already merged --port with FLASK_RUN_PORT and the default.
        host, port = run.params.get("host"), run.params.get("port")
        if run.params.get("cert") is not None:
            scheme = "https"
    elif not (os.environ.get("FLASK_RUN_HOST") or os.environ.get("FLASK_RUN_PORT")):
        last = _last_served(instance)
        if last:
            return last
    host = host or os.environ.get("FLASK_RUN_HOST") or "127.0.0.1"
    port = port or os.environ.get("FLASK_RUN_PORT") or 5000
    return f"{scheme}://{_url_host(host)}:{port}"


def _last_served(instance: Path | None) -> str | None:
    if instance is None:
        return None
    try:
        url = (instance / SERVED_URL_FILE).read_text().strip()
    except OSError:
        return None
    return url if url.startswith(("http://", "https://")) else None


def announcing() -> bool:
    """Whether this process starts a server and should print the banner.

    ``flask run`` prints it (in the reloader's serving child only, with ``--debug``); any other
    ``flask`` command (``flask polysms ...``, ``flask shell``) does not. Outside the flask command
    (a WSGI server importing ``create_app()``) it is printed too. ``EXAMPLE_APP_QUIET=1`` never.
    """
    if os.environ.get(QUIET_ENV, "") not in ("", "0"):
        return False
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return True
    if _run_command() is None:
        return False
    reload = ctx.params.get("reload")
    if reload is None:
        reload = get_debug_flag()
    # With the reloader the first process only watches files; its child serves.
    return not reload or is_running_from_reloader()


class EmulatedTwilio:
    """The demo's gateway: the real twilio client talking to the in-process emulator, which first
    learns the credentials of the project that sends.

    Twilio knows every account that can sign in to it; the emulator knows only the accounts it is
    told about. Telling it at each send makes every tenant work — the demo's and those made with
    ``flask polysms create-account … connect-twilio …``, in this process or another. Everything
    else is the wrapped gateway's.
    """

    def __init__(self, gateway: Any, emulator: TwilioEmulator) -> None:
        self._gateway = gateway
        self._emulator = emulator

    def send(self, account_sid: str, auth_token: str, message: Any) -> Any:
        """Register the credentials with the emulator, then send through the wrapped gateway."""
        self._emulator.add_account(account_sid, auth_token)
        return self._gateway.send(account_sid, auth_token, message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)


def add_demo_data(state, record: dict) -> None:
    """The example's part of a new demo tenant: clinic name, templates, the reminder to send."""
    project_id, number = record["project_id"], record["number"]
    state.store.update_project(
        project_id,
        name="Appointment reminders",
        settings={"variants": {record["environment"]: {"clinic_name": "Sunrise Clinic"}}},
    )
    for title, body in TEMPLATES.items():
        templates.create_template(
            state,
            project_id,
            title=title,
            body=body,
            env_phone_numbers={"live": number, record["environment"]: number},
        )
    record["message"] = REMINDER


@dataclass
class Demo:
    emulator: TwilioEmulator
    public_url: str

    def finish(self, app: Flask) -> dict:
        """After init_app: the demo tenant (provisioned on first start), the emulator as the
        gateway's Twilio, and the banner when this process serves."""
        state = get_state(app)
        state.emulator = self.emulator
        state.gateway = EmulatedTwilio(state.gateway, self.emulator)
        app.extensions[DEMO_SETUP] = add_demo_data
        with app.app_context():
            state.store.create_schema()
            record, _ = demo_tenant(state, number=DEMO_NUMBER)
        if record.get("twilio_auth_token"):
            # Known before the first send, so the emulator's message list answers at once.
            self.emulator.add_account(record["twilio_account_sid"], record["twilio_auth_token"])
        if _run_command() is not None and announcing():
            # `flask polysms demo` then prints a curl for this server, not for port 5000.
            write_private_file(Path(app.instance_path) / SERVED_URL_FILE, self.public_url + "\n")
        if announcing():
            click.echo(
                self.instructions(record, state.settings.url_prefix, state.settings.dashboard_url),
                err=True,
            )
        return record

    def instructions(
        self, record: dict, url_prefix: str = "", dashboard_url: str = "/dashboard"
    ) -> str:
        """The banner: where things are, the demo's credentials and a working curl."""
        return "\n".join(
            [
                "",
                "flask-polysms demo (embedded: SQLite, thread scheduler, local Twilio emulator)",
                f"  Twilio emulator: {self.emulator.base_url}",
                f"  Dashboard:       {self.public_url}{url_prefix}{dashboard_url}/  "
                f"(API key and connector below; the phone simulator is there)",
                f"  API key:         {record['api_key']}",
                f"  Connector:       {record['connector_id']}",
                "Send a reminder:",
                f"  {demo_curl(record, self.public_url, url_prefix)}",
                f"(set {QUIET_ENV}=1 to start without this banner; "
                "`flask --app example_app polysms demo` prints the curl again)",
                "",
            ]
        )


def start_demo(app: Flask) -> Demo:
    """Start the emulator and point the app's gateway and public URL at it (before init_app)."""
    emulator = TwilioEmulator().start()
    public_url = served_url(Path(app.instance_path))
    app.config.update(
        POLYSMS_GATEWAY="twilio",
        POLYSMS_TWILIO_BASE_URL=emulator.base_url,
        POLYSMS_PUBLIC_URL=public_url,
    )
    if "pytest" not in sys.modules:
        app.logger.info("demo Twilio emulator on %s", emulator.base_url)
    return Demo(emulator=emulator, public_url=public_url)
