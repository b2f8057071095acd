"""The DVC pipeline end to end, with real DVC in a throwaway git repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, TINY, run, tracked_files

from usam.config import compose
from usam.files import sha256_file
from usam.track import client_for

DATASETS = ("moving_digits", "bouncing_shapes")


def _clone(dest: Path, overrides: list[str]) -> Path:
    """A fresh-clone-like copy of the project with params.yaml composed from ``overrides``."""
    for rel in tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    run(["usam", "config", "write-params", *overrides], cwd=dest)
    run(["git", "init", "-q"], cwd=dest)
    run(["git", "add", "-A"], cwd=dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "clone"], cwd=dest)
    return dest


def _split_counts(root: Path, stage: str, name: str) -> dict[str, int]:
    return {s: int(np.load(root / "data" / stage / name / s / "labels.npy").shape[0]) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One `dvc repro` of the data stages, shared by the tests below."""
    root = _clone(tmp_path_factory.mktemp("pipeline"), TINY)
    proc = run(["dvc", "repro", "preprocess"], cwd=root)
    assert "Running stage 'data@moving_digits'" in proc.stdout
    return root


def test_repro_builds_every_dataset_and_locks_its_hashes(built: Path):
    lock = yaml.safe_load((built / "dvc.lock").read_text())["stages"]
    for name in DATASETS:
        assert _split_counts(built, "raw", name) == {"train": 12, "val": 4, "test": 4}
        assert _split_counts(built, "prepared", name) == {"train": 12, "val": 4, "test": 4}
        videos = np.load(built / "data" / "prepared" / name / "train" / "videos.npy")
        assert videos.shape == (12, 8, 32, 32, 3) and videos.dtype == np.uint8
        out = lock[f"data@{name}"]["outs"][0]
        assert out["path"] == f"data/raw/{name}" and out["md5"].endswith(".dir")
        assert lock[f"data@{name}"]["params"]["params.yaml"]["data.num_videos"]["train"] == 12
        card = json.loads((built / "data" / "raw" / name / "card.json").read_text())
        assert card["name"] == name
    run(["usam", "data", "verify"], cwd=built)


def test_a_second_repro_is_a_no_op(built: Path):
    lock_before = (built / "dvc.lock").read_bytes()
    proc = run(["dvc", "repro", "preprocess"], cwd=built)
    assert "Data and pipelines are up to date." in proc.stdout
    assert "Running stage" not in proc.stdout
    assert (built / "dvc.lock").read_bytes() == lock_before
    assert "up to date" in run(["dvc", "status", "preprocess"], cwd=built).stdout


def test_every_stage_run_is_tracked_with_its_datasets(built: Path):
    cfg = compose(TINY)
    client = client_for(cfg, built)
    experiment = client.get_experiment_by_name("usam")
    runs = client.search_runs([experiment.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted([f"{stage}/{d}" for stage in ("data", "preprocess") for d in DATASETS])
    manifest = json.loads((built / "data" / "raw" / "moving_digits" / "manifest.json").read_text())
    data_run = next(r for r in runs if r.info.run_name == "data/moving_digits")
    assert data_run.info.status == "FINISHED"
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags}["sha256"] for i in data_run.inputs.dataset_inputs}
    assert inputs == {f"moving_digits/{s}": manifest["splits"][s]["content_sha256"] for s in ("train", "val", "test")}
    assert data_run.data.params["data.num_videos.train"] == "12"


def test_push_and_pull_through_the_default_local_remote(built: Path):
    before = (built / "data" / "raw" / "moving_digits" / "train" / "videos.npy").read_bytes()
    run(["dvc", "push", "--with-deps", "preprocess"], cwd=built)
    assert any((built / ".dvc-remote").rglob("*")), "the default remote is the project's .dvc-remote folder"
    shutil.rmtree(built / "data")
    shutil.rmtree(built / ".dvc" / "cache")
    run(["dvc", "pull", "--with-deps", "preprocess"], cwd=built)
    assert (built / "data" / "raw" / "moving_digits" / "train" / "videos.npy").read_bytes() == before
    assert "up to date" in run(["dvc", "status", "preprocess"], cwd=built).stdout


def test_a_stage_with_missing_input_fails_clearly_and_leaves_no_output(tmp_path: Path):
    root = _clone(tmp_path / "proj", TINY)
    proc = run(["python", "-m", "pipelines.preprocess", "moving_digits"], cwd=root, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "data/raw/moving_digits" in proc.stderr and "dvc repro" in proc.stderr
    assert not (root / "data" / "prepared" / "moving_digits").exists()


@pytest.mark.slow
def test_dvc_exp_run_overrides_compose_the_hydra_tree(tmp_path: Path):
    root = _clone(tmp_path / "proj", TINY)
    assert compose().train.lr != pytest.approx(1e-4)  # the override must be a real change
    sets = [arg for o in [*TINY, "data.num_videos.val=5", "train.lr=1e-4"] for arg in ("-S", o)]
    run(["dvc", "exp", "run", "preprocess", *sets], cwd=root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["train"]["lr"] == pytest.approx(1e-4)
    assert params["data"]["num_videos"]["val"] == 5
    assert _split_counts(root, "raw", "moving_digits")["val"] == 5  # the stage really re-ran
    rows = json.loads(run(["dvc", "exp", "show", "--json"], cwd=root).stdout)
    baseline = next(r for r in rows if r["rev"] != "workspace")
    lr = lambda rev: rev["data"]["params"]["params.yaml"]["data"]["train"]["lr"]  # noqa: E731
    assert lr(baseline) == pytest.approx(compose().train.lr)
    (experiment,) = baseline["experiments"]
    assert [lr(rev) for rev in experiment["revs"]] == [pytest.approx(1e-4)]


@pytest.mark.slow
def test_the_evaluators_stage_trains_through_the_harness_and_reports_metrics(built: Path):
    run(["dvc", "repro", "evaluators"], cwd=built)
    for name in DATASETS:
        report = json.loads((built / "metrics" / "evaluators" / f"{name}.json").read_text())
        for kind in ("frame", "clip"):
            weights = built / "models" / "evaluators" / name / f"{kind}.pt"
            assert sha256_file(weights) == report[kind]["weights_sha256"]
            assert 0.0 <= report[kind]["test_acc"] <= 1.0 and report[kind]["chance"] > 0
            record = client_for(compose(TINY), built).get_run(report[kind]["mlflow_run_id"])
            assert record.data.tags["checkpoint.sha256"] == report[kind]["weights_sha256"]
            assert record.data.metrics["test/acc"] == pytest.approx(report[kind]["test_acc"])
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], cwd=built).stdout)
    assert "test_acc" in json.dumps(shown)

    # the tokenizer stage follows the evaluators: its perceptual loss is the frame evaluator's
    proc = run(["dvc", "repro", "tokenizer@moving_digits"], cwd=built)
    assert "Running stage 'evaluators@moving_digits'" not in proc.stdout
    report = json.loads((built / "metrics" / "tokenizer" / "moving_digits.json").read_text())
    weights = built / "models" / "tokenizer" / "moving_digits" / "tokenizer.pt"
    assert sha256_file(weights) == report["weights_sha256"] and report["perceptual"] == "domain_perceptual"
    assert 0 < report["test"]["psnr"] < 100 and 0 < report["test"]["ssim"] <= 1
    assert sorted(p.name for p in (weights.parent / "panels").iterdir()) == [
        "coarse_to_fine.png", "reconstruction.gif", "reconstruction.png"]
    record = client_for(compose(TINY), built).get_run(report["mlflow_run_id"])
    assert record.data.metrics["test/psnr"] == pytest.approx(report["test"]["psnr"])
    lock = yaml.safe_load((built / "dvc.lock").read_text())["stages"]["tokenizer@moving_digits"]
    assert "models/evaluators/moving_digits" in {d["path"] for d in lock["deps"]}

    # USAM trains on that tokenizer's stream once per seed, samples a grid per class, and `usam sample` uses the run
    run(["dvc", "repro", "usam@moving_digits-0"], cwd=built)
    report = json.loads((built / "metrics" / "usam" / "moving_digits" / "seed0.json").read_text())
    assert sha256_file(built / "models" / "usam" / "moving_digits" / "seed0" / "usam.pt") == report["weights_sha256"]
    assert report["chance"] == pytest.approx(0.1) and 0 <= report["sample_class_acc"] <= 1
    assert report["flops_per_sample"] > 0 and 0 < report["val_bit_acc"] <= 1
    assert report["seed"] == 0 and report["steps"] == 2 and report["train_flops"] > 0
    samples = built / "models" / "usam" / "moving_digits" / "seed0" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["samples.gif", "samples.mp4", "samples.png"]
    record = client_for(compose(TINY), built).get_run(report["mlflow_run_id"])
    assert record.data.tags["checkpoint.path"] == "models/usam/moving_digits/seed0/usam.pt"
    assert record.data.tags["usam.train.where"] == "this process (one worker, no Ray)"
    assert record.data.tags["git.code_state"] == "clean"  # dvc repro rewrote dvc.lock and metrics: products only
    quality = {k: [m.value for m in client_for(compose(TINY), built).get_metric_history(report["mlflow_run_id"], k)]
               for k in ("val/fid_domain", "val/class_acc")}  # the quality check during training, beside val/loss
    assert len(quality["val/fid_domain"]) == 1 and quality["val/fid_domain"][0] > 0
    assert 0 <= quality["val/class_acc"][0] <= 1
    proc = run(["usam", "sample", "latest", "--class", "3", "--num", "2", "--seed", "1"], cwd=built)
    written = [Path(line.strip()) for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert sorted(p.name for p in written) == ["samples.gif", "samples.mp4", "samples.png"] and all(p.is_file() for p in written)
    bad = run(["usam", "sample", "latest", "--class", "eleven"], cwd=built, check=False)
    assert bad.returncode == 2 and "unknown class 'eleven'" in bad.stderr and "Traceback" not in bad.stderr

    # every generator trains once per seed; sampling settings are chosen on val; each seed is scored on test there
    proc = run(["dvc", "repro", "table", "claims"], cwd=built)  # the clone holds the committed (3-seed) table
    seeds = compose(TINY).seeds
    assert seeds == [0, 1]
    for model in ("raster_ar", "maskgit", "gan", "diffusion"):
        for seed in seeds:
            assert f"Running stage 'baseline@{model}-moving_digits-{seed}'" in proc.stdout
            report = json.loads((built / "metrics" / "baselines" / model / "moving_digits" / f"seed{seed}.json").read_text())
            weights = built / "models" / "baselines" / model / "moving_digits" / f"seed{seed}" / f"{model}.pt"
            assert sha256_file(weights) == report["weights_sha256"] and 0 <= report["sample_class_acc"] <= 1
            scores = json.loads((built / "metrics" / "eval" / model / "moving_digits" / f"seed{seed}.json").read_text())
            assert scores["model"] == model and scores["seed"] == seed and scores["num_samples"] == 8
            assert scores["weights_sha256"] == report["weights_sha256"]
            assert np.isfinite(scores["fid_domain"]) and scores["fid_domain"] >= 0 and scores["latency_s_batch1"] > 0
            assert scores["parameters"] > 0 and scores["flops_per_sample"] > 0 and scores["train_seconds"] > 0
            assert scores["steps"] == 2 and scores["train_flops"] > 0
            assert report["val_fid_domain"] > 0 and 0 <= report["val_class_acc"] <= 1  # quality during training
        selection = json.loads((built / "metrics" / "select" / model / "moving_digits.json").read_text())
        grid = (built / "eval" / "select" / model / "moving_digits" / "grid.csv").read_text().splitlines()
        assert selection["split"] == "val" and len(grid) == 1 + selection["grid_points"]
        assert selection["grid_points"] == (1 if model == "gan" else 2)
        for seed in seeds:  # every seed is scored at the setting chosen on val, and says so
            record = json.loads((built / "metrics" / "eval" / model / "moving_digits" / f"seed{seed}.json").read_text())["record"]
            assert record["sampler"] == selection["chosen"] and record["sampler_chosen_on"] == "val"
            assert record["reference_split"] == "test" and record["num_samples"] == 8 and record["sampling_seed"] == seed
            assert record["reference_sha256"] == sha256_file(built / "data" / "prepared" / "moving_digits" / "test" / "videos.npy")
            assert record["frame_evaluator_sha256"] == sha256_file(built / "models" / "evaluators" / "moving_digits" / "frame.pt")
            assert len(record["code_commit"]) == 40 and record["mlflow_run_id"]
    for name in DATASETS:
        scores = json.loads((built / "metrics" / "eval" / "usam" / name / "seed1.json").read_text())
        other = DATASETS[1 - DATASETS.index(name)]
        assert f"transfer/{other}/fid_domain" in scores and "floor/fid_domain" in scores
        assert 0.0 <= scores["real/flicker_mc"] <= 1.0 and scores["warping_error"] >= 0
        assert 0.0 <= scores["frame0_class_agreement"] <= 1.0 and scores["real/frame0_l1"] > 0
        record = client_for(compose(TINY), built).get_run(scores["mlflow_run_id"])
        assert record.data.metrics["eval/fid_domain"] == pytest.approx(scores["fid_domain"], rel=1e-5)
        assert json.loads(record.data.tags["eval.record"])["sampler"] == scores["record"]["sampler"]
    table = (built / "reports" / "comparison.md").read_text()
    for model in ("usam", "raster_ar", "maskgit", "gan", "diffusion"):
        assert f"| {model} | moving_digits | 2 |" in table  # two seeds each, with intervals
    assert "| real (test vs train) | moving_digits |" in table and "| usam | bouncing_shapes | 2 |" in table
    assert "commit " in table and "(clean)" in table and " ± " in table
    assert "| moving_digits | raster_ar | fid_domain |" in table  # USAM against each baseline, Welch
    assert "cfg=" in table  # the setting chosen on val, per row
    page = (built / "reports" / "comparison.html").read_text()
    assert page.startswith("<!doctype html>") and "/runs/" in page
    claims = json.loads((built / "reports" / "claims.json").read_text())
    assert claims["claims"] and all(c["grade"] == "inconclusive" for c in claims["claims"])  # 2 seeds < min_seeds 3
    shown = run(["dvc", "metrics", "show", "--json"], cwd=built).stdout
    assert "fid_domain" in shown and "fvd_domain" in shown and "inconclusive" in shown
    plots = run(["dvc", "plots", "show", "--json"], cwd=built).stdout
    assert "comparison_bars.csv" in plots and "usam_moving_digits_seed0.csv" in plots
    assert "usam_moving_digits.csv" in plots and "guidance" in plots  # the trade-off curves

    # the paper report: every section, pictures inline, and the audit of each model's training run
    run(["dvc", "repro", "report"], cwd=built)
    paper = (built / "reports" / "paper.md").read_text()
    for title in ("USAM against the baselines", "Guidance trade-off (val)", "Samples", "Training curves", "Datasets",
                  "Hyperparameter searches and ablations", "Reproducibility checklist"):
        assert f"## {title}" in paper
    assert "| usam | moving_digits |" in paper and "sweeps/lr_wd.yaml" in paper
    usam_row = next(line for line in paper.splitlines() if line.startswith("| usam/moving_digits/seed0 |"))
    assert usam_row.split("|")[2].strip() == "PASS"  # audited: a fresh pipeline run is clean and passes
    page = (built / "reports" / "paper.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/gif;base64," in page and "data:image/png;base64," in page
    assert "Data and pipelines are up to date." in run(["dvc", "repro"], cwd=built).stdout


TRAINING_STAGES = ("data", "preprocess", "evaluators", "tokenizer", "usam", "baseline")


def _stale_stages(root: Path) -> set[str]:
    """The stages `dvc status` lists as changed, by name (``usam@moving_digits`` -> ``usam``)."""
    status = json.loads(run(["dvc", "status", "--json"], cwd=root).stdout or "{}")
    return {name.split("@")[0].split(":")[-1] for name in status}


def test_a_comment_in_the_audit_replays_or_a_metric_reruns_no_training_stage(tmp_path: Path):
    """DVC deps name the files a stage runs: what a training stage never imports cannot make it stale."""
    from dvc.repo import Repo

    root = _clone(tmp_path / "proj", TINY)
    run(["dvc", "init", "-q", "-f"], cwd=root, check=False)
    with Repo(str(root)) as repo:  # placeholder outputs: a lock that matches today's files, without training
        for stage in repo.index.stages:
            for out in stage.outs:
                path = Path(out.fs_path)
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("placeholder\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder").write_text("placeholder\n")
    run(["dvc", "commit", "-f", "-q"], cwd=root)
    assert _stale_stages(root) == set()

    for module, expected in (("usam/train/replay.py", {"report"}),
                             ("usam/eval/temporal.py", {"evaluate", "evaluate-usam", "select", "select-usam"})):
        source = root / module
        original = source.read_text()
        source.write_text(original + "# a comment\n")
        stale = _stale_stages(root)
        assert stale == expected, f"a comment in {module} made {sorted(stale)} stale"
        assert not stale & set(TRAINING_STAGES)
        source.write_text(original)
    source = root / "usam" / "train" / "loop.py"  # the control: what every training stage runs
    source.write_text(source.read_text() + "# a comment\n")
    assert {"evaluators", "tokenizer", "usam", "baseline"} <= _stale_stages(root)
