"""SMS templates: validation, create/read/update/delete, duplicate, preview, send.

A template belongs to one project. Its fields:

- ``title``: 1–100 characters, not blank, unique in the project (exact, case-sensitive match). It is
  the name the agent's code sends it by: ``conv.send_sms_template(conv.caller_number, "title")``.
- ``body``: 1–500 characters. Tokens are filled in at send time: ``${attribute}`` from the variant
  attributes of the session's environment, ``{{entity:name}}`` from ``conv.entities``,
  ``{{vrbl:ID}}`` from ``conv.state`` (syntax in :mod:`flask_polysms.services.tokens`). A body
  whose tokens
  do not parse is refused when it is saved.
- ``env_phone_numbers``: the sender per environment, ``live`` required, ``sandbox`` and
  ``pre-release`` optional. Each is either an E.164 number provisioned for the project *in that
  same environment* (a sandbox test number can never be saved as the live sender, nor the other way
  round), or a Twilio Messaging Service SID (``MG`` + 32 hex digits). A Messaging Service SID that
  is provisioned for the project obeys the same rule as a number; any other is accepted on its
  form alone (Twilio checks that it belongs to the project's account when sending), whether it is
  unknown or another project's: answering those two apart would tell a caller which services
  other projects own.

Language variants: a template titled ``<title>_<language>`` (``confirmation_es``) is the
``<language>`` version of ``<title>``. When the session has a language (``Session.language``, seen
by the agent as ``conv.language``), :func:`send_template` sends ``<title>_<language>`` if it
exists; for a language with a region (``es-MX`` or ``es_MX``) it next tries ``<title>_es``; then it
falls back to the bare ``<title>``.

Sending (:func:`send_template`) goes through the one send path (:func:`sending.queue_message`), so
opt-out suppression, retries, segments and ``metadata.sms_sends`` are the same as for any send. A
token without a value at send time fails that one send (recorded ``failed``, counted in
``api_failures``): a half-filled text is never sent.

The functions raise :class:`~flask_polysms.errors.PolySMSError` subclasses (400, 404, 409) that the
API answers as they are; :func:`send_template` raises ``LookupError`` for an unknown title.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..clock import utcnow
from ..errors import ConflictError, InvalidInput, NotFoundError
from ..phone import is_e164, is_messaging_service_sid, validate_e164
from ..ports.store import Conflict, NotFound
from ..records import ENVIRONMENTS, Message, Session, Template, new_id
from ..segments import count_segments
from . import tokens

if TYPE_CHECKING:
    from .state import PolySMSState

TITLE_MAX_LENGTH = 100
BODY_MAX_LENGTH = 500
#: Twilio refuses a body over 1600 characters (error 21617): a filled-in template can exceed it.
SMS_MAX_LENGTH = 1600
REQUIRED_ENVIRONMENT = "live"
COPY_SUFFIX = "_copy"
# Enough for any real project; the bound only stops a loop if the store keeps answering Conflict.
_MAX_COPY_NUMBER = 10_000
_ADDRESS_FORM = (
    "an E.164 number such as +14155552671 or a Messaging Service SID (MG + 32 hex digits)"
)


# -- field rules (shared with the API schemas) ----------------------------------------------------
def title_problems(title: object) -> list[str]:
    """What is wrong with ``title`` as a template title (empty when it is acceptable)."""
    if not isinstance(title, str):
        return ["must be a string"]
    if not 1 <= len(title) <= TITLE_MAX_LENGTH:
        return [f"must be 1 to {TITLE_MAX_LENGTH} characters (got {len(title)})"]
    if not title.strip():
        return ["must not be blank"]
    return []


def body_problems(body: object) -> list[str]:
    """What is wrong with ``body`` as a template body: its length, then its tokens."""
    if not isinstance(body, str):
        return ["must be a string"]
    if not 1 <= len(body) <= BODY_MAX_LENGTH:
        return [f"must be 1 to {BODY_MAX_LENGTH} characters (got {len(body)})"]
    try:
        tokens.parse(body)
    except tokens.TemplateSyntaxError as exc:
        return [str(exc)]
    return []


def address_problems(address: object) -> list[str]:
    """What is wrong with the *form* of a sender address (provisioning is checked elsewhere)."""
    if is_e164(address) or is_messaging_service_sid(address):
        return []
    return [f"must be {_ADDRESS_FORM}"]


def _sender_problems(
    state: PolySMSState, project_id: str, environment: str, address: object
) -> list[str]:
    problems = address_problems(address)
    if problems:
        return problems
    sender = state.store.get_sender(address)  # type: ignore[arg-type]  # a str, checked above
    if sender is None or sender.project_id != project_id:
        if is_messaging_service_sid(address):
            # Not this project's: accepted on its form, whether unknown or another project's,
            # so the answer does not reveal what other projects own (module docstring).
            return []
        return [f"{address} is not provisioned for this project"]
    if sender.environment != environment:
        return [
            f"{address} is provisioned for this project's {sender.environment} environment, "
            f"not {environment}"
        ]
    return []


def env_phone_numbers_problems(
    state: PolySMSState, project_id: str, env_phone_numbers: object
) -> dict[str, list[str]]:
    """Errors per field (``env_phone_numbers.live`` ...) for a sender mapping; empty when valid."""
    if not isinstance(env_phone_numbers, Mapping):
        return {"env_phone_numbers": ['must be an object such as {"live": "+14155552671"}']}
    errors: dict[str, list[str]] = {}
    for key in env_phone_numbers:
        if key not in ENVIRONMENTS:
            errors[f"env_phone_numbers.{key}"] = [
                f"unknown environment: use {', '.join(ENVIRONMENTS)}"
            ]
    if env_phone_numbers.get(REQUIRED_ENVIRONMENT) is None:
        errors[f"env_phone_numbers.{REQUIRED_ENVIRONMENT}"] = ["the live sender is required"]
    for environment in ENVIRONMENTS:
        address = env_phone_numbers.get(environment)
        if address is None:
            continue
        problems = _sender_problems(state, project_id, environment, address)
        if problems:
            errors[f"env_phone_numbers.{environment}"] = problems
    return errors


def _clean_senders(env_phone_numbers: Mapping[str, str | None]) -> dict[str, str]:
    # Absent and null mean the same thing (no sender of its own): only real senders are stored.
    return {env: env_phone_numbers[env] for env in ENVIRONMENTS if env_phone_numbers.get(env)}


def _validate(
    state: PolySMSState,
    project_id: str,
    *,
    title: object = None,
    body: object = None,
    env_phone_numbers: object = None,
    check: Iterable[str],
) -> None:
    """Raise one InvalidInput naming every field at fault among those in ``check``."""
    errors: dict[str, list[str]] = {}
    if "title" in check and (problems := title_problems(title)):
        errors["title"] = problems
    if "body" in check and (problems := body_problems(body)):
        errors["body"] = problems
    if "env_phone_numbers" in check:
        errors.update(env_phone_numbers_problems(state, project_id, env_phone_numbers))
    if errors:
        raise InvalidInput("invalid template: see errors", errors=errors)


def _title_conflict(title: str) -> ConflictError:
    return ConflictError(f"a template titled {title!r} already exists in this project")


# -- create, read, update, delete -----------------------------------------------------------------
def create_template(
    state: PolySMSState,
    project_id: str,
    *,
    title: str,
    body: str,
    env_phone_numbers: Mapping[str, str | None],
) -> Template:
    """Save a new template in the project.

    Raises InvalidInput (400, every field at fault in ``errors``) or ConflictError (409) when the
    project has a template with this title.
    """
    _validate(
        state,
        project_id,
        title=title,
        body=body,
        env_phone_numbers=env_phone_numbers,
        check=("title", "body", "env_phone_numbers"),
    )
    now = utcnow()
    template = Template(
        id=new_id("tpl_"),
        project_id=project_id,
        title=title,
        body=body,
        env_phone_numbers=_clean_senders(env_phone_numbers),
        created_at=now,
        updated_at=now,
    )
    try:
        return state.store.create_template(template)
    except Conflict as exc:
        raise _title_conflict(title) from exc


def list_templates(state: PolySMSState, project_id: str) -> list[Template]:
    """Every template of the project, ordered by title."""
    return state.store.list_templates(project_id)


def get_template(state: PolySMSState, project_id: str, template_id: str) -> Template:
    """The project's template ``template_id``; NotFoundError (404) when the project has none (a
    template of another project is not found either)."""
    template = state.store.get_template(project_id, template_id)
    if template is None:
        raise NotFoundError("template not found")
    return template


def update_template(
    state: PolySMSState, project_id: str, template_id: str, **changes: Any
) -> Template:
    """Change some of ``title``, ``body``, ``env_phone_numbers``; the others stay as they are.

    ``env_phone_numbers`` is replaced as a whole (so a sender is removed by leaving it out), and
    must name ``live`` again. No change at all returns the template untouched (``updated_at``
    included). Raises NotFoundError (404), InvalidInput (400) or ConflictError (409) on a title
    another template of the project has.
    """
    unknown = set(changes) - {"title", "body", "env_phone_numbers"}
    if unknown:
        raise InvalidInput(
            "invalid template: see errors",
            errors={name: ["Unknown field."] for name in sorted(unknown)},
        )
    current = get_template(state, project_id, template_id)
    _validate(state, project_id, **changes, check=changes.keys())
    fields: dict[str, Any] = dict(changes)
    if "env_phone_numbers" in fields:
        fields["env_phone_numbers"] = _clean_senders(fields["env_phone_numbers"])
    fields = {name: value for name, value in fields.items() if getattr(current, name) != value}
    if not fields:
        return current
    fields["updated_at"] = utcnow()
    try:
        return state.store.update_template(project_id, template_id, **fields)
    except Conflict as exc:
        raise _title_conflict(fields["title"]) from exc
    except NotFound as exc:  # deleted between the read and the write
        raise NotFoundError("template not found") from exc


def delete_template(state: PolySMSState, project_id: str, template_id: str) -> None:
    """Delete the project's template; NotFoundError (404) when the project has no such template."""
    if not state.store.delete_template(project_id, template_id):
        raise NotFoundError("template not found")


# -- duplicate ------------------------------------------------------------------------------------
def copy_titles(title: str) -> Iterable[str]:
    """The titles a copy of ``title`` may take, in the order they are tried: ``<title>_copy``,
    ``<title>_copy2``, ``<title>_copy3`` … each at most 100 characters (the end of ``title`` is
    cut to make room for the suffix)."""
    for number in range(1, _MAX_COPY_NUMBER + 1):
        suffix = COPY_SUFFIX if number == 1 else f"{COPY_SUFFIX}{number}"
        yield title[: TITLE_MAX_LENGTH - len(suffix)] + suffix


def duplicate_template(state: PolySMSState, project_id: str, template_id: str) -> Template:
    """A new template with the original's body and senders under the first free title of
    :func:`copy_titles`. Raises NotFoundError (404) for an unknown template."""
    original = get_template(state, project_id, template_id)
    taken = {t.title for t in state.store.list_templates(project_id)}
    for title in copy_titles(original.title):
        if title in taken:
            continue
        now = utcnow()
        copy = Template(
            id=new_id("tpl_"),
            project_id=project_id,
            title=title,
            body=original.body,
            env_phone_numbers=dict(original.env_phone_numbers),
            created_at=now,
            updated_at=now,
        )
        try:
            return state.store.create_template(copy)
        except Conflict:
            # Another request took this title since the list was read: try the next one.
            taken.add(title)
    raise ConflictError(f"no free title left for a copy of {original.title!r}")


# -- preview --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preview:
    """What a template looks like with some values.

    ``text`` has every token with a value filled in and every token without one left as written
    (so it is what would be sent only when ``missing_tokens`` is empty: a send with missing values
    fails instead). ``encoding`` and ``segments`` are counted on ``text`` as shown, so with missing
    tokens they count the tokens as written and are an estimate.
    """

    text: str
    encoding: str
    segments: int
    missing_tokens: list[str]


def environment_variant(state: PolySMSState, project_id: str, environment: str) -> dict[str, Any]:
    """The variant attributes (``${…}``) set for the project's environment (as ``conv.variant``)."""
    project = state.store.get_project(project_id)
    variants = (project.settings.get("variants") or {}) if project else {}
    return dict(variants.get(environment) or {})


def preview_template(
    state: PolySMSState,
    project_id: str,
    template_id: str,
    *,
    environment: str,
    variant: Mapping[str, Any] | None = None,
    entities: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
) -> Preview:
    """Fill the project's template with the given values (see :class:`Preview`).

    ``variant`` None means the variant attributes the project has for ``environment`` (what a send
    there would use); ``entities`` and ``variables`` None mean none. Raises NotFoundError (404).
    """
    template = get_template(state, project_id, template_id)
    if variant is None:
        variant = environment_variant(state, project_id, environment)
    try:
        text = tokens.preview_text(template.body, variant, entities, variables)
        missing = tokens.missing_tokens(template.body, variant, entities, variables)
    except tokens.TemplateSyntaxError as exc:  # only a body saved around the API can get here
        raise InvalidInput("the template body does not parse", errors={"body": [str(exc)]}) from exc
    count = count_segments(text)
    return Preview(
        text=text, encoding=count.encoding, segments=count.segments, missing_tokens=missing
    )


# -- send -----------------------------------------------------------------------------------------
def candidate_titles(title: str, language: str | None) -> list[str]:
    """The titles :func:`send_template` tries, in order, for ``title`` in ``language``."""
    candidates: list[str] = []
    if language:
        candidates.append(f"{title}_{language}")
        primary = language.replace("-", "_").split("_", 1)[0]
        if primary and primary != language:
            candidates.append(f"{title}_{primary}")
    candidates.append(title)
    return candidates


def resolve_template(
    state: PolySMSState, project_id: str, title: str, language: str | None = None
) -> Template:
    """The template to send for ``title`` in ``language`` (the module's language convention).

    Raises ``LookupError`` when none of the candidate titles exists: sending an unknown template is
    a mistake in the agent's code, not a send that failed.
    """
    candidates = candidate_titles(title, language)
    for candidate in candidates:
        template = state.store.get_template_by_title(project_id, candidate)
        if template is not None:
            return template
    tried = ", ".join(repr(c) for c in candidates)
    raise LookupError(f"no SMS template titled {title!r} in this project (tried {tried})")


def template_sender(template: Template, session: Session) -> str:
    """The sender of ``template`` in the session's environment.

    The template's own sender for that environment, else, outside ``live``, the session's agent
    number: sandbox and pre-release never send from the live sender.
    """
    sender = template.env_phone_numbers.get(session.environment)
    if sender:
        return sender
    if session.environment == REQUIRED_ENVIRONMENT:
        # Unreachable for a template saved through this module (live is required); a clear error
        # beats sending from a number nobody chose.
        raise LookupError(f"SMS template {template.title!r} has no live sender")
    return session.agent_number


def send_template(
    state: PolySMSState,
    session: Session,
    to_number: str,
    title: str,
    *,
    variant: Mapping[str, Any] | None,
    entities: Mapping[str, Any] | None,
    variables: Mapping[str, Any] | None,
    retry_count: int | None = None,
) -> Message:
    """Queue the template ``title`` (or its language version) for ``to_number`` in ``session``.

    The text is the body with every token filled in; the sender is :func:`template_sender`. When a
    token has no value (or the filled-in text is over Twilio's 1600 characters), nothing is sent:
    the message is recorded ``failed`` with the template body as written and the reason, and
    counted in ``api_failures``. An opted-out recipient is suppressed by the send job and still
    returns a message (``suppressed``). ``retry_count`` retries on top of the first attempt.

    Raises ``LookupError`` for an unknown template and ``ValueError`` for a bad ``to_number`` or
    ``retry_count``.
    """
    from .sending import queue_message

    to_number = validate_e164(to_number)
    if retry_count is not None and (
        isinstance(retry_count, bool) or not isinstance(retry_count, int) or retry_count < 0
    ):
        raise ValueError("retry_count must be a whole number, 0 or more")
    template = resolve_template(state, session.project_id, title, session.language)
    sender = template_sender(template, session)
    common: dict[str, Any] = {
        "project_id": session.project_id,
        "environment": session.environment,
        "session": session,
        "kind": "agent",
        "to": to_number,
        "sender": sender,
        "template": template.title,
        "max_attempts": None if retry_count is None else 1 + retry_count,
    }
    try:
        rendered = tokens.render(template.body, variant, entities, variables)
    except tokens.TemplateSyntaxError as exc:  # only a body saved around this module
        problem = f"template {template.title!r} does not parse: {exc}"
        return queue_message(state, body=template.body, error=(None, problem), **common)
    if rendered.text is None:
        problem = f"missing values for template {template.title!r}: " + ", ".join(rendered.missing)
        return queue_message(state, body=template.body, error=(None, problem), **common)
    if len(rendered.text) > SMS_MAX_LENGTH:
        problem = (
            f"template {template.title!r} filled in is {len(rendered.text)} characters, "
            f"over the {SMS_MAX_LENGTH} an SMS may have"
        )
        return queue_message(state, body=rendered.text, error=(None, problem), **common)
    return queue_message(state, body=rendered.text, **common)
