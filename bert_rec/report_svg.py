"""Inline SVG charts for the HTML report: grouped bars and line charts (no TensorFlow).

Plain strings, no plotting library: the charts are a few kilobytes, sharp at any zoom, and
every label goes through ``html.escape``.
"""

import html
import math

PALETTE = ("#3b6fb6", "#e08a2c", "#4a9a5b", "#b64a4a", "#7a5bb6")


def _e(text):
    return html.escape(str(text), quote=True)


def _axis(width, height, left, bottom, top, y_max, ticks=4, fmt="{:.2f}"):
    """The y axis with grid lines from 0 to ``y_max``: SVG elements as a string."""
    parts = []
    for i in range(ticks + 1):
        value = y_max * i / ticks
        y = height - bottom - (height - bottom - top) * i / ticks
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 8}" y2="{y:.1f}" '
                     f'class="grid"/><text x="{left - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{_e(fmt.format(value))}</text>')
    return "".join(parts)


def _nice_max(value):
    """A round upper bound for an axis (0.31 -> 0.4, 3.2 -> 4)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    step = 10 ** math.floor(math.log10(value))
    for multiple in (1, 2, 2.5, 4, 5, 10):
        if value <= multiple * step:
            return multiple * step
    return 10 * step


def _legend(series, x, y):
    return "".join(f'<rect x="{x + 120 * i}" y="{y - 9}" width="10" height="10" '
                   f'fill="{PALETTE[i % len(PALETTE)]}"/><text x="{x + 120 * i + 14}" '
                   f'y="{y}">{_e(name)}</text>' for i, name in enumerate(series))


def grouped_bars(groups, series, values, title, width=720, height=260):
    """Bars of ``values[g][s]`` for each group ``g`` (x axis) and series ``s`` (colour)."""
    left, bottom, top = 48, 40, 34
    y_max = _nice_max(max((v for row in values for v in row), default=0))
    plot_h = height - bottom - top
    slot = (width - left - 8) / max(len(groups), 1)
    bar = slot * 0.8 / max(len(series), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{left}" y="16" class="title">{_e(title)}</text>',
             _legend(series, left + 260, 16), _axis(width, height, left, bottom, top, y_max)]
    for g, (group, row) in enumerate(zip(groups, values)):
        x0 = left + g * slot + slot * 0.1
        for s, value in enumerate(row):
            h = plot_h * max(value, 0) / y_max
            x, y = x0 + s * bar, height - bottom - h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.92:.1f}" '
                         f'height="{h:.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                         f'<title>{_e(group)} {_e(series[s])}: {value:.4f}</title></rect>')
        parts.append(f'<text x="{x0 + slot * 0.4:.1f}" y="{height - bottom + 16}" '
                     f'text-anchor="middle">{_e(group)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(xs, series, title, x_label="epoch", width=350, height=220):
    """Lines of ``series`` ({name: [y per x]}) over ``xs``, y axis from 0."""
    left, bottom, top = 48, 38, 34
    finite = [v for ys in series.values() for v in ys if math.isfinite(v)]
    y_max = _nice_max(max(finite, default=0))
    x_lo, x_hi = min(xs, default=0), max(xs, default=1)
    span = (x_hi - x_lo) or 1

    def point(x, y):
        px = left + (width - left - 16) * (x - x_lo) / span
        py = height - bottom - (height - bottom - top) * min(max(y, 0), y_max) / y_max
        return f"{px:.1f},{py:.1f}"

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{left}" y="14" class="title">{_e(title)}</text>',
             _axis(width, height, left, bottom, top, y_max, fmt="{:.3g}"),
             f'<text x="{width / 2:.0f}" y="{height - 6}" text-anchor="middle">'
             f'{_e(x_label)}</text>']
    for x in sorted({x_lo, xs[len(xs) // 2] if xs else x_lo, x_hi}):
        px = point(x, 0).split(",")[0]
        parts.append(f'<text x="{px}" y="{height - bottom + 14}" text-anchor="middle">'
                     f'{_e(f"{x:g}")}</text>')
    for i, (name, ys) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(point(x, y) for x, y in zip(xs, ys) if math.isfinite(y))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"/>')
        parts.append(f'<text x="{left + 8 + 110 * i}" y="30" fill="{colour}">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
