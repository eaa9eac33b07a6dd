"""The phone simulator: a user's phone, seen through the app's in-process TwilioEmulator.

What the phone received is what the emulator was asked to send, limited to messages the project
itself recorded (found by their Twilio SID), so one project never sees another's traffic on a shared
emulator. What the phone sent are the project's inbound messages from that number. A reply is a
signed webhook to the app's own ``/v1/twilio/sms``, exactly as Twilio would post it, so it goes
through signature checking, keywords, limits and the agent like any real SMS. It is handed to the
app in-process (a WSGI call), never sent over the network: no Host header, forged or not, can
point it at another server, and no connection error can tell what answers where.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from twilio.request_validator import RequestValidator
from werkzeug.test import Client

from ...clock import as_utc
from ...media import media_from_urls
from ...records import INBOUND
from ...services.tenancy import Tenant

if TYPE_CHECKING:
    from flask import Flask

    from ...services.state import PolySMSState

#: Seconds to wait for our own webhook; it answers well under Twilio's 15 s budget.
WEBHOOK_TIMEOUT = 15.0


@dataclass(frozen=True)
class PhoneMessage:
    """One bubble on the simulated phone."""

    direction: str  # "received" (by the phone) or "sent" (by the phone)
    body: str
    from_: str
    to: str
    status: str
    at: datetime
    twilio_sid: str | None
    error_code: int | None = None
    #: Pictures: ``{"url", "content_type"}`` each (content type None for what the phone got).
    media: tuple[dict[str, Any], ...] = ()


def phone_messages(state: PolySMSState, tenant: Tenant, user_number: str) -> list[PhoneMessage]:
    """The conversation on ``user_number``'s phone with the project's numbers, oldest first."""
    store = state.store
    thread: list[PhoneMessage] = []
    for sent in state.emulator.messages:
        if sent["to"] != user_number or sent["account_sid"] != tenant.project.twilio_account_sid:
            continue
        recorded = store.get_message_by_sid(sent["sid"])
        if recorded is None or recorded.project_id != tenant.project_id:
            continue
        thread.append(
            PhoneMessage(
                direction="received",
                body=sent["body"],
                from_=sent["from"] or sent["messaging_service_sid"] or "",
                to=sent["to"],
                status=sent["status"],
                # The store's time, not the emulator's whole seconds: replies in the same second
                # as the message they answer must still sort after it.
                at=as_utc(recorded.created_at),
                twilio_sid=sent["sid"],
                error_code=sent["error_code"],
                media=tuple(media_from_urls(sent.get("media_urls"))),
            )
        )
    for message in _inbound_from(state, tenant, user_number):
        thread.append(
            PhoneMessage(
                direction="sent",
                body=message.body,
                from_=user_number,
                to=message.to,
                status=message.status,
                at=as_utc(message.created_at),
                twilio_sid=message.twilio_sid,
                media=tuple(message.media),
            )
        )
    thread.sort(key=lambda m: m.at)
    return thread


def _inbound_from(state: PolySMSState, tenant: Tenant, user_number: str):
    """The project's inbound messages from ``user_number`` (in sessions or not)."""
    store = state.store
    seen: set[str] = set()
    cursor = None
    while True:
        sessions, cursor = store.list_sessions(
            tenant.project_id, user_number=user_number, cursor=cursor, limit=200
        )
        for session in sessions:
            for message in store.list_messages(session.id):
                if message.direction == INBOUND and message.id not in seen:
                    seen.add(message.id)
                    yield message
        if cursor is None:
            return


def recent_numbers(state: PolySMSState, tenant: Tenant, limit: int = 10) -> list[str]:
    """User numbers the project's messages went to through the emulator, most recent first."""
    numbers: list[str] = []
    for sent in reversed(state.emulator.messages):
        if sent["account_sid"] != tenant.project.twilio_account_sid or sent["to"] in numbers:
            continue
        recorded = state.store.get_message_by_sid(sent["sid"])
        if recorded is not None and recorded.project_id == tenant.project_id:
            numbers.append(sent["to"])
            if len(numbers) == limit:
                break
    return numbers


def webhook_url(state: PolySMSState, url_root: str) -> str:
    """The inbound webhook's URL as Twilio would call it, which the reply is signed over: the
    configured public URL (``POLYSMS_PUBLIC_URL``, else ``SERVER_NAME``); without one, which only
    debug and testing allow, where this request was served (``url_root``, mount point included).

    The URL is signed and given to the in-process request; nothing ever connects to it.
    """
    base = state.settings.public_url
    if base is None:
        if not (state.app.debug or state.app.testing):
            raise ReplyFailed("set POLYSMS_PUBLIC_URL: the webhook is signed over the public URL")
        base = url_root.rstrip("/")
    return f"{base}{_webhook_path(state)}"


def _webhook_path(state: PolySMSState) -> str:
    return f"{state.settings.url_prefix}/v1/twilio/sms"


class ReplyFailed(Exception):
    """The webhook did not take the simulated reply; the message says what it answered."""


def post_reply(
    state: PolySMSState,
    tenant: Tenant,
    url: str,
    user_number: str,
    to: str,
    body: str,
    media: list[dict[str, Any]] | None = None,
) -> str:
    """Hand ``body`` from ``user_number`` to our number ``to`` to the app as Twilio's signed inbound
    webhook, as if Twilio had called ``url`` (from :func:`webhook_url`); with ``media``
    (``{"url", "content_type"}`` each) it is an MMS, posted as Twilio posts one.

    Returns the new MessageSid; raises ReplyFailed when the webhook does not answer 200.
    """
    project = tenant.project
    if not project.twilio_account_sid or not project.twilio_auth_token_encrypted:
        raise ReplyFailed("the project has no Twilio connection to sign the webhook with")
    path = _webhook_path(state)
    if not url.endswith(path):
        raise ReplyFailed("the reply can only go to this app's own webhook")
    media = list(media or ())
    # Twilio's inbound MMS SIDs start with MM.
    message_sid = ("MM" if media else "SM") + secrets.token_hex(16)
    params = {
        "MessageSid": message_sid,
        "SmsSid": message_sid,
        "SmsMessageSid": message_sid,
        "AccountSid": project.twilio_account_sid,
        "From": user_number,
        "To": to,
        "Body": body,
        "NumMedia": str(len(media)),
        "NumSegments": "1",
        "ApiVersion": "2010-04-01",
    }
    for i, item in enumerate(media):
        params[f"MediaUrl{i}"] = item["url"]
        if item.get("content_type"):
            params[f"MediaContentType{i}"] = item["content_type"]
    token = state.cipher.decrypt(project.twilio_auth_token_encrypted)
    headers = {
        "X-Twilio-Signature": RequestValidator(token).compute_signature(url, dict(params)),
        "User-Agent": "TwilioProxy/1.1",
    }
    status = _call_app(state.app, url[: -len(path)], path, params, headers)
    if status != 200:
        raise ReplyFailed(f"the webhook answered HTTP {status}")
    return message_sid


def _call_app(app: Flask, base_url: str, path: str, form: dict, headers: dict) -> int:
    """POST ``form`` to ``path`` of ``app`` in-process, as a request to ``base_url`` (scheme, host
    and mount point), and return the status code.

    In a thread of its own, as a server would run it: the request gets its own app context and
    database connection, not the dashboard request's that is waiting for it.
    """
    outcome: dict[str, int] = {}

    def run() -> None:
        try:
            client = Client(app)
            response = client.post(path, base_url=base_url, data=form, headers=headers)
            outcome["status"] = response.status_code
            response.close()
        except Exception:  # the app raised (testing propagates exceptions): logged, not shown
            app.logger.exception("the phone simulator's webhook failed")

    worker = threading.Thread(target=run, name="polysms-simulator-reply", daemon=True)
    worker.start()
    worker.join(WEBHOOK_TIMEOUT)
    if worker.is_alive():
        raise ReplyFailed(f"the webhook did not answer within {WEBHOOK_TIMEOUT:.0f} s")
    if "status" not in outcome:
        raise ReplyFailed("the webhook failed; the app's log says why")
    return outcome["status"]
