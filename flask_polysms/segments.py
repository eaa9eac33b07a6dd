"""How many SMS segments a text costs, by Twilio's rules (GSM-7 160/153, UCS-2 70/67).

Pure functions, no I/O. The counts are those a carrier bills: a message that fits one segment uses
the whole payload; a longer one carries a 6-octet concatenation header in every part, leaving 153
septets (GSM-7) or 67 UTF-16 code units (UCS-2) per part. A character is never cut in two across
parts: a GSM-7 extension character (escape + code) and a UTF-16 surrogate pair (an emoji) always
travel in one part, as Twilio and the handsets do; the part before is then one unit short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# The GSM 03.38 default alphabet (one septet each). 0x1B (escape) is not a character of its own.
GSM7_BASIC_CHARACTERS = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The default extension table: each is sent as escape + code, so it costs two septets.
GSM7_EXTENSION_CHARACTERS = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE_SEGMENT = 160
GSM7_MULTI_SEGMENT = 153
UCS2_SINGLE_SEGMENT = 70
UCS2_MULTI_SEGMENT = 67


@dataclass(frozen=True)
class SegmentCount:
    """The cost of one text.

    ``encoding`` is ``"GSM-7"`` or ``"UCS-2"``; ``segments`` the parts billed; ``units`` the
    payload size in the encoding's units (septets for GSM-7, where an extension character counts
    two; UTF-16 code units for UCS-2, where an emoji outside the BMP counts two); ``characters``
    the number of Unicode code points (Python's ``len``).
    """

    encoding: Encoding
    segments: int
    units: int
    characters: int


def is_gsm7(text: str) -> bool:
    """True when every character of ``text`` is in the GSM-7 default alphabet or its extension."""
    return all(c in GSM7_BASIC_CHARACTERS or c in GSM7_EXTENSION_CHARACTERS for c in text)


def _pack(sizes: list[int], single: int, multi: int) -> int:
    """Parts needed for characters of ``sizes`` units: one part when the total fits ``single``,
    else parts of ``multi`` filled in order, a character that does not fit opening the next part."""
    if sum(sizes) <= single:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > multi:
            parts, used = parts + 1, 0
        used += size
    return parts


def count_segments(text: str) -> SegmentCount:
    """Count the segments ``text`` is sent and billed as.

    GSM-7 when every character is in the GSM-7 alphabet (extension characters ``|^{}[]~\\€`` and
    form feed cost two septets), otherwise UCS-2 (one character outside GSM-7 is enough). Up to
    160 septets / 70 code units is one segment; longer texts are split into parts of at most 153
    septets / 67 code units without splitting an extension character or a surrogate pair.

    The empty text counts as one GSM-7 segment with zero units: Twilio bills an empty body (e.g. a
    media-only message) as one segment. No normalisation is applied (Twilio's optional "smart
    encoding" that swaps curly quotes for straight ones is not emulated), so the count is the one
    for the text exactly as given. Parts are cut between code points: Twilio's own calculator also
    keeps a whole grapheme cluster (a ZWJ emoji sequence, a flag) in one part, so for such a
    cluster lying across a part boundary this count can be one segment lower than Twilio's.
    """
    if is_gsm7(text):
        sizes = [2 if c in GSM7_EXTENSION_CHARACTERS else 1 for c in text]
        segments = _pack(sizes, GSM7_SINGLE_SEGMENT, GSM7_MULTI_SEGMENT)
        return SegmentCount("GSM-7", segments, sum(sizes), len(text))
    # Python strings hold code points; those above the BMP are a surrogate pair in UTF-16.
    sizes = [2 if ord(c) > 0xFFFF else 1 for c in text]
    segments = _pack(sizes, UCS2_SINGLE_SEGMENT, UCS2_MULTI_SEGMENT)
    return SegmentCount("UCS-2", segments, sum(sizes), len(text))
