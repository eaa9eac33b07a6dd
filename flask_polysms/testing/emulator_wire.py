"""What the Twilio emulator says on the wire: Twilio's error codes and JSON, dates, sids."""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from flask_polysms.clock import utcnow

API_VERSION = "2010-04-01"
# Used with fullmatch ($ alone also matches before a trailing newline); ASCII digits only.
E164 = re.compile(r"^\+[1-9]\d{1,14}$", re.ASCII)
MESSAGING_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
MAX_BODY_CHARACTERS = 1600
#: Pictures per message (Twilio's limit; error 21623 above it).
MAX_MEDIA = 10

CallbackMode = Literal["auto", "manual"]
Outcome = Literal["delivered", "undelivered", "failed", "sent"]

# HTTP status and message template for every error code the emulator can answer or inject.
# ``{to}`` is filled with the request's To. Texts follow Twilio's own error messages.
ERRORS: dict[int, tuple[int, str]] = {
    20003: (401, "Authenticate"),
    20004: (405, "Method not allowed"),
    20404: (404, "The requested resource {path} was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "An internal server error has occurred"),
    20503: (503, "Service Unavailable"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21408: (
        400,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' "
        "number: {to}.",
    ),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' or 'MessagingServiceSid' parameter is required to send a message."),
    21604: (400, "A 'To' phone number is required."),
    21609: (400, "Invalid StatusCallback url: {status_callback}"),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21614: (400, "'To' number {to} is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    21620: (400, "Invalid media URL(s)"),
    21623: (400, "Number of media files exceeds allowed limit"),
    21701: (400, "The Messaging Service Sid {messaging_service_sid} is invalid."),
}
# ``fail_next`` takes these; 500 is accepted as a name for 20500 (HTTP 500).
INJECTABLE_CODES = frozenset({20429, 500, 20500, 20503, 21211, 21408, 21610, 21614})

# Default ErrorCode for a final status other than "delivered" (30003: unreachable handset,
# 30008: unknown error).
DEFAULT_OUTCOME_ERRORS = {"undelivered": 30003, "failed": 30008}
# A message's own status never goes back, whatever order its callbacks were posted in.
_STATUS_RANK = {
    "accepted": 0,
    "queued": 0,
    "sent": 1,
    "delivered": 2,
    "undelivered": 2,
    "failed": 2,
}


def error_body(code: int, status: int, message: str) -> dict[str, Any]:
    """Twilio's error JSON: ``code``, ``message``, ``more_info``, ``status``."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _rfc2822(value: datetime | None) -> str | None:
    # Twilio's 2010 API dates look like "Thu, 24 Aug 2023 05:01:45 +0000".
    return email.utils.format_datetime(value) if value is not None else None


def _now() -> datetime:
    return utcnow().replace(microsecond=0)


def _new_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class _Fault:
    """One injected answer to a create call."""

    code: int = 20500
    status: int = 500
    message: str | None = None  # None: the code's usual text
    hang_seconds: float = 0.0
    then: Literal["drop", "create"] = "drop"


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    """(username, password) from a Basic Authorization header, (None, None) when absent or bad."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else (None, None)
