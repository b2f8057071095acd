"""The comparison table of USAM against the baselines, from the `evaluate` stages' metrics (DVC stage `table`).

One row per model and dataset (mean +- std over seeds where several evaluation records exist),
plus the real-vs-real floor per dataset; columns: fidelity (domain FID, IS, KID, precision,
recall, FVD), class accuracy, diversity, temporal coherence (motion-compensated flicker, warping
error, feature consistency, and the share of later frames in the first frame's class), cost (latency, parameters, FLOPs per sample, training time, peak
memory), the transfer case (samples against the other dataset), code availability and
reproducibility notes read from the training run (commit, clean tree, seed, config hash, weights
sha256).

Writes reports/comparison.{csv,md,html}, the bar-chart data reports/comparison_bars.csv and the
training curves reports/curves/<model>_<dataset>.csv for `dvc plots`, and logs the table to an
MLflow run named `comparison`.
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

from usam.artifacts.layout import Layout
from usam.errors import UsamError
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


def load_records(layout: Layout) -> list[dict]:
    records = []
    for path in sorted(layout.eval_metrics().glob("*/*.json")):
        records.append(_derived(json.loads(path.read_text())))
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
    return rec


def run_records(client, experiment: str, known: list[dict]) -> list[dict]:
    """Evaluated training runs of other seeds from the tracking store (the latest run per model, dataset and
    seed), so repeated runs (e.g. `dvc exp run -S seed=1`) give mean +- std without overwriting each other."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    have = {(r["model"], r["dataset"], int(r.get("seed", 0))) for r in known}
    latest: dict[tuple, object] = {}
    for run in client.search_runs([exp.experiment_id], "metrics.`eval/fid_domain` >= 0", order_by=["attributes.start_time DESC"]):
        key = (run.data.tags.get("usam.task"), run.data.params.get("data.name"), int(run.data.params.get("seed", 0)))
        if None in key or key in have or key in latest:
            continue
        latest[key] = run
    out = []
    for (model, dataset, seed), run in latest.items():
        rec = {"model": model, "dataset": dataset, "seed": seed, "mlflow_run_id": run.info.run_id,
               "weights_sha256": run.data.tags.get("checkpoint.sha256", "")}
        rec.update({k[len("eval/"):]: v for k, v in run.data.metrics.items() if k.startswith("eval/")})
        out.append(_derived(rec))
    return out


def reproducibility(client, record: dict) -> str:
    """What the training run recorded: commit (and whether the tree was clean), seed, config hash, weights."""
    run_id = record.get("mlflow_run_id")
    if not run_id or client is None:
        return "no training run recorded"
    try:
        tags = client.get_run(run_id).data.tags
    except Exception:  # a store that no longer holds the run
        return f"training run {run_id[:8]} not in this tracking store"
    commit = tags.get("git.commit", "unknown")
    clean = describe_code_state(tags)
    return (f"commit {commit[:10]} ({clean}), seed {tags.get('seed.seed', '?')}, config {tags.get('usam.config_hash', '?')[:10]}, "
            f"weights {str(record.get('weights_sha256', ''))[:10]}, run {run_id[:8]}")


def build_table(records: list[dict], client=None) -> pd.DataFrame:
    frame = pd.DataFrame(records)
    rows = []
    for (model, dataset), group in frame.groupby(["model", "dataset"], sort=False):
        row = {"model": model, "family": FAMILY.get(model, model), "dataset": dataset, "seeds": len(group)}
        for key, _, _ in COLUMNS:
            values = pd.to_numeric(group.get(key, pd.Series(dtype=float)), errors="coerce").dropna()
            row[key] = float(values.mean()) if len(values) else float("nan")
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        row["diversity_metric"] = group["diversity_label"].iloc[0]
        row["code"] = CODE.get(model, "")
        row["reproducibility"] = reproducibility(client, group.iloc[-1].to_dict())
        rows.append(row)
    for dataset, group in frame.groupby("dataset", sort=False):  # the real-vs-real floor
        first = group.iloc[0]
        row = {"model": "real (test vs train)", "family": "floor", "dataset": dataset, "seeds": 1, "code": "",
               "reproducibility": "the dataset itself", "diversity_metric": ""}
        for key, _, _ in COLUMNS:
            row[key] = float(first.get(f"floor/{key}", float("nan"))) if key in (
                "fid_domain", "is_domain", "kid_domain", "fvd_domain") else float("nan")
            if key in ("flicker_mc", "warping_error", "feature_consistency", "frame0_class_agreement"):
                row[key] = float(first.get(f"real/{key}", float("nan")))
            row[f"{key}_std"] = float("nan")
        rows.append(row)
    order = {m: i for i, m in enumerate(["usam", "raster_ar", "maskgit", "gan", "diffusion", "real (test vs train)"])}
    table = pd.DataFrame(rows)
    return table.sort_values(["dataset", "model"], key=lambda s: s.map(order) if s.name == "model" else s).reset_index(drop=True)


def _cell(value: float, std: float, decimals: int) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    text = f"{value:,.{decimals}f}"
    return f"{text} ± {std:.{decimals}f}" if np.isfinite(std) else text


def to_markdown(table: pd.DataFrame) -> str:
    head = ["model", "dataset", "seeds", *[title for _, title, _ in COLUMNS], "code", "reproducibility"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r["model"], r["dataset"], str(r["seeds"])]
        cells += [_cell(r[k], r[f"{k}_std"], d) for k, _, d in COLUMNS]
        cells += [f"`{r['code']}`" if r["code"] else "", r["reproducibility"]]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ("\n*-domain metrics use the in-project domain evaluators' features (weights sha256 in the extractor name): "
             "comparable across rows of this table, not with published Inception/I3D numbers. Diversity is the mean "
             f"pairwise {', '.join(sorted(set(table['diversity_metric']) - {''}))} distance within a class. "
             "Flicker (motion-comp.): 1 - the mean local brightness change left between frames after optical-flow "
             "motion compensation (1 = none). Transfer FID: the samples against the other dataset's test split. "
             "± is the std over seeds.\n")
    return "\n".join(lines) + "\n" + notes


def to_html(table: pd.DataFrame, markdown_notes: str) -> str:
    head = ["model", "dataset", "seeds", *[title for _, title, _ in COLUMNS], "code", "reproducibility"]
    body = []
    for _, r in table.iterrows():
        cells = [r["model"], r["dataset"], str(r["seeds"])] + [_cell(r[k], r[f"{k}_std"], d) for k, _, d in COLUMNS]
        cells += [r["code"], r["reproducibility"]]
        cls = ' class="floor"' if r["family"] == "floor" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>USAM comparison</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;font-size:13px}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child,td:nth-child(2),td:last-child{{text-align:left}}
th{{background:#f0f3f8}} tr.floor td{{color:#666;font-style:italic}} tr:hover td{{background:#fafafa}}
</style></head><body><h1>USAM vs baselines</h1><table><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr></thead>
<tbody>{''.join(body)}</tbody></table><p>{html.escape(markdown_notes.strip())}</p></body></html>
"""


def write(layout: Layout, cfg) -> str:
    """Build the table from the records of ``layout`` and write its reports (and the MLflow run); returns the Markdown."""
    root = layout.root
    client = client_for(cfg, root) if cfg.tracking.enabled else None
    records = load_records(layout)
    if client is not None:
        records += run_records(client, cfg.tracking.experiment, records)
    table = build_table(records, client)
    out = layout.reports()
    out.mkdir(exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    md = to_markdown(table)
    (out / "comparison.md").write_text(md)
    (out / "comparison.html").write_text(to_html(table, md.split("\n\n")[-1]))
    bars = table[table["family"] != "floor"][["model", "dataset", "fid_domain", "fvd_domain", "class_acc"]].copy()
    bars["model_dataset"] = bars["model"] + "/" + bars["dataset"]
    bars.to_csv(out / "comparison_bars.csv", index=False)
    curves = out / "curves"
    curves.mkdir(exist_ok=True)
    for f in sorted(layout.eval().glob("*/*/training_curve.csv")):
        (curves / f"{f.parent.parent.name}_{f.parent.name}.csv").write_text(f.read_text())
    if client is not None:

        with tracked_run(cfg, stage="table", run_name="comparison", root=root) as run:
            for name in ("comparison.csv", "comparison.md", "comparison.html"):
                run.log_artifact(str(out / name))
    return md
