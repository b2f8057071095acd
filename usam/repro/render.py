"""An audit report as Markdown, a self-contained HTML page (inline CSS, coloured badges) or JSON."""

from __future__ import annotations

import html
import json

from usam.repro.audit import Report

COLOURS = {"PASS": "#1a7f37", "WARN": "#9a6700", "FAIL": "#cf222e"}


def render(report: Report, fmt: str) -> str:
    """``report`` as ``md``, ``html`` or ``json`` text."""
    return {"md": to_markdown, "html": to_html, "json": to_json}[fmt](report)


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=1) + "\n"


def to_markdown(report: Report) -> str:
    lines = [
        f"# Audit of run {report.run_name or report.run_id}: {report.status}",
        "",
        (f"Run `{report.run_id}` ({report.run_status}) in experiment `{report.experiment}` of `{report.tracking_uri}`, "
         f"checked against `{report.root}` on {report.created}. {report.summary()}."),
        "",
        "| check | status | evidence |",
        "|---|---|---|",
        *(f"| {c.name} | **{c.status}** | {_md_cell(c.evidence)} |" for c in report.checks),
    ]
    for check in report.checks:
        if check.details:
            lines += ["", f"## {check.name}", "", *(f"- {_md_cell(d)}" for d in check.details)]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 2rem auto;
       max-width: 1100px; padding: 0 1.5rem; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; }
.meta { color: #59636e; margin-top: 0; }
.meta code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
table { border-collapse: collapse; width: 100%; margin: 1.5rem 0; }
th, td { text-align: left; padding: .6rem .75rem; border-bottom: 1px solid #d1d9e0; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.name { font-weight: 600; white-space: nowrap; }
.badge { display: inline-block; min-width: 3.2rem; text-align: center; padding: 2px 8px; border-radius: 999px;
         color: #fff; font-size: .8rem; font-weight: 700; letter-spacing: .04em; }
details { margin-top: .4rem; color: #59636e; }
details ul { margin: .3rem 0 0; padding-left: 1.2rem; font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; }
summary { cursor: pointer; font-size: .85rem; }
"""


def to_html(report: Report) -> str:
    rows = "\n".join(
        f"<tr><td class=\"name\">{html.escape(c.name)}</td><td>{_badge(c.status)}</td>"
        f"<td>{html.escape(c.evidence)}{_details(c.details)}</td></tr>"
        for c in report.checks
    )
    title = html.escape(f"Audit of run {report.run_name or report.run_id}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{CSS}</style></head>
<body>
<h1>{title} {_badge(report.status)}</h1>
<p class="meta">Run <code>{html.escape(report.run_id)}</code> ({html.escape(report.run_status)}) in experiment
<code>{html.escape(report.experiment)}</code> of <code>{html.escape(report.tracking_uri)}</code>, checked against
<code>{html.escape(report.root)}</code> on {html.escape(report.created)}. {html.escape(report.summary())}.</p>
<table>
<thead><tr><th>check</th><th>status</th><th>evidence</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body></html>
"""


def _badge(status: str) -> str:
    return f"<span class=\"badge\" style=\"background:{COLOURS[status]}\">{status}</span>"


def _details(details: tuple[str, ...]) -> str:
    if not details:
        return ""
    items = "".join(f"<li>{html.escape(d)}</li>" for d in details)
    return f"<details><summary>{len(details)} detail line(s)</summary><ul>{items}</ul></details>"
