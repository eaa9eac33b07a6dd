"""Reading the dashboard's HTML forms into the services' arguments, and the template preview of a
body that is being typed (not saved yet)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...errors import InvalidInput
from ...media import https_url_problem
from ...records import ENVIRONMENTS
from ...segments import count_segments
from ...services import templates as template_service
from ...services import tokens

#: Form field of each environment's sender ("pre-release" has a dash, awkward in a field name),
#: live first: it is the one required.
SENDER_FIELDS = {
    env: "sender_" + env.replace("-", "_")
    for env in sorted(ENVIRONMENTS, key=lambda e: e != "live")
}

#: A MIME type name (RFC 6838: type "/" subtype, each 1 to 127 restricted characters).
_CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}", re.ASCII
)


def template_fields(form: Mapping[str, str]) -> dict[str, Any]:
    """``title``, ``body`` and ``env_phone_numbers`` from the template form, as the service takes
    them; an empty sender field means "no sender of its own" for that environment."""
    senders = {env: (form.get(field) or "").strip() or None for env, field in SENDER_FIELDS.items()}
    return {
        "title": form.get("title", ""),
        "body": form.get("body", ""),
        "env_phone_numbers": {env: value for env, value in senders.items() if value},
    }


def simulator_picture(form: Mapping[str, str]) -> list[dict[str, Any]]:
    """The picture of the phone simulator's reply form as inbound ``media`` (``[]`` without
    one). Raises ValueError when the URL is not an http(s) URL or the content type is not a
    ``type/subtype`` name."""
    url = (form.get("media_url") or "").strip()
    if not url:
        return []
    problem = https_url_problem(url, ("https", "http"))
    if problem is not None:
        raise ValueError(f"the picture URL {problem}")
    content_type = (form.get("media_content_type") or "").strip() or "image/jpeg"
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise ValueError("the content type must look like image/jpeg")
    return [{"url": url, "content_type": content_type}]


def template_form_values(fields: Mapping[str, Any]) -> dict[str, str]:
    """The template form's field values for ``fields`` (a template or what was submitted)."""
    senders = fields.get("env_phone_numbers") or {}
    values = {"title": fields.get("title") or "", "body": fields.get("body") or ""}
    for env, field in SENDER_FIELDS.items():
        values[field] = senders.get(env) or ""
    return values


def field_errors(errors: Mapping[str, list[str]] | None) -> dict[str, list[str]]:
    """The service's errors keyed by form field (``env_phone_numbers.live`` → ``sender_live``)."""
    shown: dict[str, list[str]] = {}
    for name, messages in (errors or {}).items():
        env = name.removeprefix("env_phone_numbers.")
        key = name if env == name else SENDER_FIELDS.get(env, "env_phone_numbers")
        shown.setdefault(key, []).extend(messages)
    return shown


def parse_values(text: str, label: str) -> dict[str, str]:
    """``name=value`` lines as a dict (blank lines skipped; the value is everything after the first
    ``=``; spaces around the name and the value trimmed, as people type ``name = value``). Raises
    InvalidInput naming ``label`` for a line that has no ``=`` or no name."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(
                f"{label}, line {number}: write name=value", errors={label: [f"line {number}"]}
            )
        values[name.strip()] = value.strip()
    return values


def format_values(values: Mapping[str, Any]) -> str:
    """The inverse of :func:`parse_values`, for pre-filling a textarea."""
    return "\n".join(f"{name}={value}" for name, value in values.items())


def preview_body(
    body: str,
    *,
    variant: Mapping[str, Any] | None,
    entities: Mapping[str, Any] | None,
    variables: Mapping[str, Any] | None,
) -> template_service.Preview:
    """What ``body`` looks like with these values, as the template service's ``preview_template``
    shows a saved template: tokens with a value filled in, the others left as written and listed
    in ``missing_tokens``, encoding and segments counted on that text.

    Raises InvalidInput when ``body`` would not be accepted as a template body (length, tokens).
    """
    problems = template_service.body_problems(body)
    if problems:
        raise InvalidInput("the body cannot be saved as it is", errors={"body": problems})
    text = tokens.preview_text(body, variant, entities, variables)
    missing = tokens.missing_tokens(body, variant, entities, variables)
    counted = count_segments(text)
    return template_service.Preview(
        text=text, encoding=counted.encoding, segments=counted.segments, missing_tokens=missing
    )


def operator_text(
    form: Mapping[str, str], name: str, *, label: str, min_length: int, max_length: int
) -> str:
    """The text an operator typed in field ``name`` (a reply, a handoff reason), its line breaks
    as ``\\n`` (browsers send a textarea's as ``\\r\\n``, which an SMS would carry as two
    characters). Raises InvalidInput (400) naming the field when its length is outside
    ``min_length``..``max_length`` or it holds a NUL character, which no database stores."""
    text = (form.get(name) or "").replace("\r\n", "\n")
    if "\x00" in text:
        problem = "must not contain NUL (0x00) characters"
    elif not min_length <= len(text) <= max_length:
        problem = f"must be {min_length} to {max_length} characters"
    else:
        return text
    raise InvalidInput(f"the {label} {problem}", errors={name: [problem]})
