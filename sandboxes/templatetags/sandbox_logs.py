"""`{% log_tail sandbox as tail %}`: the last lines of a sandbox's log for the log panel."""

from django import template
from django.utils.safestring import mark_safe

from sandboxes.loglines import log_line_html
from sandboxes.logs import log_lines_tail

register = template.Library()

TAIL_LINES = 500


@register.simple_tag
def log_tail(sandbox, count: int = TAIL_LINES) -> dict:
    lines = log_lines_tail(sandbox_id=sandbox.pk, count=count)
    first = lines[0].seq if lines else sandbox.last_log_seq + 1
    return {
        # log_line_html escapes the text (ANSI colours become markup of our own).
        "lines_html": mark_safe("".join(log_line_html(line) for line in lines)),  # noqa: S308
        "last_seq": lines[-1].seq if lines else 0,
        "earlier": max(first - 1, 0),
    }
