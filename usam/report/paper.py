"""The paper-style report (`usam report`, DVC stage `report`): reports/paper.md and a self-contained
reports/paper.html.

Sections: the graded claims (the `claims` stage), the comparison table, the guidance trade-off curves
on val, sample grids and animations with samples-vs-real strips, training curves, dataset cards, the
hyperparameter searches (the shipped spaces, and every sweep or ablation found in outputs/studies/ with
its trials, seeds and best result), and a reproducibility checklist: the audit verdict of every model's
training run next to the checklist items it answers.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from usam.artifacts.layout import Layout
from usam.report.markup import html_table
from usam.repro.audit import audit

COMPARISON = [("fid_domain", "FID-domain ↓", 1), ("fvd_domain", "FVD-domain ↓", 1), ("class_acc", "class acc ↑", 2),
              ("warping_error", "warping error ↓", 4), ("latency_s_batch1", "latency b1 (s) ↓", 3),
              ("parameters", "params", 0), ("train_seconds", "train (s)", 0)]


@dataclass
class Section:
    title: str
    markdown: list[str] = field(default_factory=list)
    images: list[tuple[str, bytes, str]] = field(default_factory=list)  # (caption, bytes, mime)


# ---- sections -----------------------------------------------------------------------------------------------------


def comparison(layout: Layout) -> Section:
    section = Section("USAM against the baselines")
    path = layout.reports() / "comparison.csv"
    if not path.is_file():
        section.markdown.append("No comparison table yet: run `dvc repro table`.")
        return section
    table = pd.read_csv(path)
    rows = [{"model": r["model"], "dataset": r["dataset"], "seeds": r["seeds"], "sampling (chosen on val)": r.get("setting"),
             **{title: _number(r.get(key), (r.get(f"{key}_hi") - r.get(f"{key}_lo")) / 2, digits)
                for key, title, digits in COMPARISON}}
            for _, r in table.iterrows()]
    section.markdown += [_markdown_table(pd.DataFrame(rows)), "",
                         "Each cell: the mean over seeds ± the half-width of its 95% t-interval. Domain metrics use the "
                         "project's own evaluators (see `reports/comparison.md` for every column, USAM's differences "
                         "from each baseline with Welch's p, transfer scores and per-run reproducibility notes)."]
    return section


def tradeoff(layout: Layout) -> Section:
    """FID-domain and class accuracy against the guidance scale on val, per model: the `select` stages' grids."""
    section = Section("Guidance trade-off (val)")
    files = _csv_files(section, layout, "tradeoff/fid_domain", "No trade-off curves yet: run `dvc repro table`.")
    if not files:
        return section
    plt = _pyplot()
    fig, (fid, acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    for path in files:
        frame = pd.read_csv(path)
        fid.plot(frame["guidance"], frame["fid_domain"], marker="o", label=path.stem)
        acc.plot(frame["guidance"], frame["class_acc"], marker="o", label=path.stem)
    fid.set(xlabel="guidance scale", ylabel="FID-domain (val) ↓")
    acc.set(xlabel="guidance scale", ylabel="class accuracy (val) ↑")
    acc.legend(fontsize=8)
    fig.tight_layout()
    section.markdown.append("Each model's sampling settings were chosen on the val split from a small grid "
                            "(`eval.select` in params.yaml; every point in `eval/select/<model>/<dataset>/grid.csv`); "
                            "the curves vary the guidance scale with every other knob at its chosen value. The test "
                            "split was scored once, at the chosen setting.")
    section.images.append(("FID-domain and class accuracy against classifier-free guidance, on val", _png(fig),
                           "image/png"))
    return section


def graded_claims(layout: Layout) -> Section:
    """The paper's claims (claims.yaml) as graded by the `claims` stage, read from reports/claims.json."""
    section = Section("The paper's claims")
    path = layout.reports() / "claims.json"
    if not path.is_file():
        section.markdown.append("No graded claims yet: run `dvc repro claims` (or `usam claims --out reports`).")
        return section
    data = json.loads(path.read_text())
    n = data.get("summary", {})

    def cell(text) -> str:  # one table cell: no column breaks (this report's tables split on every bar)
        return str(text).replace("|", "/").replace("\n", " ")

    section.markdown += [f"**{n.get('reproduced', 0)} reproduced, {n.get('not_reproduced', 0)} not reproduced, "
                         f"{n.get('inconclusive', 0)} inconclusive** of {n.get('claims', 0)} claims in "
                         f"`{data.get('spec', 'claims.yaml')}`, graded from the per-seed records in "
                         f"`{data.get('records', 'metrics/eval')}` (95% CIs; see `reports/claims.md` for the run ids).",
                         "", "| claim | grade | evidence |", "|---|---|---|"]
    section.markdown += [f"| **{cell(c['id'])}**: {cell(c['statement'])} | **{c['grade']}** ({cell(c['reason'])}) | "
                         f"{cell(c['evidence_text'])} |" for c in data.get("claims", [])]
    return section


def samples(layout: Layout) -> Section:
    section = Section("Samples")
    for grid in sorted(layout.models().glob("**/samples/samples.png")):  # one seed's grids: the others look alike
        if any(part.startswith("seed") and part != "seed0" for part in grid.parts):
            continue
        name = "/".join(grid.relative_to(layout.models()).parts[:-2])
        section.images.append((f"{name}: one row per class", grid.read_bytes(), "image/png"))
        gif = grid.with_suffix(".gif")
        if gif.is_file():
            section.images.append((f"{name}: animated", gif.read_bytes(), "image/gif"))
    for strip in sorted(layout.eval().glob("*/*/seed0/samples_vs_real.png")):
        label = "/".join(strip.relative_to(layout.eval()).parts[:-1])
        section.images.append((f"{label}: samples vs real", strip.read_bytes(), "image/png"))
    if not section.images:
        section.markdown.append("No sample grids yet: run `dvc repro`.")
    return section


def curves(layout: Layout) -> Section:
    section = Section("Training curves")
    files = _csv_files(section, layout, "curves", "No training curves yet: run `dvc repro table`.")
    if not files:
        return section
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for path in files:
        frame = pd.read_csv(path)
        if {"step", "train_loss"} <= set(frame.columns):
            ax.plot(frame["step"], frame["train_loss"], label=path.stem)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    section.images.append(("training loss per model (from the MLflow runs)", _png(fig), "image/png"))
    return section


def datasets(layout: Layout, names: list[str]) -> Section:
    section = Section("Datasets")
    for name in names:
        card = layout.raw(name) / "CARD.md"
        section.markdown += [_demote(card.read_text().strip()) if card.is_file() else f"`{name}`: no card (run `dvc repro`).", ""]
    return section


def searches(layout: Layout) -> Section:
    """The shipped search spaces, and every study run in this project."""
    section = Section("Hyperparameter searches and ablations")
    for spec in sorted((layout.root / "sweeps").glob("*.yaml")):
        body = yaml.safe_load(spec.read_text()) or {}
        space = ", ".join(f"`{k}` {_range(v)}" for k, v in (body.get("space") or {}).items())
        section.markdown.append(f"- `sweeps/{spec.name}` ({body.get('task')}): {space}; searcher "
                                f"{body.get('searcher', 'random')}, scheduler {(body.get('scheduler') or {}).get('name', 'none')}, "
                                f"{body.get('trials')} trials, seeds {body.get('seeds', [0])}, metric {body.get('metric', 'val_loss')}")
    for spec in sorted((layout.root / "ablations").glob("*.yaml")):
        body = yaml.safe_load(spec.read_text()) or {}
        section.markdown.append(f"- `ablations/{spec.name}` ({body.get('task')}): {len(body.get('variants') or {})} variants "
                                f"x datasets {body.get('datasets')} x seeds {body.get('seeds')}, metric {body.get('metric')}")
    studies = sorted(p for p in layout.outputs("studies").glob("*/trials.csv"))
    section.markdown.append("")
    if not studies:
        section.markdown.append("No sweep or ablation has been run in this project yet (`usam sweep sweeps/lr_wd.yaml`, "
                                "`usam ablate ablations/components.yaml`); their tables join this report when they have.")
    for trials in studies:
        folder = trials.parent
        table = pd.read_csv(trials)
        best = yaml.safe_load((folder / "best.yaml").read_text()) if (folder / "best.yaml").is_file() else None
        counts = ", ".join(f"{n} {s}" for s, n in table["status"].value_counts().items())
        line = f"**{folder.name}**: {len(table)} trials ({counts})"
        if best:
            line += f"; best {best['metric']} = {best['value']:.4g} with " + ", ".join(f"`{k}={v}`" for k, v in best["config"].items())
        section.markdown += [line, ""]
        summary = folder / "summary.csv"
        if summary.is_file():
            section.markdown += [_markdown_table(pd.read_csv(summary)), ""]
    return section


CHECKLIST = [
    ("Code release", "code", "the commit every run was trained from, and whether its tree was clean"),
    ("Data clarity", "data", "every split's content hash, the DVC lock, the dataset cards above"),
    ("Software versions", "environment", "`environment.lock` (hash-pinned), recorded per run"),
    ("Execution steps", "params", "`dvc repro` on `params.yaml`; each run's config hash"),
    ("Random seeds", "seeds", "`seed`, `data.seed` and the derived per-rank/DataLoader seeds"),
    ("Determinism", "determinism", "deterministic algorithms on, TF32 off, recorded flags"),
    ("Checkpoints", "checkpoint", "sha256 of every exported weights file"),
    ("Metrics re-evaluated", "metrics", "the final weights evaluated again give the recorded val metrics "
                                        "(`usam audit RUN`; left out of this matrix)"),
    ("Bit-exact re-run", "rerun", "a few training steps, twice from the seeded start, give identical tensors "
                                  "(`usam audit RUN`; left out of this matrix)"),
    ("Hardware, compute, parameters", "completeness", "hardware tags, training seconds, parameter counts"),
]


REPLAYED = ("metrics", "rerun")  # audit checks that need `usam audit RUN` (a replay): left out of the matrix


def reproducibility(layout: Layout, cfg, audit_runs: bool = True) -> Section:
    """The audit of every model's training run (from the stage metrics), as a run x check matrix."""
    section = Section("Reproducibility checklist")
    runs = _model_runs(layout)
    verdicts: dict[str, dict[str, str]] = {}
    if audit_runs:

        for label, run_id in runs.items():
            try:
                report = audit(run_id, cfg, layout.root, replay=False)  # replays cost minutes per generator run
            except Exception as exc:  # a run the store no longer has: say so in its row
                verdicts[label] = {"overall": f"not audited ({type(exc).__name__})"}
                continue
            # the checks a replay answers are not run here: the row and its verdict are the checks that were
            shown = dataclasses.replace(report, checks=tuple(c for c in report.checks if c.name not in REPLAYED))
            verdicts[label] = {c.name: c.status for c in shown.checks} | {"overall": shown.status}
    section.markdown += ["| item | audit check | what answers it |", "|---|---|---|"]
    section.markdown += [f"| {item} | `{check}` | {what} |" for item, check, what in CHECKLIST]
    section.markdown.append("")
    if verdicts:
        checks = sorted({k for v in verdicts.values() for k in v} - {"overall"})
        frame = pd.DataFrame([{"run": label, "overall": v.get("overall", ""), **{c: v.get(c, "") for c in checks}}
                              for label, v in verdicts.items()])
        section.markdown += [_markdown_table(frame), "",
                             "`usam audit <run>` prints each verdict with its evidence. Runs made by `dvc repro` see a "
                             "tree that `dvc repro` itself changes (dvc.lock, metrics), which the code check reports "
                             "as a warning, not a failure."]
    elif not runs:
        section.markdown.append("No trained models yet: run `dvc repro`.")
    return section


def _model_runs(layout: Layout) -> dict[str, str]:
    """label -> MLflow run id of every training stage's run, read from the stage metrics files."""
    runs = {}
    for path in sorted(layout.metrics().glob("**/*.json")):
        if path.relative_to(layout.metrics()).parts[0] in ("eval", "select", "claims.json"):  # not training runs
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        for key, value in _run_ids(record):
            label = str(path.relative_to(layout.metrics()).with_suffix("")) + (f"/{key}" if key else "")
            runs[label] = value
    return runs


def _run_ids(record: dict) -> list[tuple[str, str]]:
    if isinstance(record.get("mlflow_run_id"), str):
        return [("", record["mlflow_run_id"])]
    return [(k, v["mlflow_run_id"]) for k, v in record.items() if isinstance(v, dict) and isinstance(v.get("mlflow_run_id"), str)]


# ---- writing ------------------------------------------------------------------------------------------------------


def build(layout: Layout, cfg, *, audit_runs: bool = True) -> list[Section]:
    return [graded_claims(layout), comparison(layout), tradeoff(layout), samples(layout), curves(layout),
            datasets(layout, list(cfg.data.build)),
            searches(layout), reproducibility(layout, cfg, audit_runs)]


def write(layout: Layout, cfg, *, audit_runs: bool = True) -> tuple[Path, Path]:
    """reports/paper.md (pictures as files beside it in reports/paper_files/) and reports/paper.html."""
    sections = build(layout, cfg, audit_runs=audit_runs)
    out = layout.reports()
    files = out / "paper_files"
    files.mkdir(parents=True, exist_ok=True)
    md = ["# USAM Lab: the paper report", "",
          "Generated by `usam report` (DVC stage `report`) from this project's outputs and tracking store.", ""]
    for section in sections:
        md += [f"## {section.title}", "", *section.markdown, ""]
        for i, (caption, data, mime) in enumerate(section.images):
            name = f"{_slug(section.title)}_{i:02d}.{mime.split('/')[1]}"
            (files / name).write_bytes(data)
            md += [f"![{caption}](paper_files/{name})", ""]
    (out / "paper.md").write_text("\n".join(md))
    (out / "paper.html").write_text(_html(sections))
    return out / "paper.md", out / "paper.html"


# ---- helpers ------------------------------------------------------------------------------------------------------


def _csv_files(section: Section, layout: Layout, folder: str, missing: str) -> list[Path]:
    """The CSVs of ``reports/<folder>``; none: ``missing`` goes in the section instead."""
    files = sorted((layout.reports() / folder).glob("*.csv"))
    if not files:
        section.markdown.append(missing)
    return files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _number(value, std, digits: int) -> str:
    if value is None or pd.isna(value):
        return "–"
    text = f"{value:,.{digits}f}"
    return text + (f" ± {std:.{max(digits, 1)}f}" if std is not None and not pd.isna(std) and std > 0 else "")


def _range(dim: dict) -> str:
    if dim.get("values") is not None:
        return f"{dim.get('type')} {dim['values']}"
    return f"{dim.get('type')} [{dim.get('low')}, {dim.get('high')}]"


def _demote(markdown: str) -> str:
    """A card's headings one level down, under this report's section."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", markdown, flags=re.MULTILINE)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _html(sections: list[Section]) -> str:
    body = ["<h1>USAM Lab: the paper report</h1>",
            "<p class='lead'>Generated by <code>usam report</code> (DVC stage <code>report</code>) from this project's "
            "outputs and tracking store.</p>"]
    toc = "".join(f"<li><a href='#{_slug(s.title)}'>{html.escape(s.title)}</a></li>" for s in sections)
    body.append(f"<nav><ol>{toc}</ol></nav>")
    for section in sections:
        body.append(f"<section id='{_slug(section.title)}'><h2>{html.escape(section.title)}</h2>")
        body.append(_markdown_html(section.markdown))
        body.append("<div class='figures'>" + "".join(
            f"<figure><img alt='{html.escape(c)}' src='data:{mime};base64,{base64.b64encode(d).decode()}'>"
            f"<figcaption>{html.escape(c)}</figcaption></figure>" for c, d, mime in section.images) + "</div></section>")
    style = ("body{font-family:system-ui,-apple-system,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;"
             "line-height:1.45}h1{border-bottom:3px solid #4c72b0}h2{margin-top:2em;border-bottom:1px solid #ddd}"
             "table{border-collapse:collapse;font-size:13px;margin:.8em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
             "th{background:#eef2f8}tr:nth-child(even) td{background:#fafafa}figure{display:inline-block;margin:.6em;"
             "vertical-align:top}img{max-width:540px;image-rendering:pixelated;border:1px solid #eee}"
             "figcaption{font-size:12px;color:#555}.PASS{color:#1a7f37;font-weight:600}.WARN{color:#9a6700;"
             "font-weight:600}.FAIL{color:#cf222e;font-weight:600}nav ol{columns:2}.lead{color:#555}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>USAM Lab: the paper report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    return re.sub(r"\b(PASS|WARN|FAIL)\b", r"<span class='\1'>\1</span>", out)


def _markdown_html(lines: list[str]) -> str:
    """The few Markdown forms the sections use: tables, bullets, headings, paragraphs."""
    out, rows, items = [], [], []

    def flush():
        if rows:
            out.append(html_table(rows, _inline))
            rows.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for block in lines:
        for line in block.splitlines() or [""]:
            if line.startswith("|"):
                if not re.match(r"^\|(\s*:?-+:?\s*\|)+$", line):
                    rows.append([c.strip() for c in line.strip().strip("|").split("|")])
                continue
            if line.startswith("- "):
                items.append(line[2:])
                continue
            flush()
            heading = re.match(r"^(#{1,6}) (.+)", line)
            if heading:
                level = min(len(heading.group(1)) + 1, 6)
                out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            elif line.strip():
                out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "".join(out)
