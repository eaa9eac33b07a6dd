"""The clinic's SMS agent: flask-polysms runs it for every message a patient sends."""

from __future__ import annotations

from .extensions import polysms
from .models import user_by_phone


@polysms.agent
def appointment_desk(conv, text: str) -> str | None:
    """Confirms appointments; greets people the clinic knows by the name in its own table."""
    known = user_by_phone(conv.caller_number)
    hello = f"Hi {known.name}" if known is not None else "Hi"
    if text.strip().lower() in {"confirm", "yes please", "1"}:
        conv.state["confirmed"] = True
        return f"{hello}, your appointment is confirmed. See you soon!"
    return f"{hello}, reply CONFIRM to confirm your appointment."
