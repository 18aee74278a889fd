"""Charts drawn on the server as inline SVG: nothing is fetched by the browser, nothing runs in it.
Pure: values in, markup out. Every bar and point carries its exact figure in a <title> (a tooltip),
so a chart says what it shows to a screen reader and a test alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

WIDTH, HEIGHT = 720, 180
LEFT, BOTTOM, TOP = 56, 22, 10


@dataclass(frozen=True)
class Point:
    label: str  # shown under the axis (every few) and in the tooltip
    value: Decimal | int
    text: str  # the value as the page writes it, e.g. "$1.25" or "42"


def _scale(points: Sequence[Point]) -> Decimal:
    top = max((Decimal(point.value) for point in points), default=Decimal(0))
    return top if top > 0 else Decimal(1)


def _frame(title: str, top_text: str, body: list[str], first: str, last: str) -> str:
    plot_bottom = HEIGHT - BOTTOM
    return "".join([
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{plot_bottom}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{plot_bottom}" x2="{WIDTH}" y2="{plot_bottom}"/>',
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{escape(top_text)}</text>',
        f'<text class="tick" x="{LEFT - 4}" y="{plot_bottom}" text-anchor="end">0</text>',
        *body,
        f'<text class="tick" x="{LEFT}" y="{HEIGHT - 6}">{escape(first)}</text>',
        f'<text class="tick" x="{WIDTH}" y="{HEIGHT - 6}" text-anchor="end">{escape(last)}</text>',
        "</svg>",
    ])


def bar_chart(title: str, points: Sequence[Point], top_text: str) -> str:
    """One bar per point, left to right; `top_text` labels the tallest bar's height on the axis."""
    if not points:
        return _frame(title, top_text, ['<text class="empty" x="50%" y="50%">no data</text>'], "", "")
    scale, plot_h = _scale(points), HEIGHT - BOTTOM - TOP
    step = (WIDTH - LEFT) / len(points)
    bars = []
    for i, point in enumerate(points):
        height = float(Decimal(point.value) / scale) * plot_h
        x, y = LEFT + i * step + step * 0.1, HEIGHT - BOTTOM - height
        bars.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{step * 0.8:.1f}" height="{height:.1f}">'
                    f"<title>{escape(point.label)}: {escape(point.text)}</title></rect>")
    return _frame(title, top_text, bars, points[0].label, points[-1].label)


def line_chart(title: str, points: Sequence[Point], top_text: str) -> str:
    """A polyline through the points, evenly spaced; a tooltip on every point that is not zero."""
    if not points:
        return _frame(title, top_text, ['<text class="empty" x="50%" y="50%">no data</text>'], "", "")
    scale, plot_h = _scale(points), HEIGHT - BOTTOM - TOP
    step = (WIDTH - LEFT) / max(len(points) - 1, 1)
    coords = [(LEFT + i * step, HEIGHT - BOTTOM - float(Decimal(p.value) / scale) * plot_h)
              for i, p in enumerate(points)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    marks = [f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="1.5"><title>{escape(p.label)}: {escape(p.text)}'
             "</title></circle>" for (x, y), p in zip(coords, points, strict=True) if p.value]
    return _frame(title, top_text, [f'<polyline class="line" points="{path}"/>', *marks],
                  points[0].label, points[-1].label)
