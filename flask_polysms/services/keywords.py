"""The SMS compliance keywords (STOP, START, HELP) and their default replies.

Pure functions, no I/O. A message is a keyword only when the WHOLE message, normalised, is one of
the listed words: ``"stop"``, ``" Stop! "`` and ``"STOP."`` are; ``"STOP!!"``, ``"STOP PLEASE"``,
``"S TOP"`` and ``"STOP !"`` are not.
"""

from __future__ import annotations

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
