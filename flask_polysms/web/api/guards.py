"""What every API request goes through before its view: the body-size cap and a 400 for input
no backend can store (NUL characters, lone surrogates, JSON nested too deeply)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import request

from ...errors import PolySMSError
from ...services.state import get_state
from ...services.tenancy import AUTH_HEADER, CONNECTOR_HEADER

if TYPE_CHECKING:
    from ...services.state import PolySMSState


def check_request() -> None:
    """Every API request, before its view: one hook (Flask pays a dispatch per hook)."""
    state = get_state()
    _limit_body_size(state)
    _refuse_unstorable_input()


def _limit_body_size(state: PolySMSState) -> None:
    # Per request, so the host app's own MAX_CONTENT_LENGTH is left alone.
    request.max_content_length = state.settings.max_content_length
    if request.content_length is not None and request.content_length > request.max_content_length:
        raise PolySMSError(f"request body over {request.max_content_length} bytes", status=413)


NUL_MESSAGE = "must not contain NUL (0x00) characters"
SURROGATE_MESSAGE = "must be valid Unicode text (no lone surrogates)"
# Deeper JSON is refused at the edge: webargs parses the body again, further down the stack, and
# no field of the API nests more than a few levels.
MAX_JSON_DEPTH = 100


def _unstorable_fields(value, name: str, found: dict[str, str]) -> None:
    """Add to ``found`` the name of every string in ``value`` (JSON-like) that no backend can
    store, with why: a NUL character, or a lone surrogate (text that is not Unicode scalar
    values: it cannot be encoded as UTF-8). Raises for containers nested over MAX_JSON_DEPTH.

    Iterative: a JSON body nested a few hundred levels deep must not exhaust Python's stack.
    """
    stack = [(value, name, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if where in found:
                continue
            if "\x00" in item:
                found[where] = NUL_MESSAGE
            elif not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    found[where] = SURROGATE_MESSAGE
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise PolySMSError("invalid JSON body: nested too deeply", status=400)
            if isinstance(item, dict):
                for key, sub in item.items():
                    stack.append((key, where or str(key), depth + 1))
                    stack.append((sub, f"{where}.{key}" if where else str(key), depth + 1))
            else:
                stack.extend((sub, where or "_body", depth + 1) for sub in item)


def _refuse_unstorable_input() -> None:
    """A 400 for input no backend can store or parse safely, before any view reads it.

    Text holding NUL characters (PostgreSQL refuses them, so a lookup or an insert would fail with
    a 500) or lone surrogates (no database driver can encode them) in the path, the query, the
    form, the JSON body or the auth headers; JSON nested so deep that decoding it exhausts the
    stack, or deeper than MAX_JSON_DEPTH.
    """
    found: dict[str, str] = {}
    _unstorable_fields(request.view_args or {}, "", found)
    for key, value in request.args.items(multi=True):
        _unstorable_fields([key, value], key, found)
    for header in (AUTH_HEADER, CONNECTOR_HEADER):
        _unstorable_fields(request.headers.get(header), header, found)
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for key, value in request.form.items(multi=True):
            _unstorable_fields([key, value], key, found)
    elif request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError as exc:
            raise PolySMSError("invalid JSON body: nested too deeply", status=400) from exc
        _unstorable_fields(body, "", found)
    if found:
        errors = {}
        for name, message in found.items():
            # The name may hold the bad character itself: escaped, so that any client reads it.
            shown = name.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode()
            errors[shown or "_body"] = [message]
        reasons = set(found.values())
        detail = reasons.pop() if len(reasons) == 1 else "that cannot be stored: see errors"
        raise PolySMSError(f"invalid request: text {detail}", status=400, errors=errors)
