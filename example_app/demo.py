"""The embedded demo: a local Twilio emulator, a demo tenant provisioned once, a working curl.

Everything the demo creates is remembered in ``instance/demo.json`` so a restart keeps the same
API key, connector and Twilio credentials (the demo's key is kept on disk on purpose: it exists so
the printed curl works every time; a real deployment never stores a key, only its hash).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from flask import Flask

from flask_polysms import get_state, provisioning, templates
from flask_polysms.testing import TwilioEmulator

DEMO_NUMBER = "+14155550100"
DEMO_USER = "+14155552672"
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


@dataclass
class Demo:
    emulator: TwilioEmulator
    credentials_file: Path
    public_url: str

    def finish(self, app: Flask) -> None:
        """After init_app: provision the demo tenant once, then print how to use it."""
        state = get_state(app)
        state.emulator = self.emulator
        with app.app_context():
            saved = self._load()
            if not saved.get("project_id") or state.store.get_project(saved["project_id"]) is None:
                saved = self._provision(app, saved)
        self.emulator.add_account(saved["twilio_account_sid"], saved["twilio_auth_token"])
        if os.environ.get("EXAMPLE_APP_QUIET") != "1":
            click.echo(self.instructions(saved), err=True)

    def _load(self) -> dict:
        if self.credentials_file.exists():
            return json.loads(self.credentials_file.read_text())
        return {}

    def _provision(self, app: Flask, saved: dict) -> dict:
        state = get_state(app)
        state.store.create_schema()
        account_sid = saved.get("twilio_account_sid") or "AC" + secrets.token_hex(16)
        auth_token = saved.get("twilio_auth_token") or secrets.token_hex(16)
        account = provisioning.create_account(state, "Demo clinic")
        project = provisioning.create_project(state, account.id, "Appointment reminders")
        provisioning.connect_twilio(state, project.id, account_sid, auth_token)
        provisioning.add_sender(state, project.id, DEMO_NUMBER, "live")
        state.store.update_project(
            project.id, settings={"variants": {"live": {"clinic_name": "Sunrise Clinic"}}}
        )
        for title, body in TEMPLATES.items():
            templates.create_template(
                state, project.id, title=title, body=body, env_phone_numbers={"live": DEMO_NUMBER}
            )
        connector = provisioning.create_connector(state, project.id, "live")
        _, api_key = provisioning.create_api_key(state, account.id)
        saved = {
            "account_id": account.id,
            "project_id": project.id,
            "connector_id": connector.id,
            "api_key": api_key,
            "twilio_account_sid": account_sid,
            "twilio_auth_token": auth_token,
        }
        self.credentials_file.write_text(json.dumps(saved, indent=2))
        self.credentials_file.chmod(0o600)
        return saved

    def instructions(self, saved: dict) -> str:
        body = json.dumps({"user_number": DEMO_USER, "message": REMINDER})
        curl = (
            f"curl -X POST {self.public_url}/v1/outbound-sms "
            f"-H 'X-PolyAi-Auth-Token: {saved['api_key']}' "
            f"-H 'X-TOKEN-ID: {saved['connector_id']}' "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
        )
        return "\n".join(
            [
                "",
                "flask-polysms demo (embedded: SQLite, thread scheduler, local Twilio emulator)",
                f"  Twilio emulator: {self.emulator.base_url}",
                f"  Dashboard:       {self.public_url}/dashboard  "
                f"(API key and connector below; the phone simulator is there)",
                f"  API key:         {saved['api_key']}",
                f"  Connector:       {saved['connector_id']}",
                "Send a reminder:",
                f"  {curl}",
                "",
            ]
        )


def start_demo(app: Flask, instance: Path) -> Demo:
    """Start the emulator and point the app's gateway and public URL at it (before init_app)."""
    emulator = TwilioEmulator().start()
    port = os.environ.get("FLASK_RUN_PORT", "5000")
    host = os.environ.get("FLASK_RUN_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    public_url = os.environ.get("POLYSMS_PUBLIC_URL", f"http://{host}:{port}")
    app.config.update(
        POLYSMS_GATEWAY="twilio",
        POLYSMS_TWILIO_BASE_URL=emulator.base_url,
        POLYSMS_PUBLIC_URL=public_url,
    )
    if "pytest" not in sys.modules:
        app.logger.info("demo Twilio emulator on %s", emulator.base_url)
    return Demo(emulator=emulator, credentials_file=instance / "demo.json", public_url=public_url)
