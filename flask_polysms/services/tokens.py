"""Template tokens: parse a template body and fill it in.

Three kinds of token, each naming one value:

- ``${name}``: kind ``"variant"``, looked up in the variant attributes (``conv.variant``);
- ``{{entity:name}}``: kind ``"entity"``, looked up in the entities (``conv.entities``);
- ``{{vrbl:name}}``: kind ``"variable"``, looked up in the variables (``conv.state``).

Names are one or more ASCII letters, digits or underscores, written without spaces. Anything that
starts like a token (``${``, ``{{``) or ends like one (``}}``) but is not exactly one of the forms
above is a :class:`TemplateSyntaxError`; a lone ``$``, ``{`` or ``}`` is plain text, and so is a
``$`` right before ``{{`` (``${{entity:amount}}`` is a dollar sign and an entity token).

Pure functions, no I/O.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

TokenKind = Literal["variant", "entity", "variable"]

# What a token name may contain. Kept narrow on purpose: allowing more later ("-", ".") keeps every
# saved template valid, while narrowing it would break saved templates.
_NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_")
# Where something token-like starts or a stray closing brace pair is. "${{" is not a variant start:
# it is the common "$" + "{{entity:amount}}" of a price.
_MARK_RE = re.compile(r"\$\{(?!\{)|\{\{|\}\}")
# The word before ":" in {{kind:name}}, and the kind it means.
_DOUBLE_BRACE_KINDS: dict[str, TokenKind] = {"entity": "entity", "vrbl": "variable"}
# Bad tokens are quoted in messages; an unclosed one would otherwise quote the rest of the body.
_MAX_SHOWN = 40


class TemplateSyntaxError(ValueError):
    """A template body holds something token-like that is not a token.

    ``token`` is the offending text as written (cut to 40 characters), ``position`` its 0-based
    index in the body, ``reason`` what is wrong; ``str()`` of the error says all three.
    """

    def __init__(self, token: str, position: int, reason: str) -> None:
        self.token = token
        self.position = position
        self.reason = reason
        super().__init__(f"bad token {token!r} at position {position}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the error picklable (job queues pickle exceptions) despite the custom __init__.
        return (type(self), (self.token, self.position, self.reason))


@dataclass(frozen=True)
class Token:
    """One token found in a body: its ``kind``, the ``name`` it looks up, and where it is
    (``body[start:end]`` is the token as written, which is always :attr:`text`)."""

    kind: TokenKind
    name: str
    start: int
    end: int

    @property
    def text(self) -> str:
        """The token as written in a template: ``${name}``, ``{{entity:name}}`` or
        ``{{vrbl:name}}``."""
        if self.kind == "variant":
            return "${" + self.name + "}"
        prefix = "entity" if self.kind == "entity" else "vrbl"
        return "{{" + prefix + ":" + self.name + "}}"


@dataclass(frozen=True)
class Rendered:
    """The result of :func:`render`: either the complete ``text`` and an empty ``missing``, or
    ``text`` None and ``missing`` listing each token that had no value (as written, once each, in
    the order they first appear)."""

    text: str | None
    missing: list[str]

    @property
    def complete(self) -> bool:
        """True when every token had a value, so :attr:`text` is the text to send."""
        return self.text is not None


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _variant_at(body: str, start: int) -> Token:
    """The ``${name}`` token starting at ``start`` (where ``body`` has ``${``)."""
    after = start + 2
    while after < len(body) and body[after] in _NAME_CHARACTERS:
        after += 1
    name = body[start + 2 : after]
    if after < len(body) and body[after] == "}":
        if not name:
            raise TemplateSyntaxError("${}", start, "an attribute name is required inside ${}")
        return Token("variant", name, start, after + 1)
    close = body.find("}", after)
    if close == -1:
        raise TemplateSyntaxError(_shown(body[start:]), start, "'${' is never closed by '}'")
    raise TemplateSyntaxError(
        _shown(body[start : close + 1]),
        start,
        f"attribute names use only ASCII letters, digits and underscore, not {body[after]!r}",
    )


def _double_brace_at(body: str, start: int) -> Token:
    """The ``{{entity:name}}`` or ``{{vrbl:name}}`` token starting at ``start``."""
    close = body.find("}}", start + 2)
    if close == -1:
        raise TemplateSyntaxError(_shown(body[start:]), start, "'{{' is never closed by '}}'")
    written = _shown(body[start : close + 2])
    word, colon, name = body[start + 2 : close].partition(":")
    if not colon:
        raise TemplateSyntaxError(written, start, "expected {{entity:name}} or {{vrbl:ID}}")
    kind = _DOUBLE_BRACE_KINDS.get(word)
    if kind is None:
        raise TemplateSyntaxError(
            written, start, f"unknown token type {word!r}: use {{{{entity:…}}}} or {{{{vrbl:…}}}}"
        )
    if not name:
        raise TemplateSyntaxError(written, start, f"a name is required after '{word}:'")
    if not all(c in _NAME_CHARACTERS for c in name):
        raise TemplateSyntaxError(
            written, start, "names use only ASCII letters, digits and underscore"
        )
    return Token(kind, name, start, close + 2)


def parse(body: str) -> list[Token]:
    """Every token of ``body``, in order (repeats included).

    Raises :class:`TemplateSyntaxError` at the first thing that starts like a token but is not one:
    an unclosed ``${`` or ``{{``, ``${}``, ``{{entity:}}``, a name with other characters than ASCII
    letters, digits and underscore (spaces included), an unknown type such as ``{{unknown:x}}``, or
    a ``}}`` that closes nothing. A lone ``$``, ``{`` or ``}`` is plain text.
    """
    tokens: list[Token] = []
    position = 0
    while (mark := _MARK_RE.search(body, position)) is not None:
        start = mark.start()
        if mark.group() == "}}":
            raise TemplateSyntaxError("}}", start, "'}}' closes no '{{'")
        if mark.group() == "${":
            token = _variant_at(body, start)
        else:
            token = _double_brace_at(body, start)
        tokens.append(token)
        position = token.end
    return tokens


def token_strings(body: str) -> list[str]:
    """The distinct tokens of ``body`` as written, in the order they first appear.

    Raises :class:`TemplateSyntaxError` like :func:`parse`.
    """
    return list(dict.fromkeys(token.text for token in parse(body)))


def _fill(
    body: str,
    variant: Mapping[str, Any] | None,
    entities: Mapping[str, Any] | None,
    variables: Mapping[str, Any] | None,
) -> tuple[str, list[str]]:
    """The body with every token that has a value replaced (the others left as written), and the
    distinct tokens without a value."""
    sources: dict[TokenKind, Mapping[str, Any]] = {
        "variant": variant or {},
        "entity": entities or {},
        "variable": variables or {},
    }
    pieces: list[str] = []
    missing: dict[str, None] = {}
    position = 0
    for token in parse(body):
        pieces.append(body[position : token.start])
        position = token.end
        # .get, not [], so a defaultdict cannot invent a value for a missing name.
        value = sources[token.kind].get(token.name)
        if value is None:
            missing[token.text] = None
            pieces.append(token.text)
        else:
            # One pass over the template: a value is inserted as it is, never parsed for tokens.
            pieces.append(str(value))
    pieces.append(body[position:])
    return "".join(pieces), list(missing)


def render(
    body: str,
    variant: Mapping[str, Any] | None = None,
    entities: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
) -> Rendered:
    """Fill every token of ``body`` with its value, all or nothing.

    A value is looked up by the token's name in the mapping for its kind and inserted as
    ``str(value)``, literally: a value that itself looks like a token (``"${x}"``) stays as it is.
    A name absent from its mapping, or mapped to None, is missing (an empty string is a value).
    When any token is missing, ``text`` is None (never a half-filled text) and ``missing`` lists
    every missing token as written, once each, in order of first appearance. Raises
    :class:`TemplateSyntaxError` when ``body`` does not parse.
    """
    text, missing = _fill(body, variant, entities, variables)
    if missing:
        return Rendered(None, missing)
    return Rendered(text, [])


def missing_tokens(
    body: str,
    variant: Mapping[str, Any] | None = None,
    entities: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
) -> list[str]:
    """The tokens of ``body`` that have no value, as :func:`render` reports them (empty when the
    template can be sent). Raises :class:`TemplateSyntaxError` when ``body`` does not parse."""
    return _fill(body, variant, entities, variables)[1]


def preview_text(
    body: str,
    variant: Mapping[str, Any] | None = None,
    entities: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
) -> str:
    """For showing a template to its author, never for sending: the body with the tokens that have
    a value filled in (as :func:`render` would) and the missing ones left as written. Raises
    :class:`TemplateSyntaxError` when ``body`` does not parse."""
    return _fill(body, variant, entities, variables)[0]
