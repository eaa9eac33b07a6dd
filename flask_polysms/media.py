"""Pictures on a message (MMS): the ``media`` list a message keeps and the URLs a send carries.

Pure: no Flask, no I/O. A message's ``media`` is a list of ``{"url", "content_type"}``; inbound,
Twilio names both; outbound, only the URL is ours to give (Twilio fetches it and finds the type),
so ``content_type`` is None.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

#: Twilio takes at most 10 pictures per message, outbound and inbound.
MAX_MEDIA = 10
#: The longest URL we keep; a browser's practical limit, far above what Twilio hands out.
MAX_URL_LENGTH = 2048
#: The longest content type we keep (RFC 6838 names are at most 127 + 1 + 127 characters).
MAX_CONTENT_TYPE_LENGTH = 255


def media_from_urls(urls: Iterable[str] | None) -> list[dict[str, Any]]:
    """The ``media`` of an outbound message sending ``urls`` (content types unknown)."""
    return [{"url": url, "content_type": None} for url in urls or ()]


def urls_of(media: Iterable[Mapping[str, Any]] | None) -> list[str]:
    """The URLs of a message's ``media``, in order."""
    return [item["url"] for item in media or ()]


def https_url_problem(url: object, schemes: tuple[str, ...] = ("https",)) -> str | None:
    """Why ``url`` cannot be handed to Twilio as a picture, or None when it can: an absolute
    ``https://`` URL (or another of ``schemes``) with a host, no spaces or control characters,
    at most 2048 characters."""
    wanted = " or ".join(f"{scheme}://" for scheme in schemes)
    if not isinstance(url, str) or not url:
        return f"must be an {wanted} URL"
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"must be an {wanted} URL"
    if parts.scheme.lower() not in schemes or not host:
        return f"must be an {wanted} URL"
    return None


def received_media(form: Mapping[str, str]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The pictures of Twilio's inbound webhook ``form`` (``NumMedia``, ``MediaUrl{i}``,
    ``MediaContentType{i}``) and the problems per parameter (empty when there are none).

    URLs must be ``http://`` or ``https://``: they are shown as links, so no other scheme (a
    ``javascript:`` URL) is kept, even from a signed request.
    """
    errors: dict[str, list[str]] = {}
    count_text = form.get("NumMedia") or "0"
    if not (count_text.isascii() and count_text.isdigit()) or int(count_text) > MAX_MEDIA:
        return [], {"NumMedia": [f"must be a whole number from 0 to {MAX_MEDIA}"]}
    media = []
    for i in range(int(count_text)):
        url = form.get(f"MediaUrl{i}")
        problem = https_url_problem(url, ("https", "http"))
        if problem is not None:
            errors[f"MediaUrl{i}"] = [problem]
            continue
        content_type = form.get(f"MediaContentType{i}") or None
        if content_type is not None and len(content_type) > MAX_CONTENT_TYPE_LENGTH:
            errors[f"MediaContentType{i}"] = [
                f"must be at most {MAX_CONTENT_TYPE_LENGTH} characters"
            ]
            continue
        media.append({"url": url, "content_type": content_type})
    return media, errors


def check_media_urls(urls: object) -> list[str]:
    """``urls`` as a list when they can be sent: 1 to 10 ``https://`` URLs. Raises ValueError
    naming what is wrong (the first bad URL by position)."""
    if isinstance(urls, (str, bytes)) or not isinstance(urls, (list, tuple)):
        raise ValueError("media_urls must be a list of https:// URLs")
    if not 1 <= len(urls) <= MAX_MEDIA:
        raise ValueError(f"media_urls must hold 1 to {MAX_MEDIA} URLs")
    for position, url in enumerate(urls):
        problem = https_url_problem(url)
        if problem is not None:
            raise ValueError(f"media_urls[{position}] {problem}")
    return list(urls)
