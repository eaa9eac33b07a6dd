"""Compliance keywords (flask_polysms.services.keywords): normalisation, matching and the word
lists, exactly."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from flask_polysms.services.keywords import (
    BUILT_IN_FOLDED,
    DEFAULT_REPLIES,
    HELP_WORDS,
    KEYWORDS,
    START_WORDS,
    STOP_WORDS,
    classify,
    fold,
    match_keyword,
    normalise,
)

ALL_WORDS = [(word, keyword) for keyword, words in KEYWORDS.items() for word in words]
PUNCTUATION = ".!?,;"


def test_lists_are_the_contract() -> None:
    assert STOP_WORDS == (
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "REVOKE",
        "OPTOUT",
    )
    assert START_WORDS == ("START", "YES", "UNSTOP")
    assert HELP_WORDS == ("HELP", "INFO")
    assert set(KEYWORDS) == {"STOP", "START", "HELP"}


def test_default_replies_are_the_contract() -> None:
    assert DEFAULT_REPLIES == {
        "STOP": (
            "You have been unsubscribed and will not receive further messages. "
            "Reply START to resubscribe."
        ),
        "START": "You have been resubscribed and will receive messages again.",
        "HELP": "Reply STOP to unsubscribe or START to resubscribe.",
    }


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("stop", "STOP"),
        (" Stop! ", "STOP"),
        ("quit;", "STOP"),
        ("STOP.", "STOP"),
        ("revoke", "STOP"),
        ("optout", "STOP"),
        ("info", "HELP"),
        ("Unstop", "START"),
        ("yes?", "START"),
        ("\n\tcancel,\r\n", "STOP"),
        ("\u00a0STOP\u3000", "STOP"),  # no-break and ideographic spaces are whitespace too
        ("Help", "HELP"),
    ],
)
def test_keywords(text: str, keyword: str) -> None:
    assert classify(text) == keyword


@pytest.mark.parametrize(
    "text",
    [
        "STOP!!",  # one trailing punctuation character only
        "STOP PLEASE",
        "S TOP",
        "STOP !",  # whitespace is stripped before the punctuation is dropped, not after
        "!STOP",  # leading punctuation is not ignored
        "STOP:",  # ":" is not in the list
        "STOP‼",
        "STOP！",  # full-width "!"
        "ＳＴＯＰ",  # full-width letters
        "ſtop",  # long s: "ſtop".upper() == "STOP"
        "quıt",  # dotless i: "quıt".upper() == "QUIT"
        "ﬆop",  # "ﬆ" ligature: "ﬆop".upper() == "STOP"
        "ßTOP",
        "STOP\u200b",  # zero-width space is not whitespace
        "STO P",
        "STOPS",
        "UNSTOPPABLE",
        "no",
        "stop it",
        "Please stop",
        "",
        "   ",
        ".",
        "!!",
    ],
)
def test_not_keywords(text: str) -> None:
    assert classify(text) is None


@pytest.mark.parametrize(("word", "keyword"), ALL_WORDS)
def test_every_word_in_every_case(word: str, keyword: str) -> None:
    for variant in (word, word.lower(), word.title(), word.swapcase(), word[0].lower() + word[1:]):
        assert classify(variant) == keyword
        for mark in PUNCTUATION:
            assert classify(variant + mark) == keyword
            assert classify(f"  {variant}{mark}\n") == keyword


def test_normalise() -> None:
    assert normalise(" Stop! ") == "STOP"
    assert normalise("STOP!!") == "STOP!"
    assert normalise("STOP !") == "STOP "
    assert normalise("stop please.") == "STOP PLEASE"
    assert normalise("ſtop") == "ſTOP"  # only ASCII letters are uppercased
    assert normalise("") == ""
    assert normalise("?") == ""


_WHITESPACE = st.text(alphabet=" \t\n\r\u00a0\u2003\u3000", max_size=4)


@st.composite
def _random_case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.lower() if flip else c for c, flip in zip(word, flips, strict=True))


@st.composite
def _written_keyword(draw: st.DrawFn) -> tuple[str, str, str]:
    """(a keyword word, the keyword, that word in random case)."""
    word, keyword = draw(st.sampled_from(ALL_WORDS))
    return word, keyword, draw(_random_case(word))


@given(_written_keyword(), st.sampled_from(["", *PUNCTUATION]), _WHITESPACE, _WHITESPACE)
def test_punctuation_whitespace_and_case_are_ignored(
    written: tuple[str, str, str], mark: str, before: str, after: str
) -> None:
    word, keyword, cased = written
    assert classify(before + cased + mark + after) == classify(word) == keyword


@given(
    _written_keyword(),
    st.text(alphabet=st.characters(categories=["L"]), max_size=3),
    st.text(alphabet=st.characters(categories=["L"]), max_size=3),
)
def test_letters_around_a_keyword_make_it_another_message(
    written: tuple[str, str, str], prefix: str, suffix: str
) -> None:
    _, _, cased = written
    assume(prefix or suffix)
    text = prefix + cased + suffix
    # Some words contain others (STOP/STOPALL, STOP/UNSTOP): those are keywords in their own right.
    assume(text.upper() not in {w for w, _ in ALL_WORDS})
    assert classify(text) is None


@given(_written_keyword(), st.text(min_size=1, max_size=3))
def test_more_than_one_trailing_character_is_not_forgiven(
    written: tuple[str, str, str], tail: str
) -> None:
    _, _, cased = written
    assume(len(tail) > 1 or tail not in PUNCTUATION)
    assume(tail == tail.rstrip())  # trailing whitespace is stripped, by design
    text = cased + tail
    assume(normalise(text) not in {w for w, _ in ALL_WORDS})
    assert classify(text) is None


@given(st.text())
def test_normalise_never_raises(text: str) -> None:
    result = normalise(text)
    assert isinstance(result, str)
    assert len(result) <= len(text)
    # Keywords are ASCII: a keyword match can only come from ASCII letters.
    if classify(text) is not None:
        assert result.isascii() and result.isalpha()


# -- a project's own keywords and Twilio's OptOutType ---------------------------------------------
CUSTOM = [
    {"keyword": "ARRÊT", "action": "opt_out", "language": "fr"},
    {"keyword": "Ayuda", "action": "help", "language": "es"},
    {"keyword": "HALT", "action": "opt_out", "language": "en"},
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("arrêt", ("STOP", "fr", "arrêt")),
        (" Arrêt! ", ("STOP", "fr", "Arrêt!")),
        ("AYUDA?", ("HELP", "es", "AYUDA?")),
        ("halt", ("STOP", "en", "halt")),
        ("stop", ("STOP", "en", "stop")),  # built-in words come first, in English
        ("arrêt!!", None),
        ("arrêt maintenant", None),
        ("", None),
    ],
)
def test_project_keywords_are_matched_with_the_same_normalisation(text, expected) -> None:
    found = match_keyword(text, CUSTOM)
    assert (found and (found.keyword, found.language, found.word)) == expected


@pytest.mark.parametrize(
    ("text", "opt_out_type", "expected"),
    [
        ("please stop texting me", "STOP", ("STOP", "en", "STOP")),
        ("ok go on", "START", ("START", "en", "START")),
        ("what?", "help", ("HELP", "en", "HELP")),
        ("START", "STOP", ("STOP", "en", "STOP")),  # Twilio's classification wins
        ("arrêt", "STOP", ("STOP", "fr", "arrêt")),  # the same action: the keyword's language
        ("hello", "OTHER", None),  # an unknown value is ignored
        ("stop", "", ("STOP", "en", "stop")),
    ],
)
def test_twilios_opt_out_type_decides_the_keyword(text, opt_out_type, expected) -> None:
    found = match_keyword(text, CUSTOM, opt_out_type)
    assert (found and (found.keyword, found.language, found.word)) == expected


def test_built_in_words_are_known_folded() -> None:
    assert all(word.casefold() in BUILT_IN_FOLDED for word, _ in ALL_WORDS)
    assert fold("Stop.") in BUILT_IN_FOLDED and fold("ARRÊT") not in BUILT_IN_FOLDED
