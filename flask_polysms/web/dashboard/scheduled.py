"""The dashboard's page of scheduled messages, each with a cancel button (a POST with the
form's CSRF token, checked for every POST by the blueprint's guard).

Its routes join the dashboard's blueprint when this module is imported, which
:func:`~flask_polysms.web.dashboard.register_dashboard` does before mounting it.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for

from ...services import scheduled
from ...services.state import get_state
from .views import _tenant, bp

#: Scheduled messages shown, soonest first.
SHOWN = 200


@bp.route("/scheduled")
def scheduled_messages():
    """The connector's environment's scheduled messages, soonest first."""
    state, tenant = get_state(), _tenant()
    messages = state.store.list_scheduled_messages(
        tenant.project_id, tenant.environment, limit=SHOWN
    )
    return render_template("polysms_dashboard/scheduled.html", messages=messages, shown=SHOWN)


@bp.route("/scheduled/<message_id>/cancel", methods=["POST"])
def scheduled_cancel(message_id: str):
    """Cancel one (404 for another project's or environment's, 409 once it went out)."""
    state, tenant = get_state(), _tenant()
    message = scheduled.cancel(state, tenant, message_id)
    flash(f"The message to {message.to} is canceled: it will not be sent.", "ok")
    return redirect(url_for(".scheduled_messages"))
