"""The SMS compliance keywords (STOP, START, HELP) and their default replies.

Pure functions, no I/O. A message is a keyword only when the WHOLE message, normalised, is one of
the listed words: ``"stop"``, ``" Stop! "`` and ``"STOP."`` are; ``"STOP!!"``, ``"STOP PLEASE"``,
``"S TOP"`` and ``"STOP !"`` are not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Keyword = Literal["STOP", "START", "HELP"]

#: Opt-out words. REVOKE and OPTOUT: carriers have treated them as opt-out since 2025.
STOP_WORDS: tuple[str, ...] = (
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
)
#: Opt-in (resubscribe) words.
START_WORDS: tuple[str, ...] = ("START", "YES", "UNSTOP")
#: Help words.
HELP_WORDS: tuple[str, ...] = ("HELP", "INFO")

#: Every keyword word, by the keyword it stands for.
KEYWORDS: dict[Keyword, tuple[str, ...]] = {
    "STOP": STOP_WORDS,
    "START": START_WORDS,
    "HELP": HELP_WORDS,
}

#: The replies sent when a project has not configured its own.
DEFAULT_REPLIES: dict[Keyword, str] = {
    "STOP": (
        "You have been unsubscribed and will not receive further messages. "
        "Reply START to resubscribe."
    ),
    "START": "You have been resubscribed and will receive messages again.",
    "HELP": "Reply STOP to unsubscribe or START to resubscribe.",
}

#: The punctuation of which ONE trailing character is ignored.
TRAILING_PUNCTUATION = ".!?,;"

_WORD_TO_KEYWORD: dict[str, Keyword] = {
    word: keyword for keyword, words in KEYWORDS.items() for word in words
}
# Only ASCII a-z are uppercased: str.upper() maps "ſ" (long s) to "S", "ı" (dotless i) to "I" and
# the ligature "ﬆ" to "ST", which would turn "ſtop", "quıt" or "ﬆop" into keywords.
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def normalise(text: str) -> str:
    """The form of ``text`` that is compared with the keyword lists.

    In this order: surrounding whitespace is stripped (any Unicode whitespace, as ``str.strip``
    does), then ONE trailing ``.``, ``!``, ``?``, ``,`` or ``;`` is dropped, then ASCII letters are
    uppercased (other characters are left as they are). Whitespace is not stripped a second time,
    so ``"STOP !"`` normalises to ``"STOP "``, which is not a keyword: the contract strips, drops
    one character and compares the rest whole, and only one character is ever forgiven, as for
    ``"STOP!!"``.
    Never raises for a ``str``.
    """
    stripped = text.strip()
    if stripped and stripped[-1] in TRAILING_PUNCTUATION:
        stripped = stripped[:-1]
    return stripped.translate(_ASCII_UPPER)


def classify(text: str) -> Keyword | None:
    """``"STOP"``, ``"START"`` or ``"HELP"`` when the whole of ``text``, normalised by
    :func:`normalise`, is one of that keyword's words (case-insensitive, ASCII letters only);
    None for every other message."""
    return _WORD_TO_KEYWORD.get(normalise(text))


# -- a project's own keywords and Twilio's classification ------------------------------------------

#: The action of a project's own keyword, by the keyword it stands for, and back.
ACTIONS: dict[str, Keyword] = {"opt_out": "STOP", "opt_in": "START", "help": "HELP"}
ACTION_OF: dict[Keyword, str] = {keyword: action for action, keyword in ACTIONS.items()}
#: The language of the compliance keywords (STOP, START, HELP...) and of Twilio's classification.
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class KeywordMatch:
    """An inbound message taken as a keyword: which one, the language to answer in, and the word
    to record (the message as written, or Twilio's ``OptOutType`` when the text is no keyword)."""

    keyword: Keyword
    language: str
    word: str


def fold(text: str) -> str:
    """The form a project's own keyword is compared in: :func:`normalise`, then Unicode case
    folding (``"Arrêt!"`` and ``"ARRÊT"`` fold alike). Only a project's own keywords are folded
    this way; the built-in words keep the ASCII-only comparison of :func:`classify`."""
    return normalise(text).casefold()


#: Every built-in word, folded: a project's keyword that folds to one of them is refused.
BUILT_IN_FOLDED = frozenset(word.casefold() for words in KEYWORDS.values() for word in words)


def match_keyword(
    text: str,
    custom: Iterable[Mapping[str, str]] = (),
    opt_out_type: str | None = None,
) -> KeywordMatch | None:
    """What ``text`` is as a keyword, or None for a message the agent gets.

    The built-in words come first (answered in English), then the project's own keywords
    (``{"keyword", "action", "language"}``, answered in their language). ``opt_out_type`` is the
    ``OptOutType`` Twilio adds when its Advanced Opt-Out classified the message (``STOP``,
    ``START``, ``HELP``; anything else is ignored): it decides the keyword whatever the text,
    and the language is the matched keyword's when that keyword has the same action.
    """
    word = text.strip()
    found: KeywordMatch | None = None
    builtin = classify(text)
    if builtin is not None:
        found = KeywordMatch(builtin, DEFAULT_LANGUAGE, word)
    else:
        folded = fold(text)
        for entry in custom:
            if folded and fold(entry["keyword"]) == folded and entry["action"] in ACTIONS:
                found = KeywordMatch(
                    ACTIONS[entry["action"]], entry.get("language") or DEFAULT_LANGUAGE, word
                )
                break
    twilio = (opt_out_type or "").strip().upper()
    if twilio not in KEYWORDS:
        return found
    if found is not None and found.keyword == twilio:
        return found
    # The text says something else (or nothing Twilio would need): Twilio's word is recorded.
    return KeywordMatch(twilio, DEFAULT_LANGUAGE, twilio)
