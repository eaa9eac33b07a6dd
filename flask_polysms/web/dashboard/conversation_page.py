"""One conversation's page, and what a person does there: take it over from the agent (handoff),
write to the user, hand it back, end it — through :mod:`flask_polysms.services.operators`, the
services the API's operator routes call.

Without script, each button is a form that POSTs (with the CSRF token the blueprint's guard
checks) and is redirected back to the page, where a flash says what happened. A refusal — the
conversation closed meanwhile (409), a reply that is empty or too long (400), the project's send
budget used up (429) — renders the page again with that status, the reason next to the buttons
and the typed text kept; nothing is changed. With script (``static/dashboard.js``) the same forms
go by fetch and the page polls :func:`conversation_live`, the fragment holding the
conversation's facts, handoff and messages, so the user's messages and the agent's handoff show
up without a reload. Another project's or environment's conversation is a 404, as in the API.

Its routes join the dashboard's blueprint when this module is imported, which
:func:`~flask_polysms.web.dashboard.register_dashboard` does before mounting it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import flash, make_response, redirect, render_template, request, url_for

from ...errors import ConflictError, InvalidInput, PolySMSError
from ...records import CLOSED, SUPPRESSED, Session
from ...services import conversation_reads, operators
from ...services.rate_limits import RateLimited
from ...services.state import PolySMSState, get_state
from . import forms
from .views import MESSAGE_MAX_LENGTH, _tenant, bp

#: As ``POST /v1/conversations/<id>/handoff`` takes it.
REASON_MAX_LENGTH = 500

#: Who answers the user, as the page shows it and its script reads it (``data-mode``): each
#: control names the modes it is shown in (``data-modes``).
MODE_AGENT, MODE_PERSON, MODE_CLOSED = "agent", "person", "closed"

#: What the operator does on a conversation: returns the flash (text, category) of its outcome.
Act = Callable[[PolySMSState, Session], tuple[str, str]]


def _mode(session: Session) -> str:
    if session.state == CLOSED:
        return MODE_CLOSED
    return MODE_PERSON if session.handoff else MODE_AGENT


def _live_context(state: PolySMSState, session: Session) -> dict[str, Any]:
    messages = state.store.list_messages(session.id)
    return {
        "conversation": conversation_reads.conversation_dict(session, messages),
        "mode": _mode(session),
    }


def _page(
    session: Session,
    *,
    status: int = 200,
    error: str | None = None,
    reply_text: str = "",
    reason_text: str = "",
):
    page = render_template(
        "polysms_dashboard/conversation.html",
        operator_error=error,
        reply_text=reply_text,
        reason_text=reason_text,
        message_max_length=MESSAGE_MAX_LENGTH,
        reason_max_length=REASON_MAX_LENGTH,
        pause_after_ms=_pause_after_ms(),
        **_live_context(get_state(), session),
    )
    return page, status


def _pause_after_ms() -> int:
    """How long the page polls after the person's last key, pointer or scroll: half the sign-in's
    idle timeout, so a page left open ends its sign-in about 1.5 idle timeouts after the person
    left."""
    return int(get_state().settings.dashboard_idle_timeout.total_seconds() * 1000 / 2)


@bp.route("/conversations/<conversation_id>")
def conversation(conversation_id: str):
    """Every message of one conversation with its status and error code, who answers the user
    (the agent, or a person since a handoff) and the operator's buttons; 404 for one of another
    project or another environment."""
    state, tenant = get_state(), _tenant()
    return _page(conversation_reads.find_conversation(state, tenant, conversation_id))


@bp.route("/conversations/<conversation_id>/live")
def conversation_live(conversation_id: str):
    """The part of the page that changes (facts, handoff, messages) as an HTML fragment. It has
    an ETag: a poll sending ``If-None-Match`` gets 304 while nothing changed."""
    state, tenant = get_state(), _tenant()
    session = conversation_reads.find_conversation(state, tenant, conversation_id)
    fragment = render_template(
        "polysms_dashboard/_conversation_live.html", **_live_context(state, session)
    )
    response = make_response(fragment)
    response.add_etag()
    return response.make_conditional(request)


def _operate(conversation_id: str, act: Act, **kept: str):
    """Run ``act`` on the caller's conversation (404 when it is not theirs) and go back to the
    page with its outcome flashed. A refusal renders the page with its status and reason."""
    state, tenant = get_state(), _tenant()
    session = conversation_reads.find_conversation(state, tenant, conversation_id)
    try:
        outcome, category = act(state, session)
    except (InvalidInput, ConflictError, RateLimited) as exc:
        current = state.store.get_session(session.id) or session
        page, status = _page(current, status=exc.status, error=_refusal(exc), **kept)
        return page, status, exc.headers  # a 429's Retry-After
    flash(outcome, category)
    return redirect(url_for(".conversation", conversation_id=session.id))


def _refusal(exc: PolySMSError) -> str:
    if isinstance(exc, RateLimited):
        wait = exc.headers.get("Retry-After", "a few")
        return f"Not sent: {exc.detail} (try again in {wait} s)."
    return f"Nothing was changed: {exc.detail}."


@bp.route("/conversations/<conversation_id>/take-over", methods=["POST"])
def conversation_take_over(conversation_id: str):
    """Hand the conversation to a person (as ``POST .../handoff``): the agent is paused."""
    typed = request.form.get("reason", "")

    def act(state: PolySMSState, session: Session) -> tuple[str, str]:
        reason = forms.operator_text(
            request.form, "reason", label="reason", min_length=0, max_length=REASON_MAX_LENGTH
        ).strip()
        operators.hand_off(state, session.id, reason or None)  # 409 when closed
        if session.handoff:  # the service kept the first reason and time
            return "A person had this conversation already: nothing was changed.", "ok"
        return "Taken over: the agent is paused until you hand the conversation back.", "ok"

    return _operate(conversation_id, act, reason_text=typed)


@bp.route("/conversations/<conversation_id>/hand-back", methods=["POST"])
def conversation_hand_back(conversation_id: str):
    """Give the conversation back to the agent (as ``POST .../resume``)."""

    def act(state: PolySMSState, session: Session) -> tuple[str, str]:
        operators.resume(state, session.id)  # 409 when closed
        if not session.handoff:
            return "The agent had this conversation already: nothing was changed.", "ok"
        return "Handed back: the agent answers the user's next message.", "ok"

    return _operate(conversation_id, act)


@bp.route("/conversations/<conversation_id>/end", methods=["POST"])
def conversation_end(conversation_id: str):
    """Close the conversation now (as ``POST .../end``: ``end_reason`` ``api``, no closing
    text)."""

    def act(state: PolySMSState, session: Session) -> tuple[str, str]:
        operators.end_by_operator(state, session.id)
        return "Ended: the conversation is closed (no closing text was sent).", "ok"

    return _operate(conversation_id, act)


@bp.route("/conversations/<conversation_id>/reply", methods=["POST"])
def conversation_reply(conversation_id: str):
    """Send a person's message (kind ``human``) to the user from the conversation's number, as
    ``POST .../messages`` does: counted by the outbound limit, suppressed when the user opted
    out."""
    typed = request.form.get("message", "")

    def act(state: PolySMSState, session: Session) -> tuple[str, str]:
        text = forms.operator_text(
            request.form, "message", label="reply", min_length=1, max_length=MESSAGE_MAX_LENGTH
        )
        message = operators.send_human_message(state, session, text)
        if message.status == SUPPRESSED:
            return (
                f"Not sent: {session.user_number} opted out of {session.agent_number}; "
                "the reply is recorded as suppressed.",
                "error",
            )
        return f"Reply to {session.user_number}: {message.status}.", "ok"

    return _operate(conversation_id, act, reply_text=typed)
