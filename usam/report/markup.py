"""The HTML the reports share: a Markdown table's rows as an HTML table (the paper report, a study's report).

Depends on nothing else in the project, so that any report (``usam.report``, ``usam.tune.results``) can use it.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence


def html_table(rows: Sequence[Sequence[str]], cell: Callable[[str], str] = html.escape) -> str:
    """``rows`` of cell texts, the first the header, as one ``<table>``; ``cell`` turns a cell's text into HTML
    (by default it escapes it)."""
    head, *rest = rows
    return ("<table><tr>" + "".join(f"<th>{cell(c)}</th>" for c in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rest)
            + "</table>")
