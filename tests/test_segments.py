"""SMS segment counting (flask_polysms.segments), against Twilio's rules."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_polysms.segments import (
    GSM7_BASIC_CHARACTERS,
    GSM7_EXTENSION_CHARACTERS,
    SegmentCount,
    count_segments,
    is_gsm7,
)

EXTENSION = "|^{}[]~\\€\f"
CYRILLIC = "ж"  # outside GSM-7, one UTF-16 code unit
EMOJI = "😀"  # outside the BMP: a surrogate pair, two code units


def test_alphabet_is_gsm_03_38() -> None:
    # 128 positions, one of which (0x1B) is the escape to the extension table.
    assert len(GSM7_BASIC_CHARACTERS) == 127
    assert GSM7_EXTENSION_CHARACTERS == frozenset(EXTENSION)
    assert not GSM7_BASIC_CHARACTERS & GSM7_EXTENSION_CHARACTERS
    for c in "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà":
        assert c in GSM7_BASIC_CHARACTERS


@pytest.mark.parametrize("char", ["`", "ç", "á", "ó", "ú", "í", "Ê", "\t", "’", "“", "—", "…"])
def test_lookalikes_outside_gsm7_switch_to_ucs2(char: str) -> None:
    # Backtick, lowercase c-cedilla, most accents, tab and typographic quotes are not GSM-7.
    assert count_segments("plain text " + char).encoding == "UCS-2"


def test_empty_text_is_one_segment() -> None:
    assert count_segments("") == SegmentCount("GSM-7", 1, 0, 0)


@pytest.mark.parametrize(
    ("length", "segments"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)]
)
def test_gsm7_lengths(length: int, segments: int) -> None:
    assert count_segments("a" * length) == SegmentCount("GSM-7", segments, length, length)


@pytest.mark.parametrize(
    ("length", "segments"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)]
)
def test_ucs2_lengths(length: int, segments: int) -> None:
    assert count_segments(CYRILLIC * length) == SegmentCount("UCS-2", segments, length, length)


@pytest.mark.parametrize("char", list(EXTENSION))
def test_extension_characters_count_two_septets(char: str) -> None:
    result = count_segments(char)
    assert result == SegmentCount("GSM-7", 1, 2, 1)
    assert count_segments(char * 80) == SegmentCount("GSM-7", 1, 160, 80)
    assert count_segments(char * 81).segments == 2


def test_euro_at_position_160_makes_two_segments() -> None:
    # 159 septets + the two of "€" = 161: over the single-segment limit.
    assert count_segments("a" * 159 + "€") == SegmentCount("GSM-7", 2, 161, 160)
    assert count_segments("a" * 158 + "€") == SegmentCount("GSM-7", 1, 160, 159)


def test_extension_character_is_not_split_across_segments() -> None:
    # 152 + 2 + 152 = 306 septets would fit two parts of 153, but "€" cannot straddle the boundary:
    # part 1 carries 152 septets, part 2 "€" and 151 "a", part 3 the last "a".
    assert count_segments("a" * 152 + "€" + "a" * 152) == SegmentCount("GSM-7", 3, 306, 305)
    # The same septets with "€" inside the first part fit two parts.
    assert count_segments("a" * 151 + "€" + "a" * 153) == SegmentCount("GSM-7", 2, 306, 305)


def test_emoji_counts_two_code_units() -> None:
    assert count_segments(EMOJI) == SegmentCount("UCS-2", 1, 2, 1)
    assert count_segments(EMOJI * 35) == SegmentCount("UCS-2", 1, 70, 35)
    assert count_segments(EMOJI * 36) == SegmentCount("UCS-2", 2, 72, 36)


def test_surrogate_pair_is_not_split_across_segments() -> None:
    # 66 + 2 + 66 = 134 code units would fit two parts of 67; the pair moves to part 2.
    assert count_segments(CYRILLIC * 66 + EMOJI + CYRILLIC * 66) == SegmentCount(
        "UCS-2", 3, 134, 133
    )
    assert count_segments(CYRILLIC * 65 + EMOJI + CYRILLIC * 67) == SegmentCount(
        "UCS-2", 2, 134, 133
    )


def test_one_non_gsm_character_switches_everything_to_ucs2() -> None:
    # In UCS-2 "€" is one code unit, no longer two septets.
    result = count_segments("€" * 60 + CYRILLIC)
    assert result == SegmentCount("UCS-2", 1, 61, 61)
    assert count_segments("a" * 100 + EMOJI) == SegmentCount("UCS-2", 2, 102, 101)


def test_gsm7_detection() -> None:
    assert is_gsm7("")
    assert is_gsm7("Hello {name}, 5€ [ok] ~ | ^ \\")
    assert not is_gsm7("Hello " + EMOJI)


# Texts that cross the part boundaries with every kind of character: basic GSM-7, extension,
# BMP non-GSM, and astral (surrogate-pair) characters.
_MIXED = st.text(
    alphabet=st.one_of(
        st.sampled_from(sorted(GSM7_BASIC_CHARACTERS)),
        st.sampled_from(EXTENSION),
        st.sampled_from([CYRILLIC, "ç", "’", EMOJI, "🇬", "𝄞"]),
        st.characters(),
    ),
    max_size=400,
)
_GSM = st.text(
    alphabet=st.one_of(st.sampled_from(sorted(GSM7_BASIC_CHARACTERS)), st.sampled_from(EXTENSION)),
    min_size=100,
    max_size=700,
)


def _reference_parts(text: str) -> int:
    """An independent count: lay the units out in a row and cut every ``multi`` units, stepping
    back one unit whenever a cut would fall inside a two-unit character."""
    if is_gsm7(text):
        single, multi = 160, 153
        # One entry per septet; True marks the escape septet that must stay with the next one.
        row = [flag for c in text for flag in ((True, False) if c in EXTENSION else (False,))]
    else:
        single, multi = 70, 67
        row = [flag for c in text for flag in ((True, False) if ord(c) > 0xFFFF else (False,))]
    if len(row) <= single:
        return 1
    parts, start = 0, 0
    while start < len(row):
        end = min(start + multi, len(row))
        if end < len(row) and row[end - 1]:
            end -= 1
        parts, start = parts + 1, end
    return parts


@given(_MIXED)
def test_matches_the_reference_cutter(text: str) -> None:
    assert count_segments(text).segments == _reference_parts(text)


@given(_GSM)
def test_matches_the_reference_cutter_on_long_gsm7(text: str) -> None:
    assert count_segments(text).segments == _reference_parts(text)


@given(_MIXED)
def test_units_and_characters(text: str) -> None:
    result = count_segments(text)
    assert result.characters == len(text)
    if result.encoding == "GSM-7":
        assert is_gsm7(text)
        assert result.units == len(text) + sum(c in EXTENSION for c in text)
    else:
        assert not is_gsm7(text)
        # surrogatepass: a lone surrogate (json.loads accepts "\\ud800") is one code unit.
        assert result.units == len(text.encode("utf-16-le", "surrogatepass")) // 2


@given(_MIXED)
def test_segments_never_decrease_as_characters_are_appended(text: str) -> None:
    counts = [count_segments(text[:i]).segments for i in range(len(text) + 1)]
    assert counts == sorted(counts)


@given(st.one_of(_MIXED, _GSM))
def test_segments_are_bounded_by_the_part_sizes(text: str) -> None:
    result = count_segments(text)
    single, multi = (160, 153) if result.encoding == "GSM-7" else (70, 67)
    if result.units <= single:
        assert result.segments == 1
    else:
        # Each part holds at most `multi` units and, but for the last, at least `multi - 1`.
        assert math.ceil(result.units / multi) <= result.segments
        assert result.segments <= math.ceil(result.units / (multi - 1))
