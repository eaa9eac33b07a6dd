"""A project's consent settings: its own keywords, its keyword replies per language, who answers
keywords (us or Twilio), and its quiet hours.

They live in the project's ``settings``: ``keywords`` (a list of ``{"keyword", "action",
"language"}``), ``replies`` (``{language: {"opt_out", "opt_in", "help"}}``, what differs from the
defaults), ``keyword_replies_by`` (``"ours"`` or ``"twilio"``) and ``quiet_hours``
(``{"start", "end"}``). 0.1 kept English replies as ``keyword_replies``
(``{"STOP"|"START"|"HELP": text}``): still read, as English, until English replies are set.

The built-in keywords (:mod:`.keywords`) always apply; a project's own keywords are added to them,
never replace them. Every change is validated whole before anything is written: a 400 names
each field at fault and changes nothing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFoundError
from ..ports.store import NotFound
from ..records import Project
from .keywords import (
    ACTION_OF,
    ACTIONS,
    BUILT_IN_FOLDED,
    DEFAULT_LANGUAGE,
    DEFAULT_REPLIES,
    KeywordMatch,
    fold,
)

if TYPE_CHECKING:
    from .state import PolySMSState

#: The texts of one language, by the action they answer.
REPLY_FIELDS = tuple(ACTIONS)
#: ``keyword_replies``: we answer keywords, or Twilio's own opt-out handling does.
OURS, TWILIO = "ours", "twilio"
KEYWORD_REPLIES = (OURS, TWILIO)
MAX_KEYWORDS = 50
KEYWORD_MAX_LENGTH = 30
MAX_LANGUAGES = 20
LANGUAGE_MAX_LENGTH = 35
REPLY_MAX_LENGTH = 1600  # what one outbound message may hold
# A BCP 47-like tag, lower-case primary language: "en", "fr", "es-MX", "zh-Hant".
LANGUAGE_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$"
_LANGUAGE = re.compile(LANGUAGE_PATTERN.replace("^", r"\A").replace("$", r"\Z"))
TIME_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"

_DEFAULT_TEXTS = {ACTION_OF[keyword]: text for keyword, text in DEFAULT_REPLIES.items()}


# -- reading --------------------------------------------------------------------------------------
def custom_keywords(project: Project) -> list[dict[str, str]]:
    """The project's own keywords, as set."""
    return [dict(entry) for entry in project.settings.get("keywords") or ()]


def replies(project: Project) -> dict[str, dict[str, str]]:
    """Every language's replies; ``en`` always, holding the defaults until changed."""
    stored = project.settings.get("replies") or {}
    english = dict(_DEFAULT_TEXTS)
    legacy = project.settings.get("keyword_replies")
    if isinstance(legacy, dict):
        english.update({ACTION_OF[k]: v for k, v in legacy.items() if k in ACTION_OF and v})
    english.update(stored.get(DEFAULT_LANGUAGE) or {})
    languages = {DEFAULT_LANGUAGE: english}
    for language, texts in sorted(stored.items()):
        if language != DEFAULT_LANGUAGE:
            languages[language] = {**english, **texts}
    return languages


def keyword_replies(project: Project) -> str:
    """``"ours"`` (we answer keywords) or ``"twilio"`` (Twilio does; we only record)."""
    return project.settings.get("keyword_replies_by") or OURS


def quiet_hours(project: Project) -> dict[str, str] | None:
    """``{"start": "HH:MM", "end": "HH:MM"}`` in the recipient's local time, or None (off)."""
    hours = project.settings.get("quiet_hours")
    return dict(hours) if hours else None


def settings_dict(project: Project) -> dict[str, Any]:
    """The project's settings as ``GET /v1/project`` shows them."""
    return {
        "id": project.id,
        "name": project.name,
        "keywords": custom_keywords(project),
        "replies": replies(project),
        "keyword_replies": keyword_replies(project),
        "quiet_hours": quiet_hours(project),
    }


def reply_text(project: Project | None, match: KeywordMatch) -> str | None:
    """What we answer a keyword with, in its language (English when the project has none for
    it); None when Twilio's own opt-out handling answers for this project."""
    if project is None:
        return DEFAULT_REPLIES[match.keyword]
    if keyword_replies(project) == TWILIO:
        return None
    languages = replies(project)
    texts = languages.get(match.language) or languages[DEFAULT_LANGUAGE]
    return texts[ACTION_OF[match.keyword]]


# -- changing -------------------------------------------------------------------------------------
def update_settings(state: PolySMSState, project_id: str, changes: dict[str, Any]) -> dict:
    """Apply ``changes`` (any of ``keywords``, ``replies``, ``keyword_replies``,
    ``quiet_hours``) to the project's settings and return them as :func:`settings_dict` does.

    ``keywords`` replaces the project's own keywords; ``replies`` changes the languages it
    names (a text at a time; a language set to null is removed, ``en`` then returns to the
    defaults). Raises InvalidInput (400) with every field at fault, and writes nothing, when a
    keyword is a built-in one or given twice, a keyword's language has no replies, or a new
    language lacks one of its three texts.
    """

    def changed(settings: dict[str, Any]) -> dict[str, Any]:
        return _changed_settings(settings, changes)

    try:
        # Applied to the settings as stored when it runs: two changes at once both land.
        updated = state.store.change_project_settings(project_id, changed)
    except NotFound as exc:
        raise NotFoundError("project not found") from exc
    return settings_dict(updated)


def _changed_settings(settings: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with ``changes`` applied (see :func:`update_settings`); InvalidInput when
    they are at fault."""
    errors: dict[str, list[str]] = {}
    if "replies" in changes:
        _apply_replies(settings, changes["replies"] or {}, errors)
    if "keywords" in changes:
        settings["keywords"] = _checked_keywords(changes["keywords"] or [], errors)
    if "keyword_replies" in changes:
        settings["keyword_replies_by"] = changes["keyword_replies"]
    if "quiet_hours" in changes:
        hours = changes["quiet_hours"]
        if hours and hours["start"] == hours["end"]:
            errors["quiet_hours"] = ["start and end must differ (null turns quiet hours off)"]
        settings["quiet_hours"] = {"start": hours["start"], "end": hours["end"]} if hours else None
    languages = set((settings.get("replies") or {}).keys()) | {DEFAULT_LANGUAGE}
    for i, entry in enumerate(settings.get("keywords") or ()):
        if entry["language"] not in languages:
            errors.setdefault(f"keywords.{i}.language", []).append(
                f"no replies in {entry['language']!r}: add replies.{entry['language']} "
                "(opt_out, opt_in, help)"
            )
    if errors:
        raise InvalidInput("invalid project settings: see errors", errors=errors)
    return settings


def _checked_keywords(entries: list[dict[str, str]], errors: dict[str, list[str]]) -> list:
    kept: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        keyword = entry["keyword"].strip()
        folded = fold(keyword)
        field = f"keywords.{i}.keyword"
        if not folded:
            errors.setdefault(field, []).append("a keyword needs a letter or digit")
        elif folded in BUILT_IN_FOLDED:
            errors.setdefault(field, []).append(
                f"{keyword!r} is a built-in keyword: it always applies and cannot be redefined"
            )
        elif folded in seen:
            errors.setdefault(field, []).append(
                f"{keyword!r} is given twice (also keywords.{seen[folded]})"
            )
        else:
            seen[folded] = i
        kept.append(
            {
                "keyword": keyword,
                "action": entry["action"],
                "language": entry.get("language") or DEFAULT_LANGUAGE,
            }
        )
    return kept


def _apply_replies(
    settings: dict[str, Any], changes: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    stored = {k: dict(v) for k, v in (settings.get("replies") or {}).items()}
    legacy = settings.pop("keyword_replies", None)
    if isinstance(legacy, dict) and DEFAULT_LANGUAGE not in stored:
        # 0.1's English replies move to where English replies are now kept.
        english = {ACTION_OF[k]: v for k, v in legacy.items() if k in ACTION_OF and v}
        if english:
            stored[DEFAULT_LANGUAGE] = english
    for language, texts in changes.items():
        if texts is None:
            stored.pop(language, None)
            continue
        current = stored.get(language, {})
        merged = {**current, **{k: v for k, v in texts.items() if v is not None}}
        missing = [f for f in REPLY_FIELDS if f not in merged]
        if language != DEFAULT_LANGUAGE and missing:
            errors.setdefault(f"replies.{language}", []).append(
                f"a language needs all three replies: {', '.join(missing)} missing"
            )
        stored[language] = merged
    if len(stored) > MAX_LANGUAGES:
        errors.setdefault("replies", []).append(f"at most {MAX_LANGUAGES} languages")
    settings["replies"] = stored


def language_problem(language: str) -> str | None:
    """Why ``language`` is not a language tag we keep replies under (None: it is one)."""
    if len(language) > LANGUAGE_MAX_LENGTH or not _LANGUAGE.match(language):
        return "a language tag such as en, fr or es-MX"
    return None
