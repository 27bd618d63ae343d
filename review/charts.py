"""Charts for the campaign dashboard, drawn as inline SVG by pygal (no script, no CDN)."""

from __future__ import annotations

import re

import pygal
from django.utils.safestring import SafeString, mark_safe
from pygal.style import Style

SCRIPT_RE = re.compile(r"<script\b.*?</script>", re.DOTALL | re.IGNORECASE)


def burndown_svg(
    series: list[tuple[float, int]], *, width: int = 720, height: int = 260
) -> SafeString:
    """Repositories remaining over time. Only numbers we computed reach the SVG."""
    style = Style(
        background="transparent",
        plot_background="transparent",
        colors=("#2a5bd7",),
        font_family="system-ui, sans-serif",
    )
    chart = pygal.XY(
        width=width,
        height=height,
        style=style,
        show_legend=False,
        show_dots=len(series) <= 30,
        fill=True,
        js=(),  # pygal links its tooltip script from the internet by default
        disable_xml_declaration=True,
        explicit_size=False,
        x_title="minutes since launch",
        y_title="repositories remaining",
        include_x_axis=True,
        range=(0, max((y for _, y in series), default=1) or 1),
        xrange=(0, max((x / 60 for x, _ in series), default=1) or 1),
        truncate_label=-1,
        print_values=False,
        stroke_style={"width": 2},
    )
    chart.add("remaining", [(round(x / 60, 2), y) for x, y in series])
    # pygal writes its tooltip config as an inline <script> even without its scripts: the
    # pages' CSP (script-src 'self') refuses it, and the chart needs none.
    svg = SCRIPT_RE.sub("", chart.render(is_unicode=True))
    # pygal escapes its labels; the values are our own numbers.
    return mark_safe(svg)  # noqa: S308
