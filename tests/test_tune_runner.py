"""Sweeps and ablation grids on the real Ray Tune, real training trials and a real MLflow store.

A 2-trial Optuna sweep and a 2x2 ablation grid complete with correctly nested runs and a correct
table; a variant that changes the tokenizer trains its own and its generator trains on it; a failing trial is recorded as failed and does not sink the sweep; ASHA stops weak trials
and the next ones still get their CPUs; a sweep whose driver is killed resumes to completion with
every trial once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY, digits_and_tokenizer, venv_env

from usam.artifacts.layout import Layout, Weights
from usam.config import compose
from usam.errors import ConfigError, UsamError
from usam.eval import stats
from usam.files import sha256_file
from usam.models.evaluators import FrameClassifier
from usam.track import tracked_run
from usam.train.checkpoint import atomic_torch_save
from usam.train.tasks import make_task
from usam.tune.results import ablation_summary
from usam.tune.runner import Study, _trial_inputs, ablate, sweep, trial_overrides

pytestmark = pytest.mark.slow

EVAL = [o for o in TINY if o.startswith(("data.", "evaluator."))]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Tiny moving digits, an untrained tokenizer and frame evaluator saved the way the stages save them."""
    root = tmp_path_factory.mktemp("studies")
    sha = digits_and_tokenizer(root, TINY)
    (root / "metrics" / "tokenizer").mkdir(parents=True)
    (root / "metrics" / "tokenizer" / "moving_digits.json").write_text(json.dumps({"weights_sha256": sha}))
    frame = root / "models" / "evaluators" / "moving_digits" / "frame.pt"
    frame.parent.mkdir(parents=True)
    atomic_torch_save({"model": FrameClassifier(num_classes=10, width=4, stages=2).state_dict()}, frame)
    (root / "metrics" / "evaluators").mkdir(parents=True)
    (root / "metrics" / "evaluators" / "moving_digits.json").write_text(
        json.dumps({"frame": {"weights_sha256": sha256_file(frame)}}))
    return root


def _spec(root: Path, name: str, body: dict) -> Path:
    path = root / "sweeps" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _runs(root: Path, study: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("usam")
    runs = client.search_runs([experiment.experiment_id], f"tags.`usam.study` = '{study}'", max_results=1000)
    parent = [r for r in runs if r.info.run_name == study]
    assert len(parent) == 1, [r.info.run_name for r in runs]
    return client, parent[0], [r for r in runs if r.info.run_id != parent[0].info.run_id]


def _study_name(table: pd.DataFrame, root: Path) -> str:
    folders = sorted((root / "outputs" / "studies").iterdir(), key=lambda p: p.stat().st_mtime)
    return folders[-1].name


def test_a_two_trial_optuna_sweep_nests_its_runs_and_tables_them(project: Path, ray_instance):
    spec = _spec(project, "optuna.yaml", {
        "task": "evaluator_frame", "overrides": [*EVAL, "evaluator.train.max_steps=null"],
        "space": {"evaluator.train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                  "evaluator.train.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1}},
        "searcher": "optuna", "trials": 2, "resources": {"cpus": 1}, "epochs": 2, "searcher_seed": 3, "seeds": [5],
    })
    table = sweep(spec, root=project, progress=False)
    name = _study_name(table, project)
    assert len(table) == 2 and set(table["status"]) == {"completed"}
    assert table["trial_id"].is_unique and (table["epochs"] == 2).all() and (table["seed"] == 5).all()
    client, parent, children = _runs(project, name)
    assert {c.info.run_id for c in children} == set(table["mlflow_run_id"])
    for child in children:  # nested, finished, trained with the trial's point, seed and budget
        row = table[table["mlflow_run_id"] == child.info.run_id].iloc[0]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert float(child.data.params["evaluator.train.lr"]) == pytest.approx(row["evaluator.train.lr"])
        assert child.data.params["seed"] == "5" and child.data.params["evaluator.train.epochs"] == "2"
        assert child.data.metrics["val/loss"] == pytest.approx(row["val_loss"])
        assert 1e-3 <= row["evaluator.train.lr"] <= 1e-2
    best = table.loc[table["best_val_loss"].idxmin()]
    assert parent.data.tags["usam.study.best_trial"] == best["trial_id"]
    assert parent.data.metrics["best/val_loss"] == pytest.approx(best["best_val_loss"])
    assert parent.data.tags["usam.study.repeatable"] == "true"
    out = project / "outputs" / "studies" / name
    assert pd.read_parquet(out / "trials.parquet")["trial_id"].tolist() == table["trial_id"].tolist()
    assert yaml.safe_load((out / "best.yaml").read_text())["trial_id"] == best["trial_id"]
    assert (out / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/trials.csv", "study/report.html", "study/best.yaml"} <= logged
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert all(f"<td>{trial}</td>" in page for trial in table["trial_id"])  # the trial table, one row per trial


def test_asha_stops_weak_trials_and_the_next_ones_still_run(project: Path, ray_instance):
    """One CPU per trial on a 2-CPU Ray, six trials one after another: the trials ASHA stops end as KILLED
    runs (outcome tag) and free their CPU, so every trial runs; the survivors train all epochs in the
    trial's own process."""
    spec = _spec(project, "asha.yaml", {
        "task": "evaluator_frame", "overrides": [*EVAL, "evaluator.train.max_steps=null"],
        "space": {"evaluator.train.lr": {"type": "loguniform", "low": 1e-5, "high": 3e-2}},
        "searcher": "random", "searcher_seed": 3, "trials": 6, "epochs": 3, "resources": {"cpus": 1},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}, "seeds": [0],
    })
    table = sweep(spec, root=project, progress=False)
    _, parent, children = _runs(project, _study_name(table, project))
    stopped, done = table[table["status"] == "stopped early"], table[table["status"] == "completed"]
    assert len(table) == 6 and table["trial_id"].is_unique and len(stopped) >= 1 and len(done) >= 1
    assert (stopped["epochs"] < 3).all() and (done["epochs"] == 3).all()
    assert (done["train_s"] > 0).all() and (done["duration_s"] >= done["train_s"]).all()
    runs = {c.info.run_id: c for c in children}
    assert set(runs) == set(table["mlflow_run_id"]) and parent.info.status == "FINISHED"
    for run_id in stopped["mlflow_run_id"]:
        assert runs[run_id].info.status == "KILLED" and runs[run_id].data.tags["usam.trial.outcome"] == "stopped early"
    for run_id in done["mlflow_run_id"]:
        assert runs[run_id].info.status == "FINISHED"
        assert runs[run_id].data.tags["usam.train.where"] == "the Tune trial's process"
    best = done.loc[done["val_loss"].idxmin()]
    assert best["val_loss"] <= table["best_val_loss"].min() + 1e-9  # the stopped ones were the weaker ones


def test_a_failing_trial_is_recorded_with_its_error_and_the_sweep_goes_on(project: Path, ray_instance):
    spec = _spec(project, "failing.yaml", {
        "task": "evaluator_frame", "overrides": [*EVAL, "debug.fault_injection_kind=nan_loss"],
        "space": {"debug.fault_injection_step": {"type": "grid", "values": [None, 1]}},
        "searcher": "grid", "trials": 2, "resources": {"cpus": 1}, "epochs": 1, "seeds": [0],
    })
    table = sweep(spec, root=project, progress=False).set_index("debug.fault_injection_step")
    assert table.loc["null", "status"] == "completed" and table.loc["1", "status"] == "failed"
    assert "NaN" in table.loc["1", "error"]
    client, _, children = _runs(project, _study_name(table, project))
    status = {c.data.params["debug.fault_injection_step"]: c.info.status for c in children}
    assert status == {"None": "FINISHED", "1": "FAILED"}


def test_a_two_by_two_ablation_grid_has_its_statistics_and_sample_panels(project: Path, ray_instance):
    spec = project / "ablations" / "tiny.yaml"
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(yaml.safe_dump({
        "task": "usam", "reference": [o for o in TINY if not o.startswith("evaluator.")],
        "variants": {"no_self_correction": {"overrides": ["model.loss.self_correction=0"], "rationale": "test"}},
        "datasets": ["moving_digits"], "seeds": [0, 1], "metric": "val_loss", "mode": "min",
        "secondary": ["eval_fid_domain", "eval_fvd_domain", "eval_class_acc", "eval_warping_error"],
    }))
    table = ablate(spec, root=project, progress=False)
    name = _study_name(table, project)
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    assert sorted(zip(table["variant"], table["seed"])) == [("no_self_correction", 0), ("no_self_correction", 1),
                                                            ("reference", 0), ("reference", 1)]
    assert table["sample_class_acc"].between(0, 1).all()
    client, parent, children = _runs(project, name)
    assert {c.info.run_id for c in children} == set(table["mlflow_run_id"])
    for child in children:
        row = table[table["mlflow_run_id"] == child.info.run_id].iloc[0]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["usam.ablation.variant"] == row["variant"]
        expected = "0.0" if row["variant"] == "no_self_correction" else str(compose([]).model.loss.self_correction)
        assert child.data.params["model.loss.self_correction"] == expected
        assert child.data.params["seed"] == str(row["seed"])
        assert child.data.metrics["val/loss"] == pytest.approx(row["val_loss"])
    summary = pd.read_csv(project / "outputs" / "studies" / name / "summary.csv").set_index("variant")
    ref = table[table.variant == "reference"]["val_loss"].tolist()
    var = table[table.variant == "no_self_correction"]["val_loss"].tolist()
    c = stats.welch(var, ref, higher_is_better=False)
    assert summary.loc["no_self_correction", "mean"] == pytest.approx(sum(var) / 2)
    assert summary.loc["no_self_correction", "delta"] == pytest.approx(c.delta)
    assert summary.loc["no_self_correction", "seeds"] == 2
    assert parent.data.tags["usam.ablation.verdict.no_self_correction"] == stats.verdict({"moving_digits": c})
    # the suite's numbers on a val sample, per trial (no clip evaluator here: no FVD, a missing cell)
    assert (table["eval_fid_domain"] > 0).all() and table["eval_class_acc"].between(0, 1).all()
    assert (table["eval_warping_error"] >= 0).all() and "eval_fvd_domain" not in table
    for child in children:
        row = table[table["mlflow_run_id"] == child.info.run_id].iloc[0]
        assert child.data.metrics["eval/fid_domain"] == pytest.approx(row["eval_fid_domain"])
        assert child.data.tags["usam.study.eval_settings"] == "the configured ones (no choice on val yet)"
    stacked = pd.read_csv(project / "outputs" / "studies" / name / "summary_metrics.csv")
    assert list(dict.fromkeys(stacked["metric"])) == ["val_loss", "eval_fid_domain", "eval_fvd_domain",
                                                      "eval_class_acc", "eval_warping_error"]
    fid = stacked[(stacked.metric == "eval_fid_domain") & (stacked.variant == "no_self_correction")].iloc[0]
    c = stats.welch(table[table.variant == "no_self_correction"]["eval_fid_domain"].tolist(),
                    table[table.variant == "reference"]["eval_fid_domain"].tolist(), higher_is_better=False)
    assert fid["delta"] == pytest.approx(c.delta) and fid["better"] == "lower"
    assert stacked[stacked.metric == "eval_fvd_domain"]["seeds"].eq(0).all()
    assert "### `eval_warping_error` (lower is better)" in (project / "outputs" / "studies" / name / "report.md").read_text()
    html = (project / "outputs" / "studies" / name / "report.html").read_text()
    assert "samples_reference_moving_digits.png" in html and "samples_no_self_correction_moving_digits.png" in html


def test_a_tokenizer_variant_trains_its_own_tokenizer_and_hands_it_to_the_generator(project: Path):
    shared = [o for o in TINY if not o.startswith("evaluator.")]
    cell = {"variant": "no_perceptual", "overrides": ["tokenizer.loss.perceptual.weight=0"], "dataset": "moving_digits",
            "seed": 0}
    cfg = compose([*shared, *trial_overrides("ablation", 0, cell)])
    folder = project / "outputs" / "own-tokenizer-trial"
    with tracked_run(cfg, stage="ablation/own-tokenizer", run_name="own-tokenizer", root=project) as parent:
        s = Study("ablation", "own-tokenizer", "ablations/own.yaml", "usam", str(project), parent.run_id, shared,
                  "val_loss", "min")
        reference = {**cell, "variant": "reference", "overrides": []}
        assert _trial_inputs(s, compose([*shared, *trial_overrides("ablation", 0, reference)]), reference, folder,
                             project) is None  # the project's tokenizer
        inputs = _trial_inputs(s, cfg, cell, folder, project)
        weights = folder / "tokenizer.pt"
        assert inputs.tokenizer == Weights(weights, sha256_file(weights), "outputs/own-tokenizer-trial/tokenizer.pt")
        assert inputs.tokenizer.sha256 != json.loads((project / "metrics" / "tokenizer" / "moving_digits.json")
                                                     .read_text())["weights_sha256"]
        assert inputs.frame_evaluator.path == project / "models" / "evaluators" / "moving_digits" / "frame.pt"
        trained = weights.stat().st_mtime_ns
        assert _trial_inputs(s, cfg, cell, folder, project) == inputs and weights.stat().st_mtime_ns == trained
    task = make_task("usam", cfg, Layout.of(cfg, project), inputs)
    task.check_data()
    assert task.export_meta()["tokenizer"] == {"path": inputs.tokenizer.ref, "sha256": inputs.tokenizer.sha256}


def test_the_ablation_statistics_are_right_on_hand_made_numbers():
    rows = [("reference", "a", s, v) for s, v in enumerate([1.0, 1.2, 1.1])]
    rows += [("x", "a", s, v) for s, v in enumerate([2.0, 2.2, 2.1])]  # clearly worse on a (mode min)
    rows += [("reference", "b", s, v) for s, v in enumerate([1.0, 1.2, 1.1])]
    rows += [("x", "b", s, v) for s, v in enumerate([0.5, 0.7, 0.6])]  # clearly better on b
    table = pd.DataFrame(rows, columns=["variant", "dataset", "seed", "m"]).assign(status="completed")
    summary, verdicts = ablation_summary(table, "m", "min")
    x = summary.set_index(["variant", "dataset"]).loc[("x", "a")]
    assert x["mean"] == pytest.approx(2.1) and x["std"] == pytest.approx(0.1) and x["delta"] == pytest.approx(1.0)
    assert x["seeds"] == 3 and x["effect"] == "worse" and x["ci_low"] < 1.0 < x["ci_high"]
    assert summary.set_index(["variant", "dataset"]).loc[("x", "b"), "effect"] == "better"
    assert verdicts == {"x": "fragile"}


def test_bad_specs_and_a_silent_cluster_fail_before_any_trial(project: Path, ray_instance):
    bad = _spec(project, "bad.yaml", {"task": "evaluator_frame", "space": {"evaluator.train.lr": {
        "type": "loguniform", "low": 1e-2, "high": 1e-3}}, "trials": 2})
    with pytest.raises(ConfigError, match="empty or inverted"):
        sweep(bad, root=project)
    big = _spec(project, "big.yaml", {"task": "evaluator_frame", "searcher": "grid", "trials": 3, "space": {
        "evaluator.train.lr": {"type": "grid", "values": [0.1, 0.01]}}, "seeds": [0, 1]})
    with pytest.raises(ConfigError, match="4 trials"):
        sweep(big, root=project)
    with pytest.raises(UsamError, match="no earlier sweep"):
        sweep(_spec(project, "never.yaml", {"task": "evaluator_frame", "overrides": EVAL, "space": {
            "evaluator.train.lr": {"type": "uniform", "low": 0.001, "high": 0.002}}, "trials": 1}),
            root=project, resume="latest")


def test_a_sweep_whose_driver_is_killed_resumes_with_every_trial_once(project: Path, tmp_path: Path):
    """The driver dies mid-sweep (SIGKILL to its process group: its local Ray goes with it); `--resume latest`
    finishes the remaining trials, continues the interrupted one, and runs none twice."""
    spec = _spec(project, "resume.yaml", {
        "task": "evaluator_frame", "overrides": [*EVAL, "evaluator.train.max_steps=null", "evaluator.train.runtime.checkpoint_every=1"],
        "space": {"evaluator.train.lr": {"type": "grid", "values": [0.001, 0.002, 0.003]}},
        "searcher": "grid", "trials": 3, "resources": {"cpus": 1}, "epochs": 3, "seeds": [0],
    })
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    client.search_experiments()  # the store exists before two processes open it (no concurrent schema migration)
    cmd = [sys.executable, "-m", "usam.cli", "sweep", str(spec), "ray.num_cpus=2"]
    env = venv_env(PYTHONPATH=str(REPO))
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=project, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once one trial has finished and another has started
        time.sleep(1)
        experiment = client.get_experiment_by_name("usam")
        runs = [r for r in client.search_runs([experiment.experiment_id], "tags.`usam.study.kind` = 'sweep'")
                if r.data.tags.get("usam.study", "").startswith("sweep-resume-") and "usam.trial_id" in r.data.tags
                ] if experiment else []
        if sum(r.info.status == "FINISHED" for r in runs) >= 1 and len(runs) >= 2:
            break
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    else:
        pytest.fail("the sweep never got going:\n" + (tmp_path / "first.log").read_text()[-3000:])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    done = subprocess.run([*cmd, "--resume"], cwd=project, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-1500:]
    name = next(line.split()[1].rstrip(":") for line in done.stdout.splitlines() if line.startswith("sweep sweep-"))
    table = pd.read_csv(project / "outputs" / "studies" / name / "trials.csv")
    assert len(table) == 3 and table["trial_id"].is_unique and set(table["status"]) == {"completed"}
    assert sorted(table["evaluator.train.lr"]) == [0.001, 0.002, 0.003]
    _, parent, children = _runs(project, name)
    assert sorted(c.data.tags["usam.trial_id"] for c in children) == sorted(table["trial_id"])  # none twice
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
