"""Template tokens (flask_polysms.services.tokens): parsing, syntax errors and all-or-nothing
rendering."""

from __future__ import annotations

import pickle
from collections import defaultdict
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_polysms.services.tokens import (
    TemplateSyntaxError,
    Token,
    missing_tokens,
    parse,
    preview_text,
    render,
    token_strings,
)

BODY = "Hi ${name}, your booking on {{entity:booking_date}} is confirmed: {{vrbl:CODE}}."


def test_parse_every_kind() -> None:
    tokens = parse(BODY)
    assert tokens == [
        Token("variant", "name", 3, 10),
        Token("entity", "booking_date", 28, 51),
        Token("variable", "CODE", 66, 79),
    ]
    assert [BODY[t.start : t.end] for t in tokens] == [t.text for t in tokens]
    assert [t.text for t in tokens] == ["${name}", "{{entity:booking_date}}", "{{vrbl:CODE}}"]


@pytest.mark.parametrize(
    "body",
    [
        "",
        "No tokens at all.",
        "Costs $5 {or less} } {",
        "$",
        "{",
        "}",
        "$ {name}",
        "{name}",
        "{ {entity:x} }",
        "$$",
        "100% {",
    ],
)
def test_lone_marks_are_plain_text(body: str) -> None:
    assert parse(body) == []
    assert render(body).text == body


def test_dollar_before_double_brace_is_a_dollar_sign() -> None:
    body = "Total: ${{entity:amount}}, or $${price}"
    assert parse(body) == [Token("entity", "amount", 8, 25), Token("variant", "price", 31, 39)]
    assert render(body, {"price": 9}, {"amount": 12}).text == "Total: $12, or $9"


def test_names_may_hold_letters_digits_and_underscore() -> None:
    body = "${a_B_9} {{entity:_x1}} {{vrbl:123}}"
    assert [t.name for t in parse(body)] == ["a_B_9", "_x1", "123"]


def test_closing_brace_after_a_token_is_plain_text() -> None:
    assert render("${a}} {{entity:b}}}", {"a": 1}, {"b": 2}).text == "1} 2}"


@pytest.mark.parametrize(
    ("body", "token", "position"),
    [
        ("${", "${", 0),
        ("Hello ${name", "${name", 6),
        ("${}", "${}", 0),
        ("x ${a b}", "${a b}", 2),
        ("${a-b}", "${a-b}", 0),
        ("${a.b}", "${a.b}", 0),
        ("${naïve}", "${naïve}", 0),
        ("{{entity:}}", "{{entity:}}", 0),
        ("{{vrbl:}}", "{{vrbl:}}", 0),
        ("{{unknown:x}}", "{{unknown:x}}", 0),
        ("{{Entity:x}}", "{{Entity:x}}", 0),
        ("{{entity:a b}}", "{{entity:a b}}", 0),
        ("{{ entity:x }}", "{{ entity:x }}", 0),
        ("{{entity}}", "{{entity}}", 0),
        ("{{entity:x:y}}", "{{entity:x:y}}", 0),
        ("{{}}", "{{}}", 0),
        ("see {{", "{{", 4),
        ("{{entity:x", "{{entity:x", 0),
        ("ok }} no", "}}", 3),
        ("${a}}}", "}}", 4),
        ("{{{entity:x}}}", "{{{entity:x}}", 0),
        ("{{entity:${x}}}", "{{entity:${x}}", 0),
    ],
)
def test_syntax_errors_name_the_token_and_its_position(
    body: str, token: str, position: int
) -> None:
    with pytest.raises(TemplateSyntaxError) as excinfo:
        parse(body)
    error = excinfo.value
    assert isinstance(error, ValueError)
    assert (error.token, error.position) == (token, position)
    assert repr(token) in str(error) and f"position {position}" in str(error)
    for call in (render, missing_tokens, token_strings, preview_text):
        with pytest.raises(TemplateSyntaxError):
            call(body)


def test_syntax_error_reasons() -> None:
    def reason(body: str) -> str:
        with pytest.raises(TemplateSyntaxError) as excinfo:
            parse(body)
        return excinfo.value.reason

    assert "never closed" in reason("${abc")
    assert "name is required" in reason("${}")
    assert "name is required" in reason("{{entity:}}")
    assert "unknown token type 'unknown'" in reason("{{unknown:x}}")
    assert "letters, digits and underscore" in reason("{{entity:a b}}")
    assert "closes no" in reason("}}")


def test_syntax_error_quotes_at_most_40_characters() -> None:
    with pytest.raises(TemplateSyntaxError) as excinfo:
        parse("${" + "a" * 500)
    assert len(excinfo.value.token) == 40


def test_syntax_error_pickles() -> None:
    error = TemplateSyntaxError("${}", 3, "an attribute name is required")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.token, copy.position, copy.reason, str(copy)) == (
        error.token,
        error.position,
        error.reason,
        str(error),
    )


def test_render_fills_every_kind() -> None:
    result = render(BODY, {"name": "Ana"}, {"booking_date": date(2026, 12, 1)}, {"CODE": 4821})
    assert result.complete
    assert result.missing == []
    assert result.text == "Hi Ana, your booking on 2026-12-01 is confirmed: 4821."


def test_values_are_inserted_literally_in_one_pass() -> None:
    result = render(
        "${a} {{entity:b}} {{vrbl:c}}",
        {"a": "${x}"},
        {"b": "{{entity:b}}"},
        {"c": "}} {{"},
    )
    assert result.text == "${x} {{entity:b}} }} {{"


def test_missing_tokens_leave_no_text() -> None:
    body = "${a} ${b} {{entity:a}} ${a} {{vrbl:a}} {{entity:a}}"
    result = render(body, {"b": "B"}, {}, {"a": "A"})
    assert result.text is None
    assert not result.complete
    # Each missing token once, as written, in order of first appearance; kinds are separate names.
    assert result.missing == ["${a}", "{{entity:a}}"]
    assert missing_tokens(body, {"b": "B"}, {}, {"a": "A"}) == result.missing


def test_none_is_missing_and_empty_string_is_a_value() -> None:
    assert render("[${a}]", {"a": None}).missing == ["${a}"]
    assert render("[${a}]", {"a": ""}).text == "[]"
    assert render("[${a}]", {"a": 0}).text == "[0]"
    assert render("[${a}]", {"a": False}).text == "[False]"


def test_default_values_of_a_mapping_are_not_invented() -> None:
    entities: defaultdict[str, str] = defaultdict(lambda: "invented")
    assert render("{{entity:x}}", entities=entities).missing == ["{{entity:x}}"]


def test_mappings_default_to_empty() -> None:
    assert render("plain").text == "plain"
    assert render("${a}").missing == ["${a}"]
    assert missing_tokens(BODY) == ["${name}", "{{entity:booking_date}}", "{{vrbl:CODE}}"]


def test_token_strings_are_distinct_and_in_order() -> None:
    body = "{{vrbl:X}} ${a} {{vrbl:X}} {{entity:a}} ${a}"
    assert token_strings(body) == ["{{vrbl:X}}", "${a}", "{{entity:a}}"]
    assert token_strings("no tokens") == []


def test_preview_text_keeps_missing_tokens_as_written() -> None:
    assert preview_text(BODY, {"name": "Ana"}) == (
        "Hi Ana, your booking on {{entity:booking_date}} is confirmed: {{vrbl:CODE}}."
    )


# Bodies built from plain text and tokens, with the values the tokens need.
_NAMES = st.text(alphabet="abcXYZ019_", min_size=1, max_size=6)
_PLAIN = st.text(alphabet=st.characters(exclude_characters="${}"), max_size=12)
_KIND_WRITTEN = {"variant": "${%s}", "entity": "{{entity:%s}}", "variable": "{{vrbl:%s}}"}
_TOKENS = st.tuples(st.sampled_from(sorted(_KIND_WRITTEN)), _NAMES)


@st.composite
def _template(draw: st.DrawFn, values: st.SearchStrategy[str]) -> tuple[str, list, dict, str]:
    """(body, its (kind, name) tokens, the values by kind, the expected rendered text)."""
    parts = draw(st.lists(st.tuples(_PLAIN, _TOKENS), max_size=8))
    tail = draw(_PLAIN)
    sources: dict[str, dict[str, str]] = {kind: {} for kind in _KIND_WRITTEN}
    body, expected = "", ""
    for plain, (kind, name) in parts:
        value = sources[kind].setdefault(name, draw(values))
        body += plain + _KIND_WRITTEN[kind] % name
        expected += plain + value
    return body + tail, [token for _, token in parts], sources, expected + tail


@given(_template(st.text(max_size=10)))
def test_parse_finds_exactly_the_tokens_written(template: tuple[str, list, dict, str]) -> None:
    body, written, _, _ = template
    tokens = parse(body)
    assert [(t.kind, t.name) for t in tokens] == written
    assert all(body[t.start : t.end] == t.text for t in tokens)


@given(_template(st.text(max_size=10)))
def test_render_inserts_every_value_literally(template: tuple[str, list, dict, str]) -> None:
    # Values are any text at all, token-like ones included: they come out exactly as given.
    body, _, sources, expected = template
    result = render(body, sources["variant"], sources["entity"], sources["variable"])
    assert result.text == expected
    assert result.missing == []


@given(_template(st.text(alphabet=st.characters(exclude_characters="${}"), max_size=10)))
def test_render_with_all_values_leaves_no_token(template: tuple[str, list, dict, str]) -> None:
    body, _, sources, _ = template
    result = render(body, sources["variant"], sources["entity"], sources["variable"])
    assert result.text is not None
    assert parse(result.text) == []


@given(_template(st.text(max_size=10)), st.data())
def test_any_missing_value_gives_no_text_and_names_every_missing_token(
    template: tuple[str, list, dict, str], data: st.DataObject
) -> None:
    body, written, sources, _ = template
    dropped = data.draw(st.sets(st.sampled_from(written))) if written else set()
    for kind, name in dropped:
        sources[kind].pop(name, None)
    result = render(body, sources["variant"], sources["entity"], sources["variable"])
    expected_missing = list(
        dict.fromkeys(_KIND_WRITTEN[k] % n for k, n in written if (k, n) in dropped)
    )
    assert result.missing == expected_missing
    assert (result.text is None) == bool(dropped)


@given(st.lists(st.sampled_from(["$", "{", "}", "a", ":", " ", "entity", "vrbl"])).map("".join))
def test_parse_either_returns_tokens_or_raises_a_syntax_error(body: str) -> None:
    try:
        tokens = parse(body)
    except TemplateSyntaxError as error:
        assert 0 <= error.position < len(body)
        assert body[error.position :].startswith(error.token[:2])
    else:
        assert all(body[t.start : t.end] == t.text for t in tokens)
        assert render(body, *({t.name: "v" for t in tokens},) * 3).complete
