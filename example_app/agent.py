"""The appointment-reminder agent: confirm, reschedule or cancel by reply.

The conversation starts with an outbound reminder (``POST /v1/outbound-sms``). The user answers
``1``/``CONFIRM``, ``2``/``RESCHEDULE`` or ``3``/``CANCEL APPOINTMENT``. A bare ``CANCEL`` is a
carrier opt-out keyword (STOP): flask-polysms handles it before the agent ever sees it, so the menu
asks for ``3`` or ``CANCEL APPOINTMENT`` instead.

Progress lives in ``conv.state`` (persisted with the session); confirmations go out as templates so
their wording is managed in the dashboard, per environment, with language variants.
"""

from __future__ import annotations

from flask_polysms import Conversation, PolySMS

MENU = "Reply 1 to confirm, 2 to reschedule or 3 to cancel your appointment."
DEFAULT_SLOT = "tomorrow at 10:00"

CONFIRM = {"1", "confirm", "confirmed", "ok"}
RESCHEDULE = {"2", "reschedule", "change", "move"}
CANCEL = {"3", "cancel appointment", "cancel appt"}


#: What the agent says when the project has no template of that name (a project set up with the
#: CLI rather than the demo): the same news, without the template's managed wording.
FALLBACK_TEXTS = {
    "appointment_confirmed": "Your appointment is confirmed for {slot}. See you then!",
    "appointment_cancelled": "Your appointment is cancelled. Call us to rebook.",
}


def _send_template(conv: Conversation, title: str) -> str | None:
    """Send the project's template ``title``; without one, the plain text to reply instead."""
    try:
        conv.send_sms_template(conv.caller_number, title)
    except LookupError:
        return FALLBACK_TEXTS[title].format(slot=conv.state.get("slot", DEFAULT_SLOT))
    return None


def answer(conv: Conversation, text: str) -> str | None:
    """One turn of the reminder dialogue."""
    said = " ".join(text.lower().split()).rstrip(".!")
    conv.state.setdefault("slot", DEFAULT_SLOT)
    step = conv.state.get("step", "menu")

    if step == "choose_slot":
        conv.state["slot"] = text.strip()
        conv.state["step"] = "done"
        conv.state["status"] = "confirmed"
        return _send_template(conv, "appointment_confirmed")
    if said in CONFIRM:
        conv.state["status"] = "confirmed"
        conv.state["step"] = "done"
        return _send_template(conv, "appointment_confirmed")
    if said in RESCHEDULE:
        conv.state["step"] = "choose_slot"
        return "Which day and time suit you? For example: Friday 14:00."
    if said in CANCEL:
        conv.state["status"] = "cancelled"
        conv.state["step"] = "done"
        reply = _send_template(conv, "appointment_cancelled")
        conv.end()
        return reply
    return f"Sorry, I did not get that. {MENU}"


def register_agent(polysms: PolySMS) -> None:
    polysms.agent(answer)
