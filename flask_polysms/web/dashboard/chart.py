"""The SMS widget's bar chart: geometry for an inline SVG, computed here and drawn by Jinja.

Pure functions over :func:`flask_polysms.services.metrics.summarise`'s ``by_day``; the template
only places
the rectangles and labels this module computes, so the drawing needs no JavaScript and no build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 240
# Room for the axis labels: values on the left, dates below.
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 12, 36
GRID_LINES = 4  # above the baseline


@dataclass(frozen=True)
class Series:
    """One bar per day: ``key`` names it in CSS classes and test hooks, ``label`` in the legend."""

    key: str
    label: str
    counters: tuple[str, ...]  # summed for the bar's value


#: Sent vs failed, and our own failed requests. "failed" is what carriers did not deliver
#: (Twilio's failed and undelivered); api_failures are sends Twilio refused or we never tried.
SERIES = (
    Series("sent", "sent", ("sent",)),
    Series("failed", "failed / undelivered", ("failed", "undelivered")),
    Series("api_failures", "API failures", ("api_failures",)),
)


@dataclass(frozen=True)
class Bar:
    series: str
    day: str
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class DayLabel:
    day: str
    text: str
    x: float


@dataclass(frozen=True)
class GridLine:
    value: int
    y: float


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    baseline: float
    left: float
    right: float
    bars: list[Bar]
    days: list[DayLabel]
    grid: list[GridLine]
    series: Sequence[Series]


def _grid_step(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^n such that four grid steps reach ``value``."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if GRID_LINES * step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def daily_chart(by_day: Sequence[dict], series: Sequence[Series] = SERIES) -> Chart:
    """Bars for each day of ``by_day`` (oldest first), one per series, scaled to the largest."""
    values = [[sum(day.get(c, 0) for c in s.counters) for s in series] for day in by_day]
    step = _grid_step(max((v for row in values for v in row), default=0))
    top = step * GRID_LINES
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_height
    slot = plot_width / max(len(by_day), 1)
    bar_width = slot * 0.8 / max(len(series), 1)
    bars: list[Bar] = []
    days: list[DayLabel] = []
    for index, (day, row) in enumerate(zip(by_day, values, strict=True)):
        start = LEFT + index * slot + slot * 0.1
        for position, (s, value) in enumerate(zip(series, row, strict=True)):
            height = plot_height * value / top
            bars.append(
                Bar(
                    series=s.key,
                    day=day["date"],
                    value=value,
                    x=round(start + position * bar_width, 2),
                    y=round(baseline - height, 2),
                    width=round(bar_width, 2),
                    height=round(height, 2),
                )
            )
        # "11-24" under each slot; the year and month are in the widget's title.
        days.append(DayLabel(day["date"], day["date"][5:], round(LEFT + (index + 0.5) * slot, 2)))
    grid = [
        GridLine(value=step * i, y=round(baseline - plot_height * i / GRID_LINES, 2))
        for i in range(GRID_LINES + 1)
    ]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        baseline=baseline,
        left=LEFT,
        right=WIDTH - RIGHT,
        bars=bars,
        days=days,
        grid=grid,
        series=series,
    )
