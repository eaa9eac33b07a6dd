"""The dashboard's pages. Each view reads a form or a query, calls a service and renders a template.

No view touches SQL or Twilio: they call the Store's methods, :func:`metrics.summarise`, the
template service, :func:`outbound.start_outbound` and, for the simulator, the app's own webhook
(one conversation's page and its operator buttons are in :mod:`.conversation_page`).
Every page but the sign-in requires a sign-in (a redirect otherwise); every POST requires the
session's CSRF token (400 otherwise); an id of another project answers 404, as the API does.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException, default_exceptions

from ...clock import as_utc, utcnow
from ...errors import InvalidInput, PolySMSError
from ...phone import validate_e164
from ...records import ENVIRONMENTS, Sender
from ...services import conversation_reads, opt_out_files
from ...services import templates as template_service
from ...services.metrics import summarise
from ...services.outbound import start_outbound
from ...services.rate_limits import RateLimited
from ...services.state import PolySMSState, get_state
from ...services.tenancy import Tenant
from . import access, forms, simulator
from .chart import daily_chart

bp = Blueprint(
    "polysms_dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
)

WIDGET_DAYS = 14
PAGE_SIZE = 25
MESSAGE_MAX_LENGTH = 1600
CONVERSATION_STATES = ("active", "warned", "closed")
# Pages reachable without a sign-in.
PUBLIC_ENDPOINTS = frozenset({"polysms_dashboard.sign_in", "polysms_dashboard.static"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The dashboard loads nothing from elsewhere and runs no inline script: a stored SMS body that got
# past escaping still could not run. Framing is refused (the forms would be clickjacking targets).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages show a project's messages and numbers: no copy in shared or browser caches.
    "Cache-Control": "no-store",
}


# -- every request --------------------------------------------------------------------------------
def _tenant() -> Tenant:
    tenant = access.signed_in_tenant(get_state())
    if tenant is None:  # _guard redirected already; only reachable if a view is called directly
        abort(401)
    return tenant


@bp.before_request
def _guard() -> Response | None:
    access.forget_cached_csrf()
    if request.method not in SAFE_METHODS:
        access.check_csrf(
            request.form.get(access.CSRF_FIELD) or request.headers.get(access.CSRF_HEADER)
        )
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if access.signed_in_tenant(get_state()) is None:
        target = request.full_path.rstrip("?") if request.method in SAFE_METHODS else None
        return redirect(url_for(".sign_in", next=target))
    return None


@bp.after_request
def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # The sign-in cookie is sent back only to the dashboard's own paths.
    return access.apply_cookie(response, url_for("polysms_dashboard.overview"))


@bp.context_processor
def _page_context() -> dict[str, Any]:
    state = get_state()
    return {
        "csrf_token": access.csrf_token,
        "tenant": access.signed_in_tenant(state),
        "simulator_on": state.emulator is not None,
        "fmt_time": _fmt_time,
        "environments": ENVIRONMENTS,
    }


def _fmt_time(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return as_utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.errorhandler(PolySMSError)
def _service_error(error: PolySMSError):
    return _error_page(error.status, error.detail)


def _http_error(error: HTTPException):
    return _error_page(error.code or 500, error.description or error.name)


# By code, not by class: Flask tries every handler registered for the code (the app's included,
# such as the API's 404 handler) before any handler registered for a class.
for _code in (c for c in default_exceptions if 400 <= c < 500):
    bp.register_error_handler(_code, _http_error)


def _error_page(status: int, detail: str):
    return render_template("polysms_dashboard/error.html", status=status, detail=detail), status


def _safe_next(target: str | None) -> str | None:
    """``target`` when it is a path inside the dashboard (no open redirect elsewhere), else None."""
    if not target:
        return None
    parts = urlsplit(target)
    root = url_for(".overview")
    if parts.scheme or parts.netloc or not target.startswith(root) or target.startswith("//"):
        return None
    return target


def _numbers(state: PolySMSState, tenant: Tenant, environment: str | None) -> list[Sender]:
    return [
        s for s in state.store.list_senders(tenant.project_id, environment) if s.kind == "number"
    ]


# -- sign-in --------------------------------------------------------------------------------------
@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    """Sign in with an API key and a connector id: a server-side sign-in record, whose random
    secret is the dashboard's cookie."""
    state = get_state()
    next_url = _safe_next(request.values.get("next"))
    if request.method == "POST":
        connector_id = request.form.get("connector_id", "").strip()
        try:
            access.sign_in(state, request.form.get("api_key", "").strip(), connector_id)
        except PolySMSError as exc:
            # The key is never echoed back into the form: it would travel in the response.
            page = render_template(
                "polysms_dashboard/sign_in.html",
                error=exc.detail,
                connector_id=connector_id,
                next_url=next_url,
            )
            return page, exc.status
        return redirect(next_url or url_for(".overview"))
    if access.signed_in_tenant(state) is not None:
        return redirect(next_url or url_for(".overview"))
    return render_template("polysms_dashboard/sign_in.html", connector_id="", next_url=next_url)


@bp.route("/sign-out", methods=["POST"])
def sign_out():
    """End the sign-in everywhere (its record), not only in this browser."""
    access.sign_out(get_state())
    flash("Signed out.", "ok")
    return redirect(url_for(".sign_in"))


# -- the SMS widget -------------------------------------------------------------------------------
@bp.route("/")
def overview():
    """Sent vs failed per day for the last 14 days, delivery rate and API failures."""
    state, tenant = get_state(), _tenant()
    today = utcnow().date()
    figures = summarise(
        state, tenant.project_id, tenant.environment, today - timedelta(days=WIDGET_DAYS - 1), today
    )
    return render_template(
        "polysms_dashboard/overview.html",
        figures=figures,
        chart=daily_chart(figures["by_day"]),
        days=WIDGET_DAYS,
    )


# -- templates ------------------------------------------------------------------------------------
@bp.route("/templates")
def templates():
    state, tenant = get_state(), _tenant()
    return render_template(
        "polysms_dashboard/templates.html",
        templates=template_service.list_templates(state, tenant.project_id),
    )


def _template_page(
    *,
    template_id: str | None,
    values: dict[str, str],
    errors: dict[str, list[str]] | None = None,
    error: str | None = None,
    preview: template_service.Preview | None = None,
    status: int = 200,
):
    state, tenant = get_state(), _tenant()
    variant = template_service.environment_variant(state, tenant.project_id, tenant.environment)
    preview_error = None
    if preview is None:
        try:
            preview = forms.preview_body(
                values["body"], variant=variant, entities=None, variables=None
            )
        except InvalidInput as exc:
            preview_error = _first_error(exc)
    senders = {env: _numbers(state, tenant, env) for env in ENVIRONMENTS}
    page = render_template(
        "polysms_dashboard/template_form.html",
        template_id=template_id,
        values=values,
        errors=errors or {},
        error=error,
        senders=senders,
        sender_fields=forms.SENDER_FIELDS,
        sample_variant=forms.format_values(variant),
        preview=preview,
        preview_error=preview_error,
    )
    return page, status


def _first_error(exc: PolySMSError) -> str:
    for messages in (exc.errors or {}).values():
        if messages:
            return messages[0]
    return exc.detail


@bp.route("/templates/new", methods=["GET", "POST"])
def template_new():
    """Create a template; the form's preview follows the body as it is typed."""
    state, tenant = get_state(), _tenant()
    if request.method == "GET":
        live = _numbers(state, tenant, "live")
        values = forms.template_form_values(
            {"env_phone_numbers": {"live": live[0].address} if live else {}}
        )
        return _template_page(template_id=None, values=values)
    fields = forms.template_fields(request.form)
    try:
        template = template_service.create_template(state, tenant.project_id, **fields)
    except PolySMSError as exc:
        return _template_page(
            template_id=None,
            values=forms.template_form_values(fields),
            errors=forms.field_errors(exc.errors),
            error=exc.detail,
            status=exc.status,
        )
    flash(f"Template {template.title!r} created.", "ok")
    return redirect(url_for(".template_edit", template_id=template.id))


@bp.route("/templates/<template_id>", methods=["GET", "POST"])
def template_edit(template_id: str):
    """Edit a template; 404 for a template of another project."""
    state, tenant = get_state(), _tenant()
    template = template_service.get_template(state, tenant.project_id, template_id)
    if request.method == "GET":
        preview = template_service.preview_template(
            state, tenant.project_id, template.id, environment=tenant.environment
        )
        values = forms.template_form_values(vars(template))
        return _template_page(template_id=template.id, values=values, preview=preview)
    fields = forms.template_fields(request.form)
    try:
        template = template_service.update_template(state, tenant.project_id, template.id, **fields)
    except PolySMSError as exc:
        return _template_page(
            template_id=template.id,
            values=forms.template_form_values(fields),
            errors=forms.field_errors(exc.errors),
            error=exc.detail,
            status=exc.status,
        )
    flash(f"Template {template.title!r} saved.", "ok")
    return redirect(url_for(".template_edit", template_id=template.id))


@bp.route("/templates/<template_id>/duplicate", methods=["POST"])
def template_duplicate(template_id: str):
    state, tenant = get_state(), _tenant()
    copy = template_service.duplicate_template(state, tenant.project_id, template_id)
    flash(f"Copied as {copy.title!r}.", "ok")
    return redirect(url_for(".template_edit", template_id=copy.id))


@bp.route("/templates/<template_id>/delete", methods=["POST"])
def template_delete(template_id: str):
    state, tenant = get_state(), _tenant()
    template = template_service.get_template(state, tenant.project_id, template_id)
    template_service.delete_template(state, tenant.project_id, template.id)
    flash(f"Template {template.title!r} deleted.", "ok")
    return redirect(url_for(".templates"))


@bp.route("/templates/preview", methods=["POST"])
def template_preview():
    """The preview panel (an HTML fragment) for a body and sample values as typed."""
    preview, error = None, None
    try:
        values = {
            name: forms.parse_values(request.form.get(name, ""), label)
            for name, label in (
                ("variant", "variant attributes"),
                ("entities", "entities"),
                ("variables", "variables"),
            )
        }
        preview = forms.preview_body(request.form.get("body", ""), **values)
    except InvalidInput as exc:
        error = _first_error(exc) if exc.errors and "body" in exc.errors else exc.detail
    return render_template("polysms_dashboard/_preview.html", preview=preview, preview_error=error)


# -- conversations --------------------------------------------------------------------------------
@bp.route("/conversations")
def conversations():
    """The conversations of the connector's environment, newest first, filtered by number and
    state; a filter naming another environment is a 400, as in the API."""
    state, tenant = get_state(), _tenant()
    args = request.args
    filters = {
        "user_number": args.get("user_number", "").strip(),
        "state": args.get("state", ""),
    }
    problems: list[str] = []
    environment = args.get("environment", "")
    if filters["user_number"]:
        try:
            validate_e164(filters["user_number"])
        except ValueError as exc:
            problems.append(str(exc))
    if filters["state"] and filters["state"] not in CONVERSATION_STATES:
        problems.append(f"unknown state {filters['state']!r}")
    if environment and environment not in ENVIRONMENTS:
        problems.append(f"unknown environment {environment!r}")
    elif environment and environment != tenant.environment:
        problems.append(
            f"this sign-in sees the {tenant.environment} environment only: sign in with a "
            f"connector of {environment} to see its conversations"
        )
    sessions, next_cursor = [], None
    if not problems:
        try:
            # The API's reader: the same scope and the same sealed, per-project cursors.
            page = conversation_reads.list_conversations(
                state,
                tenant,
                user_number=filters["user_number"] or None,
                conversation_state=filters["state"] or None,
                cursor=args.get("cursor") or None,
                limit=PAGE_SIZE,
                with_messages=False,
            )
            sessions, next_cursor = page.sessions, page.next_cursor
        except InvalidInput:
            problems.append("that page link is no longer valid: start again from the first page")
    next_url = url_for(".conversations", **filters, cursor=next_cursor) if next_cursor else None
    return render_template(
        "polysms_dashboard/conversations.html",
        sessions=sessions,
        filters=filters,
        problems=problems,
        states=CONVERSATION_STATES,
        next_url=next_url,
        numbers=_numbers(state, tenant, tenant.environment),
    ), (400 if problems else 200)


@bp.route("/conversations/send", methods=["POST"])
def conversation_send():
    """Open a conversation whose first message is the form's text (as ``POST /v1/outbound-sms``)."""
    state, tenant = get_state(), _tenant()
    form = request.form
    user_number = form.get("user_number", "").strip()
    message = form.get("message", "")
    agent_number = form.get("agent_number", "").strip() or None
    try:
        validate_e164(user_number)
        if not 1 <= len(message) <= MESSAGE_MAX_LENGTH:
            raise ValueError(f"the message must be 1 to {MESSAGE_MAX_LENGTH} characters")
        session, sent = start_outbound(state, tenant, user_number, message, agent_number)
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for(".conversations"))
    except RateLimited as exc:
        # The API would answer 429: the same limit, counted by start_outbound for every caller.
        wait = exc.headers.get("Retry-After", "a few")
        flash(f"Not sent: {exc.detail} (try again in {wait} s).", "error")
        return redirect(url_for(".conversations"))
    except PolySMSError as exc:
        flash(exc.detail, "error")
        return redirect(url_for(".conversations"))
    flash(f"Message to {user_number} from {session.agent_number}: {sent.status}.", "ok")
    return redirect(url_for(".conversation", conversation_id=session.id))


# -- opt-outs -------------------------------------------------------------------------------------
@bp.route("/opt-outs")
def opt_outs():
    """Whether a number is opted out of each of the project's senders, and its history."""
    state, tenant = get_state(), _tenant()
    number = request.args.get("number", "").strip()
    problem, pairs, history = None, [], []
    if number:
        try:
            validate_e164(number)
        except ValueError as exc:
            problem = str(exc)
        else:
            pairs = [
                {"sender": s, "opted_out": state.store.is_opted_out(number, s.address)}
                for s in state.store.list_senders(tenant.project_id)
            ]
            history = state.store.opt_out_history(tenant.project_id, number)
    page = render_template(
        "polysms_dashboard/opt_outs.html",
        number=number,
        problem=problem,
        pairs=pairs,
        history=list(reversed(history)),  # newest first
    )
    return page, (400 if problem else 200)


@bp.route("/opt-outs/export.csv")
def opt_outs_export():
    """The project's current opt-outs as a CSV download (``user_number,sender,keyword,
    created_at``, as ``flask polysms opt-outs export`` writes them)."""
    state, tenant = get_state(), _tenant()
    text = opt_out_files.export_text(state, tenant.project_id)
    day = utcnow().strftime("%Y%m%d")
    return Response(
        text,
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="opt-outs-{day}.csv"'},
    )


# -- phone simulator ------------------------------------------------------------------------------
def _require_simulator(state: PolySMSState) -> None:
    if state.emulator is None:
        abort(
            404,
            "The phone simulator needs the in-process TwilioEmulator (state.emulator), as the "
            "example app's embedded demo runs it.",
        )


@bp.route("/simulator")
def simulator_page():
    """A user's phone: the messages it received from the project, and a box to reply."""
    state, tenant = get_state(), _tenant()
    _require_simulator(state)
    recent = simulator.recent_numbers(state, tenant)
    number = request.args.get("number", "").strip() or (recent[0] if recent else "")
    problem, thread = None, []
    if number:
        try:
            validate_e164(number)
        except ValueError as exc:
            problem = str(exc)
        else:
            thread = simulator.phone_messages(state, tenant, number)
    ours = _numbers(state, tenant, None)
    last_from = next((m.from_ for m in reversed(thread) if m.direction == "received"), None)
    default_to = last_from or next(
        (s.address for s in ours if s.environment == tenant.environment), ""
    )
    page = render_template(
        "polysms_dashboard/simulator.html",
        number=number,
        problem=problem,
        thread=thread,
        recent=recent,
        ours=ours,
        default_to=default_to,
    )
    return page, (400 if problem else 200)


@bp.route("/simulator/reply", methods=["POST"])
def simulator_reply():
    """Reply as the user: a signed inbound webhook posted to our own ``/v1/twilio/sms``."""
    state, tenant = get_state(), _tenant()
    _require_simulator(state)
    form = request.form
    number = form.get("number", "").strip()
    to = form.get("to", "").strip()
    body = form.get("body", "")
    try:
        validate_e164(number)
        if to not in {s.address for s in _numbers(state, tenant, None)}:
            raise ValueError(f"{to or 'no number'} is not one of this project's numbers")
        media = forms.simulator_picture(form)
        # A picture may go alone, as a phone sends it; a text alone needs a character.
        if len(body) > MESSAGE_MAX_LENGTH or not (body or media):
            raise ValueError(f"the reply must be 1 to {MESSAGE_MAX_LENGTH} characters")
        url = simulator.webhook_url(state, request.url_root)
        simulator.post_reply(state, tenant, url, number, to, body, media)
    except (ValueError, simulator.ReplyFailed) as exc:
        flash(str(exc), "error")
    else:
        what = f"{body!r} with a picture" if media else repr(body)
        flash(f"Sent {what} from {number} to {to}.", "ok")
    return redirect(url_for(".simulator_page", number=number or None))
