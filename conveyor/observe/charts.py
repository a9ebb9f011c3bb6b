"""Small SVG charts for the HTML report, drawn here so the report needs no library or network.

Two shapes cover what the report shows: :func:`lines` (series over time:
throughput, utilisation, queue depths) and :func:`timeline` (bars on rows:
workers per stage, their lives and the time they held CPUs). Both return an
SVG string; colours come from one palette so a stage keeps its colour.
"""

from __future__ import annotations

from html import escape
from typing import Sequence

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 860, 220, 60, 150, 14, 28
CHAR_PX = 6.5  # the width of a character of an axis label, about (11 px sans-serif)


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / n
    return [low + i * step for i in range(n + 1)]


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.2g}"


def _seconds(x: float, span: float) -> str:
    """A time axis label, in the unit that suits the whole span (a week is in days)."""
    if span < 10:
        return f"{x:.1f}s"
    if span < 600:
        return f"{x:.0f}s"
    if span < 3 * 3600:
        return f"{x / 60:.0f}m"
    if span < 3 * 86400:
        return f"{x / 3600:.1f}h"
    return f"{x / 86400:.1f}d"


def lines(series: dict[str, Sequence[tuple[float, float]]], title: str, unit: str = "",
          y_max: float | None = None) -> str:
    """Series of (seconds since start, value) as a line chart with a legend."""
    points = [p for s in series.values() for p in s]
    if not points:
        return f'<p class="empty">{escape(title)}: nothing was recorded.</p>'
    x_max = max(max(x for x, _ in points), 1e-9)
    top = y_max if y_max is not None else max(max(y for _, y in points), 0) * 1.1 or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + x / x_max * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - min(y, top) / top * plot_h

    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-label="{escape(title)}">', f"<title>{escape(title)}</title>"]
    for y in _ticks(0, top, 4):
        out.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(y):.1f}" '
                   f'y2="{sy(y):.1f}"/><text class="axis" x="{LEFT - 6}" y="{sy(y) + 4:.1f}" '
                   f'text-anchor="end">{_fmt(y)}{escape(unit)}</text>')
    for x in _ticks(0, x_max):
        out.append(f'<text class="axis" x="{sx(x):.1f}" y="{HEIGHT - 8}" '
                   f'text-anchor="middle">{_seconds(x, x_max)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        if not pts:
            continue
        path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                        for j, (x, y) in enumerate(pts))
        out.append(f'<path d="{path}" fill="none" stroke="{colour(i)}" stroke-width="2">'
                   f"<title>{escape(name)}</title></path>")
        out.append(f'<rect x="{WIDTH - RIGHT + 12}" y="{TOP + i * 18}" width="10" height="10" '
                   f'fill="{colour(i)}"/><text class="legend" x="{WIDTH - RIGHT + 28}" '
                   f'y="{TOP + i * 18 + 9}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def timeline(rows: list[tuple[str, int, list[tuple[float, float, bool]]]], span: float,
             title: str) -> str:
    """Rows of bars: (label, colour index, [(start, end, strong)]) over ``span`` seconds.

    A strong bar is drawn solid (a worker holding CPUs), a weak one faint
    (a worker alive but idle).
    """
    if not rows:
        return f'<p class="empty">{escape(title)}: no workers ran.</p>'
    # room for the longest label (a fused group's is its stages' names): 11 px text
    left = min(max(LEFT, round(12 + CHAR_PX * max(len(label) for label, _, _ in rows))),
               WIDTH // 3)
    row_h, plot_w = 16, WIDTH - left - RIGHT
    height = TOP + len(rows) * row_h + BOTTOM
    span = max(span, 1e-9)
    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
           f'aria-label="{escape(title)}">', f"<title>{escape(title)}</title>"]
    for i, (label, col, bars) in enumerate(rows):
        y = TOP + i * row_h
        out.append(f'<text class="axis" x="{left - 6}" y="{y + 11}" '
                   f'text-anchor="end">{escape(label)}</text>')
        for start, end, strong in bars:
            x0 = left + start / span * plot_w
            w = max((end - start) / span * plot_w, 0.8)
            out.append(f'<rect x="{x0:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" '
                       f'fill="{colour(col)}" fill-opacity="{1.0 if strong else 0.25}">'
                       f"<title>{escape(label)}: {start:.1f}s – {end:.1f}s</title></rect>")
    for x in _ticks(0, span):
        out.append(f'<text class="axis" x="{left + x / span * plot_w:.1f}" y="{height - 8}" '
                   f'text-anchor="middle">{_seconds(x, span)}</text>')
    out.append("</svg>")
    return "\n".join(out)
