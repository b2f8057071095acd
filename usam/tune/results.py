"""What a study leaves behind: the trial table, the best configuration, the ablation statistics, plots.

Everything goes to ``outputs/studies/<study>/`` and to the study's parent MLflow run:
``trials.csv`` / ``trials.parquet`` (one row per trial: its point or grid cell, seed, metrics,
status, duration, MLflow run id, error), ``best.yaml``, ``report.md`` / ``report.html``
(self-contained), and for Optuna/CMA-ES sweeps ``optimization_history.png`` and
``param_importance.png``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import pandas as pd
import yaml

from usam.eval.stats import mean_std, verdict, welch
from usam.eval.study import higher_is_better
from usam.report.markup import html_table
from usam.tune.spec import STUDY_TAG, TRIAL_TAG


def trial_table(study, spec, grid, client) -> pd.DataFrame:
    """One row per trial, in Tune's order; MLflow runs left open by stopped or failed trials are closed."""
    experiment = client.get_run(study.parent_run_id).info.experiment_id
    runs = {r.data.tags.get(TRIAL_TAG): r for r in client.search_runs(
        [experiment], f"tags.`{STUDY_TAG}` = '{study.name}'", max_results=10000) if r.data.tags.get(TRIAL_TAG)}
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        config = result.config or {}
        trial_id = metrics.get("trial_id")
        run = runs.get(trial_id)
        row = {"trial_id": trial_id}
        if study.kind == "ablation":
            cell = study.cells[int(config["cell"])]
            row.update({"variant": cell["variant"], "dataset": cell["dataset"], "seed": cell["seed"]})
        else:
            row.update({k: v for k, v in config.items() if k != "seed"})
            row["seed"] = int(run.data.params.get("seed", -1)) if run is not None and "seed" in run.data.params else \
                config.get("seed")
        epochs = metrics.get("epoch")
        if result.error is not None:
            status = "failed"
        elif "mlflow_run_id" not in metrics:  # the trial's closing report never came: the scheduler stopped it
            status = "stopped early"
        else:
            status = "completed"
        row.update({
            "status": status,
            "epochs": epochs,
            spec.metric: metrics.get(spec.metric),
            f"best_{spec.metric}": _best(result, spec.metric, spec.mode),
            **{k: metrics[k] for k in sorted(metrics) if k.startswith(("val_", "sample_", "eval_")) and k != spec.metric},
            "duration_s": metrics.get("time_total_s"),
            "train_s": metrics.get("train_seconds"),  # the training itself (data, model, loop); the rest is overhead
            "mlflow_run_id": run.info.run_id if run is not None else metrics.get("mlflow_run_id"),
            "error": _trial_error(result.error) if result.error is not None else "",
        })
        if run is not None and status != "completed" and "usam.trial.outcome" not in run.data.tags:
            client.set_tag(run.info.run_id, "usam.trial.outcome", status)
            if run.info.status == "RUNNING":  # Tune lost the trial (or stopped its Ray Train worker group)
                client.set_terminated(run.info.run_id, status="KILLED" if status == "stopped early" else "FAILED")
        rows.append(row)
    return pd.DataFrame(rows)


def _best(result, metric: str, mode: str) -> float | None:
    frame = result.metrics_dataframe
    if frame is None or metric not in frame:
        return None
    values = frame[metric].dropna()
    if values.empty:
        return None
    return float(values.min() if mode == "min" else values.max())


def _trial_error(error) -> str:
    """The trial's own error message out of Ray's wrapping (its traceback, then ``Type: message``)."""
    import re

    text = str(error).strip()
    found = re.findall(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt)): (.+)$", text, flags=re.MULTILINE)
    if found:
        kind, message = found[-1]
        return f"{kind}: {message.strip()}"[:300]
    return (text.splitlines() or [type(error).__name__])[-1][:300]


def best_row(table: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    done = table[table["status"] != "failed"].dropna(subset=[f"best_{metric}"])
    if done.empty:
        return None
    return done.loc[done[f"best_{metric}"].idxmin() if mode == "min" else done[f"best_{metric}"].idxmax()]


def ablation_summary(table: pd.DataFrame, metric: str, mode: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per variant x dataset: mean +- std over seeds, delta vs the reference with its 95% CI, Welch's p-value,
    the seed count; and per variant its verdict across datasets."""
    done = table[table["status"] == "completed"].dropna(subset=[metric])
    rows, verdicts = [], {}
    for variant in dict.fromkeys(table["variant"]):
        per_dataset = {}
        for dataset in dict.fromkeys(table["dataset"]):
            values = done[(done.variant == variant) & (done.dataset == dataset)][metric].astype(float).tolist()
            reference = done[(done.variant == "reference") & (done.dataset == dataset)][metric].astype(float).tolist()
            if not values:
                rows.append({"variant": variant, "dataset": dataset, "seeds": 0})
                continue
            mean, std = mean_std(values)
            row = {"variant": variant, "dataset": dataset, "seeds": len(values), "mean": mean, "std": std}
            if variant != "reference" and reference:
                c = welch(values, reference, higher_is_better=(mode == "max"))
                per_dataset[dataset] = c
                row.update({"delta": c.delta, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value,
                            "effect": {True: "better", False: "worse", None: "n.s."}[c.better]})
            rows.append(row)
        if variant != "reference":
            verdicts[variant] = verdict(per_dataset)
    summary = pd.DataFrame(rows)
    summary["verdict"] = summary["variant"].map(verdicts).fillna("")
    return summary, verdicts


def ablation_summaries(table: pd.DataFrame, spec) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """``ablation_summary`` for the primary metric (its ``mode``) and every secondary one (its own direction,
    ``usam.eval.study.higher_is_better``), stacked with a ``metric`` column; verdicts per metric and variant. A
    metric no trial reported gives rows of 0 seeds (a missing cell), not an error."""
    frames, verdicts = [], {}
    for metric in dict.fromkeys([spec.metric, *spec.secondary]):
        mode = spec.mode if metric == spec.metric else ("max" if higher_is_better(metric) else "min")
        present = table if metric in table else table.assign(**{metric: float("nan")})
        summary, verdicts[metric] = ablation_summary(present, metric, mode)
        frames.append(summary.assign(metric=metric, better="higher" if mode == "max" else "lower"))
    stacked = pd.concat(frames, ignore_index=True)
    first = ["metric", "better", "variant", "dataset"]
    return stacked[first + [c for c in stacked.columns if c not in first]], verdicts


# ---- plots ----------------------------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def optimization_history(table: pd.DataFrame, metric: str, mode: str) -> bytes:
    """Each trial's best metric in launch order, and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = table[f"best_{metric}"].astype(float)
    best = values.cummin() if mode == "min" else values.cummax()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(range(len(values)), values, label="trial", color="#4c72b0")
    ax.plot(range(len(values)), best, label="best so far", color="#dd8452")
    ax.set_xlabel("trial (launch order)")
    ax.set_ylabel(metric)
    ax.set_title("Optimization history")
    ax.legend()
    return _png(fig)


def parameter_importance(table: pd.DataFrame, spec) -> tuple[dict[str, float], bytes | None]:
    """fANOVA importances of the searched keys, from the completed trials (an Optuna study rebuilt from the table)."""
    import optuna

    keys = [k for k in spec.space if k in table]
    done = table[table["status"] != "failed"].dropna(subset=[f"best_{spec.metric}"])
    if len(keys) < 2 or len(done) < 3:
        return {}, None
    study = optuna.create_study(direction="minimize" if spec.mode == "min" else "maximize")
    for _, row in done.iterrows():
        params, dists = {}, {}
        for key in keys:
            dim = spec.space[key]
            if dim.type in ("choice", "grid"):
                dists[key] = optuna.distributions.CategoricalDistribution(list(dim.values))
                params[key] = str(row[key])
            elif dim.type == "int":
                dists[key] = optuna.distributions.IntDistribution(int(dim.low), int(dim.high))
                params[key] = int(row[key])
            else:
                dists[key] = optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.type == "loguniform")
                params[key] = float(row[key])
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(row[f"best_{spec.metric}"])))
    importance = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=spec.searcher_seed))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importance)))
    ax.barh(list(importance)[::-1], list(importance.values())[::-1], color="#55a868")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("Parameter importance")
    return dict(importance), _png(fig)


# ---- writing ---------------------------------------------------------------------------------------------------


def write_study(study, spec, grid, parent, client, out: Path) -> pd.DataFrame:
    """Table, best config, statistics, plots and report, in ``out`` (the layout's outputs/studies/<name>/) and on
    the parent run."""
    out.mkdir(parents=True, exist_ok=True)
    table = trial_table(study, spec, grid, client)
    table.to_csv(out / "trials.csv", index=False)
    table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(out / "trials.parquet")
    sections = [f"# {study.kind.capitalize()} {study.name}", "",
                f"Spec `{study.spec_path}`, task `{study.task}`, metric `{spec.metric}` ({spec.mode}). "
                f"{len(table)} trials: " + ", ".join(f"{n} {s}" for s, n in table["status"].value_counts().items()) + ".",
                (f"Repeatable: {parent_tag(client, study.parent_run_id, 'usam.study.repeatable')} "
                 f"({parent_tag(client, study.parent_run_id, 'usam.study.not_repeatable_because')})."), ""]
    images: dict[str, bytes] = {}
    best = best_row(table, spec.metric, spec.mode)
    if best is not None:
        value = float(best[f"best_{spec.metric}"])
        chosen = {k: _plain(best[k]) for k in (spec.space if study.kind == "sweep" else ["variant", "dataset"])}
        (out / "best.yaml").write_text(yaml.safe_dump({"trial_id": best["trial_id"], "metric": spec.metric,
                                                       "value": value, "seed": _plain(best["seed"]),
                                                       "config": chosen, "mlflow_run_id": best["mlflow_run_id"]},
                                                      sort_keys=False))
        parent.log_metrics({f"best/{spec.metric}": value})
        parent.set_tags({"usam.study.best_trial": best["trial_id"]})
        sections += [f"**Best**: trial `{best['trial_id']}`, {spec.metric} = {value:.4g}, with "
                     + ", ".join(f"`{k}={v}`" for k, v in chosen.items()) + ".", ""]
    if study.kind == "ablation":
        summary, verdicts = ablation_summary(table, spec.metric, spec.mode)
        summary.to_csv(out / "summary.csv", index=False)
        sections += ["## Variants against the reference", "",
                     (f"Mean ± std of `{spec.metric}` over seeds; delta = variant − reference with its 95% CI; "
                      "Welch's t-test (two-sided); verdict across datasets: robust (same significant direction "
                      "everywhere), fragile (significant somewhere, not everywhere), no effect."), "",
                     _markdown(summary), ""]
        for variant, text in verdicts.items():
            parent.set_tags({f"usam.ablation.verdict.{variant}": text})
        if spec.secondary:
            stacked, per_metric = ablation_summaries(table, spec)
            stacked.to_csv(out / "summary_metrics.csv", index=False)
            sections += ["## Every metric", "",
                         ("The same statistics for the primary metric and each secondary one, each in its own "
                          "direction (delta = variant − reference; `effect` says better or worse for that metric; "
                          "0 seeds: no trial reported it)."), ""]
            for metric, part in stacked.groupby("metric", sort=False):
                sections += [f"### `{metric}` ({part['better'].iloc[0]} is better)", "",
                             _markdown(part.drop(columns=["metric", "better"])), ""]
            for metric, per_variant in per_metric.items():
                if metric != spec.metric:
                    parent.set_tags({f"usam.ablation.verdict.{metric}.{v}": text for v, text in per_variant.items()})
        images.update(_variant_panels(table, client))
    elif spec.searcher in ("optuna", "cmaes", "random") and len(table) > 1:
        images["optimization_history.png"] = optimization_history(table, spec.metric, spec.mode)
        importance, picture = parameter_importance(table, spec)
        if picture is not None:
            images["param_importance.png"] = picture
            sections += ["## Parameter importance (fANOVA)", "",
                         *(f"- `{k}`: {v:.3f}" for k, v in importance.items()), ""]
    sections += ["## Trials", "", _markdown(table), ""]
    for name, data in images.items():
        (out / name).write_bytes(data)
    markdown = "\n".join(sections + [f"![{n}]({n})" for n in images])
    (out / "report.md").write_text(markdown + "\n")
    (out / "report.html").write_text(_html(study, sections, images))
    for path in sorted(out.iterdir()):
        if path.is_file():
            parent.log_artifact(path, "study")
    print(f"\n{study.kind} {study.name}: {len(table)} trials; table and report in {out}")
    print(table.drop(columns=["error"]).to_string(index=False, max_colwidth=24))
    return table


def parent_tag(client, run_id: str, key: str) -> str:
    return client.get_run(run_id).data.tags.get(key, "?")


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return value


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _variant_panels(table: pd.DataFrame, client) -> dict[str, bytes]:
    """The sample grid of each variant's first completed run per dataset (from its MLflow artifacts)."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    panels = {}
    done = table[table["status"] == "completed"]
    for (variant, dataset), rows in done.groupby(["variant", "dataset"], sort=False):
        run_id = rows.sort_values("seed")["mlflow_run_id"].iloc[0]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = download_artifacts(run_id=run_id, artifact_path="samples/samples.png", dst_path=tmp,
                                          tracking_uri=client.tracking_uri)
            except Exception:  # a run without a grid (unconditional text/context variants log none)
                continue
            panels[f"samples_{variant}_{dataset}.png"] = Path(path).read_bytes()
    return panels


def _html(study, sections: list[str], images: dict[str, bytes]) -> str:
    """The Markdown sections as simple self-contained HTML (tables rendered, pictures inline)."""
    body, table_rows = [], []

    def flush():
        if table_rows:
            body.append(html_table(table_rows))
            table_rows.clear()

    for line in (line for section in sections for line in section.splitlines()):  # a section may be a whole table
        if line.startswith("|"):
            if not line.startswith("|---"):
                table_rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        flush()
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    for name, data in images.items():
        body.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
                    f"{base64.b64encode(data).decode()}'><figcaption>{html.escape(name)}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#f3f3f3}tr:nth-child(even){background:#fafafa}figure{display:inline-block;margin:1em}"
             "img{max-width:520px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study.name)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
