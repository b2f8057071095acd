"""The comparison table of USAM against the baselines, from the `evaluate` stages' records (DVC stage `table`).

One row per model and dataset: every metric as the mean over the seeds the pipeline trained (``seeds``)
with its 95% t-interval, plus the real-vs-real floor per dataset; columns: fidelity (domain FID, IS, KID,
precision, recall, FVD), class accuracy, diversity, temporal coherence (motion-compensated flicker,
warping error, feature consistency, and the share of later frames in the first frame's class), cost
(latency, parameters, FLOPs per sample, optimizer steps, training FLOPs and time, peak memory), the
transfer case (samples against the other dataset), the sampling settings chosen on val, code
availability and the reproducibility notes read from the training runs (commit and code state, seed,
config hash, weights sha256). For USAM against each baseline on the same dataset: the difference of the
means, its 95% CI and Welch's p, per headline metric.

Writes reports/comparison.{csv,md,html,json} (the HTML links every row to its MLflow runs), the bar-chart
data reports/comparison_bars.csv, the trade-off curves reports/tradeoff/{fid_domain,class_acc}/<model>_<dataset>.csv and the
training curves reports/curves/<model>_<dataset>_seed<k>.csv for `dvc plots`, and logs the table to an
MLflow run named `comparison`.
"""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pandas as pd

from usam.artifacts.layout import Layout
from usam.errors import UsamError
from usam.eval.stats import t_interval, welch
from usam.track import client_for, tracked_run
from usam.track.provenance import describe_code_state

CODE = {"usam": "usam/models/usam.py", "raster_ar": "usam/models/raster_ar.py", "maskgit": "usam/models/baselines.py",
        "gan": "usam/models/baselines.py", "diffusion": "usam/models/baselines.py"}
FAMILY = {"usam": "USAM (next-scale + next-clip AR)", "raster_ar": "autoregressive (raster next-token)",
          "maskgit": "transformer (masked, parallel decoding)", "gan": "GAN (3D conv, hinge)",
          "diffusion": "diffusion (latent DDPM/DDIM)"}
COLUMNS = [  # (metric key, column title, decimals)
    ("fid_domain", "FID-domain ↓", 2), ("is_domain", "IS-domain ↑", 2), ("kid_domain", "KID-domain ↓", 4),
    ("precision_domain", "precision ↑", 3), ("recall_domain", "recall ↑", 3), ("fvd_domain", "FVD-domain ↓", 2),
    ("class_acc", "class acc ↑", 3), ("diversity", "diversity ↑", 3),
    ("flicker_mc", "flicker (motion-comp.) ↑", 4), ("warping_error", "warping error ↓", 4),
    ("feature_consistency", "feature consistency ↑", 3), ("frame0_class_agreement", "frame-0 class agreement ↑", 3),
    ("latency_s_batch1", "latency b1 (s) ↓", 4), ("latency_per_video", "latency/video bN (s) ↓", 5),
    ("parameters", "params", 0), ("flops_per_sample", "GFLOP/sample", 3), ("train_seconds", "train (s)", 0),
    ("peak_memory_mb", "peak mem (MiB)", 0), ("transfer_fid", "transfer FID ↓", 2),
]


HEADLINE = [("fid_domain", False), ("fvd_domain", False), ("recall_domain", True), ("class_acc", True),
            ("warping_error", False)]  # (metric, higher is better): USAM against each baseline
TRADEOFF_METRICS = ("fid_domain", "class_acc")
EXTRA = [("steps", "steps", 0), ("train_flops", "train TFLOP", 2)]


def load_records(layout: Layout, seeds: list[int]) -> list[dict]:
    """The evaluation records (``metrics/eval/<model>/<dataset>/seed<k>.json``) of the pipeline's ``seeds`` (a file
    another seed list left behind is not this table's), with the table's composite keys."""
    records = [_derived(json.loads(path.read_text())) for path in sorted(layout.eval_metrics().glob("*/*/seed*.json"))
               if path.stem[4:].isdigit() and int(path.stem[4:]) in seeds]
    if not records:
        raise UsamError("no evaluation records", where=str(layout.eval_metrics()), fix="run `dvc repro evaluate`")
    return records


def _derived(rec: dict) -> dict:
    """The table's composite columns from one evaluation record."""
    rec["diversity"] = next((v for k, v in rec.items() if k.startswith("diversity_")), float("nan"))
    rec["diversity_label"] = next((k[len("diversity_"):] for k in rec if k.startswith("diversity_")), "")
    rec["latency_per_video"] = next((v for k, v in rec.items() if k.startswith("latency_s_per_video_batch")), float("nan"))
    transfer = [v for k, v in rec.items() if k.startswith("transfer/") and k.endswith("/fid_domain")]
    rec["transfer_fid"] = transfer[0] if transfer else float("nan")
    if "flops_per_sample" in rec:
        rec["flops_per_sample"] = rec["flops_per_sample"] / 1e9
    if "train_flops" in rec:
        rec["train_flops"] = rec["train_flops"] / 1e12
    return rec


def reproducibility(client, records: list[dict]) -> tuple[str, list[dict]]:
    """What the training runs recorded (commit and code state, config hash, seeds, weights), and a link entry
    per run: (note, [{seed, run_id, experiment_id}])."""
    runs, states, commits, configs = [], set(), set(), set()
    for rec in records:
        run_id = rec.get("mlflow_run_id")
        entry = {"seed": rec.get("seed"), "run_id": run_id, "experiment_id": None}
        if run_id and client is not None:
            try:
                run = client.get_run(run_id)
            except Exception:  # a store that no longer holds the run
                states.add(f"run {run_id[:8]} not in this tracking store")
            else:
                tags = run.data.tags
                entry["experiment_id"] = run.info.experiment_id
                states.add(describe_code_state(tags))
                commits.add(tags.get("git.commit", "unknown")[:10])
                configs.add(tags.get("usam.config_hash", "?")[:10])
        runs.append(entry)
    if client is None or not any(r["run_id"] for r in runs):
        return "no training run recorded", runs
    seeds = ", ".join(str(r["seed"]) for r in runs)
    note = (f"commit {'/'.join(sorted(commits))} ({'; '.join(sorted(states))}), seeds {seeds}, "
            f"config {'/'.join(sorted(configs))}, runs {' '.join(str(r['run_id'])[:8] for r in runs)}")
    return note, runs


def selections(layout: Layout) -> dict[tuple[str, str], dict]:
    """(model, dataset) -> the `select` stage's record (the sampling settings chosen on val)."""
    out = {}
    for path in sorted(layout.selection().glob("*/*.json")):
        rec = json.loads(path.read_text())
        out[(rec["model"], rec["dataset"])] = rec
    return out


def setting_text(chosen: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in chosen.items()) if chosen else "no sampling knob"


def build_table(records: list[dict], client=None, chosen: dict | None = None) -> pd.DataFrame:
    """One row per (model, dataset): per metric the mean, the 95% t-interval bounds and the seeds' values."""
    frame = pd.DataFrame(records)
    chosen = chosen or {}
    rows = []
    for (model, dataset), group in frame.groupby(["model", "dataset"], sort=False):
        group = group.sort_values("seed")
        row = {"model": model, "family": FAMILY.get(model, model), "dataset": dataset, "seeds": len(group)}
        for key, _, _ in [*COLUMNS, *EXTRA]:
            values = [float(v) for v in pd.to_numeric(group.get(key, pd.Series(dtype=float)), errors="coerce")
                      if np.isfinite(v)]
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = t_interval(values) if values else (float("nan"),) * 3
            row[f"{key}_values"] = values
        row["diversity_metric"] = group["diversity_label"].iloc[0]
        sel = chosen.get((model, dataset), {})
        row["setting"] = setting_text(sel.get("chosen", {})) if sel else "not chosen on val"
        row["code"] = CODE.get(model, "")
        row["reproducibility"], row["runs"] = reproducibility(client, group.to_dict("records"))
        rows.append(row)
    for dataset, group in frame.groupby("dataset", sort=False):  # the real-vs-real floor
        first = group.iloc[0]
        row = {"model": "real (test vs train)", "family": "floor", "dataset": dataset, "seeds": 1, "code": "",
               "reproducibility": "the dataset itself", "diversity_metric": "", "setting": "", "runs": []}
        for key, _, _ in [*COLUMNS, *EXTRA]:
            value = float("nan")
            if key in ("fid_domain", "is_domain", "kid_domain", "fvd_domain"):
                value = float(first.get(f"floor/{key}", float("nan")))
            if key in ("flicker_mc", "warping_error", "feature_consistency", "frame0_class_agreement"):
                value = float(first.get(f"real/{key}", float("nan")))
            row[key], row[f"{key}_lo"], row[f"{key}_hi"], row[f"{key}_values"] = value, float("nan"), float("nan"), []
        rows.append(row)
    order = {m: i for i, m in enumerate(["usam", "raster_ar", "maskgit", "gan", "diffusion", "real (test vs train)"])}
    table = pd.DataFrame(rows)
    return table.sort_values(["dataset", "model"], key=lambda s: s.map(order) if s.name == "model" else s).reset_index(drop=True)


def differences(table: pd.DataFrame) -> list[dict]:
    """USAM against each baseline on the same dataset, per headline metric: the difference of the means
    (USAM - baseline), its 95% CI, Welch's p, and whether USAM is significantly better or worse."""
    out = []
    for dataset, group in table[table["family"] != "floor"].groupby("dataset", sort=False):
        usam = group[group["model"] == "usam"]
        if usam.empty:
            continue
        usam = usam.iloc[0]
        for _, other in group[group["model"] != "usam"].iterrows():
            for key, higher in HEADLINE:
                a, b = usam[f"{key}_values"], other[f"{key}_values"]
                if not a or not b:
                    continue
                c = welch(a, b, higher_is_better=higher)
                verdict = ("too few seeds" if math.isnan(c.p_value) else "no significant difference" if c.better is None
                           else "USAM better" if c.better else "USAM worse")
                out.append({"dataset": dataset, "baseline": other["model"], "metric": key, "usam": c.mean_variant,
                            "baseline_mean": c.mean_reference, "difference": c.delta, "ci_low": c.ci_low,
                            "ci_high": c.ci_high, "p_value": c.p_value, "n_usam": c.n_variant,
                            "n_baseline": c.n_reference, "verdict": verdict})
    return out


ALL_COLUMNS = [*COLUMNS[:-3], *EXTRA, *COLUMNS[-3:]]  # steps and training FLOPs beside training time


def _cell(r, key: str, decimals: int) -> str:
    """``mean ± half-width`` of the 95% t-interval over seeds (the mean alone for one seed)."""
    value, lo, hi = r[key], r[f"{key}_lo"], r[f"{key}_hi"]
    if value is None or not np.isfinite(value):
        return "–"
    text = f"{value:,.{decimals}f}"
    return f"{text} ± {(hi - lo) / 2:.{decimals}f}" if np.isfinite(lo) and np.isfinite(hi) and hi > lo else text


def _p(p: float) -> str:
    return "–" if not np.isfinite(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


NOTES = ("*-domain metrics use the in-project domain evaluators' features (weights sha256 in the extractor name): "
         "comparable across rows of this table, not with published Inception/I3D numbers. Every cell is the mean over "
         "the seeds the pipeline trained, ± the half-width of its 95% Student-t interval. Sampling settings were "
         "chosen per model on the val split (lowest FID-domain among settings within the class-accuracy floor; "
         "`metrics/select/`) and the test split was scored once, there. Every generator trains with the same "
         "recipe: batch size and optimizer steps are equal (steps column); learning rates may differ per family. "
         "Diversity is the mean pairwise {diversity} distance within a class. Flicker (motion-comp.): 1 - the mean "
         "local brightness change left between frames after optical-flow motion compensation (1 = none). Transfer "
         "FID: the samples against the other dataset's test split.")


def to_markdown(table: pd.DataFrame, diffs: list[dict]) -> str:
    head = ["model", "dataset", "seeds", "sampling (chosen on val)", *[t for _, t, _ in ALL_COLUMNS], "code",
            "reproducibility"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r["model"], r["dataset"], str(r["seeds"]), r["setting"]]
        cells += [_cell(r, k, d) for k, _, d in ALL_COLUMNS]
        cells += [f"`{r['code']}`" if r["code"] else "", r["reproducibility"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "USAM against each baseline (difference of the means USAM - baseline, 95% CI, Welch's t-test):", "",
              "| dataset | baseline | metric | USAM | baseline | difference [95% CI] | p | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for d in diffs:
        lines.append(f"| {d['dataset']} | {d['baseline']} | {d['metric']} | {d['usam']:.4g} | {d['baseline_mean']:.4g} | "
                     f"{d['difference']:+.4g} [{d['ci_low']:+.4g}, {d['ci_high']:+.4g}] | {_p(d['p_value'])} | "
                     f"{d['verdict']} |")
    diversity = ", ".join(sorted(set(table["diversity_metric"]) - {""}))
    return "\n".join(lines) + "\n\n" + NOTES.format(diversity=diversity) + "\n"


def run_link(ui: str, run: dict) -> str:
    if not run.get("run_id"):
        return ""
    exp = run.get("experiment_id")
    href = f"{ui}/#/experiments/{exp}/runs/{run['run_id']}" if exp else f"{ui}/#/runs/{run['run_id']}"
    return f'<a href="{html.escape(href)}" title="MLflow run {html.escape(run["run_id"])}">seed {run["seed"]}</a>'


def to_html(table: pd.DataFrame, diffs: list[dict], notes: str, ui: str = "http://127.0.0.1:5000") -> str:
    head = ["model", "dataset", "seeds", "sampling (chosen on val)", *[t for _, t, _ in ALL_COLUMNS], "runs", "code",
            "reproducibility"]
    body = []
    for _, r in table.iterrows():
        cells = [html.escape(str(c)) for c in [r["model"], r["dataset"], r["seeds"], r["setting"]]]
        cells += [html.escape(_cell(r, k, d)) for k, _, d in ALL_COLUMNS]
        cells += [" ".join(run_link(ui, run) for run in r["runs"]), html.escape(r["code"]),
                  html.escape(r["reproducibility"])]
        cls = ' class="floor"' if r["family"] == "floor" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    diff_rows = "".join(
        f"<tr><td>{d['dataset']}</td><td>{d['baseline']}</td><td>{d['metric']}</td><td>{d['usam']:.4g}</td>"
        f"<td>{d['baseline_mean']:.4g}</td><td>{d['difference']:+.4g} [{d['ci_low']:+.4g}, {d['ci_high']:+.4g}]</td>"
        f"<td>{_p(d['p_value'])}</td><td>{html.escape(d['verdict'])}</td></tr>" for d in diffs)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>USAM comparison</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;font-size:13px}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child,td:nth-child(2),td:last-child{{text-align:left}}
th{{background:#f0f3f8}} tr.floor td{{color:#666;font-style:italic}} tr:hover td{{background:#fafafa}}
td:first-child{{position:sticky;left:0;background:#fff}}
</style></head><body><h1>USAM vs baselines</h1><p>Run links open the MLflow UI (<code>usam ui</code>) at {html.escape(ui)}.</p>
<div style="overflow-x:auto"><table><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr></thead>
<tbody>{''.join(body)}</tbody></table></div>
<h2>USAM against each baseline</h2><table><thead><tr><th>dataset</th><th>baseline</th><th>metric</th><th>USAM</th>
<th>baseline</th><th>difference [95% CI]</th><th>Welch p</th><th>verdict</th></tr></thead><tbody>{diff_rows}</tbody></table>
<p>{html.escape(notes.strip())}</p></body></html>
"""


def _json_ready(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _json_ready(value.item())
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def write_tradeoff(layout: Layout) -> None:
    """The `select` stages' trade-off curves, one CSV per model and dataset (a line each in `dvc plots`), under
    ``reports/tradeoff/fid_domain/`` and ``reports/tradeoff/class_acc/`` (one `dvc plots` figure per folder)."""
    for old in (layout.reports() / "tradeoff").glob("*.csv"):  # an older layout's files
        old.unlink()
    for metric in TRADEOFF_METRICS:
        out = layout.reports() / "tradeoff" / metric
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.csv"):
            old.unlink()
        for f in sorted((layout.eval() / "select").glob("*/*/tradeoff.csv")):
            if len(f.read_text().splitlines()) > 1:
                (out / f"{f.parent.parent.name}_{f.parent.name}.csv").write_text(f.read_text())


def write(layout: Layout, cfg) -> str:
    """Build the table from the records of ``layout`` and write its reports (and the MLflow run); returns the Markdown."""
    root = layout.root
    client = client_for(cfg, root) if cfg.tracking.enabled else None
    table = build_table(load_records(layout, cfg.seeds), client, selections(layout))
    diffs = differences(table)
    out = layout.reports()
    out.mkdir(exist_ok=True)
    flat = table.drop(columns=[c for c in table.columns if c.endswith("_values") or c == "runs"])
    flat.to_csv(out / "comparison.csv", index=False)
    md = to_markdown(table, diffs)
    (out / "comparison.md").write_text(md)
    (out / "comparison.html").write_text(to_html(table, diffs, md.split("\n\n")[-1]))
    rows = [_json_ready({k: v for k, v in r.items()}) for r in table.to_dict("records")]
    (out / "comparison.json").write_text(json.dumps({"rows": rows, "differences": _json_ready(diffs)}, indent=1) + "\n")
    bars = table[table["family"] != "floor"][["model", "dataset", "fid_domain", "fvd_domain", "class_acc"]].copy()
    bars["model_dataset"] = bars["model"] + "/" + bars["dataset"]
    bars.to_csv(out / "comparison_bars.csv", index=False)
    write_tradeoff(layout)
    curves = out / "curves"
    curves.mkdir(exist_ok=True)
    for old in curves.glob("*.csv"):
        old.unlink()
    for f in sorted(layout.eval().glob("*/*/seed*/training_curve.csv")):
        model, dataset, seed = f.parent.parent.parent.name, f.parent.parent.name, f.parent.name
        (curves / f"{model}_{dataset}_{seed}.csv").write_text(f.read_text())
    if client is not None:
        with tracked_run(cfg, stage="table", run_name="comparison", root=root) as run:
            for name in ("comparison.csv", "comparison.md", "comparison.html", "comparison.json"):
                run.log_artifact(str(out / name))
    return md
