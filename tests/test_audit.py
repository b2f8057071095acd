"""`usam audit` on a real run: a git repository, a real `dvc repro` of the data, a real Ray Train
run through a pipeline-style stage, a sqlite MLflow store. Each test spoils one thing and checks that
exactly its own check changes, for the right reason."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from conftest import committed_project, git

from usam.cli import main
from usam.config import compose, load_params
from usam.errors import UsamError
from usam.repro.audit import audit, dataloaders_without_generator
from usam.repro.render import render
from usam.track import client_for, tracked_run
from usam.track.provenance import installed_packages


def train(root: Path) -> str:
    """Run the stage as `python pipelines/train.py moving_digits` would (the command MLflow records); its run id."""
    spec = importlib.util.spec_from_file_location("stage_train", root / "pipelines" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [str(root / "pipelines" / "train.py"), "moving_digits"])
        return module.main("moving_digits").run_id


@pytest.fixture(scope="module")
def project(tmp_path_factory, ray_instance) -> dict:
    """A committed project whose data came from `dvc repro`, and one clean training run in it."""
    root = committed_project(tmp_path_factory.mktemp("audit"))
    run_id = train(root)
    cfg = load_params(root / "params.yaml")
    return {"root": root, "run_id": run_id, "cfg": cfg, "baseline": statuses(audit(run_id, cfg, root))}


def statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def check(report, name: str):
    return next(c for c in report.checks if c.name == name)


def audited(project: dict, run_id: str | None = None):
    return audit(run_id or project["run_id"], project["cfg"], project["root"])


def assert_only(report, project: dict, name: str, status: str) -> None:
    """``name`` has ``status`` and every other check kept its status from the clean audit."""
    expected = {**project["baseline"], name: status}
    assert statuses(report) == expected, check(report, name).evidence


def artifact(project: dict, name: str, run_id: str | None = None) -> Path:
    client = client_for(project["cfg"], project["root"])
    uri = client.get_run(run_id or project["run_id"]).info.artifact_uri
    return Path(unquote(urlparse(uri).path)) / name


@contextlib.contextmanager
def restored(*paths: Path):
    """Put the files back exactly as they were, whatever the test did to them."""
    saved = {p: p.read_bytes() for p in paths}
    try:
        yield
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


@pytest.mark.slow
def test_a_fresh_run_audits_clean(project: dict, capsys, monkeypatch):
    root, run_id = project["root"], project["run_id"]
    report = audited(project, "latest")
    assert report.run_id == run_id and not report.failed
    assert project["baseline"] == {
        "code": "PASS", "data": "PASS", "params": "PASS", "seeds": "PASS", "environment": "PASS",
        "determinism": "PASS", "checkpoint": "PASS", "metrics": "PASS", "rerun": "PASS", "completeness": "WARN",
    }
    commit = git(root, "rev-parse", "HEAD")
    assert check(report, "code").evidence == f"commit {commit[:12]} exists and the tree was clean (git.dirty = false)"
    assert check(report, "data").evidence.startswith("all 2 recorded DVC outputs equal dvc.lock and the workspace")
    assert "params.yaml still gives the same config (the run came from the pipeline stage pipelines/train.py)" in \
        check(report, "params").evidence
    assert check(report, "seeds").evidence.startswith("seed.seed = 0, seed.data.seed = 0 recorded and equal to the params")
    assert "equal this environment and environment.lock" in check(report, "environment").evidence
    assert check(report, "determinism").evidence.startswith("evaluator.train.runtime.deterministic = true")
    assert check(report, "checkpoint").evidence.startswith("models/moving_digits/weights.pt has the recorded sha256")
    assert check(report, "metrics").evidence.startswith("re-evaluating models/moving_digits/weights.pt on the val "
                                                        "split gives the 2 recorded val metric(s) within tolerance")
    recorded = client_for(project["cfg"], root).get_run(run_id).data.metrics
    assert f"val/loss: recorded {recorded['val/loss']:.6g}, re-evaluated" in "\n".join(check(report, "metrics").details)
    assert check(report, "rerun").evidence.startswith("2 step(s) of the recorded evaluator_frame recipe from seed 0, "
                                                      "twice (1 CPU worker here): bit-identical weights")
    skipped = audit(run_id, project["cfg"], root, replay=False)
    assert {c.name: c.evidence for c in skipped.checks if c.name in ("metrics", "rerun")} == \
        dict.fromkeys(("metrics", "rerun"), "not run (--no-replay): `usam audit RUN` evaluates and re-runs")
    completeness = check(report, "completeness").evidence
    # the training run records its dataset's splits as inputs; one seed is what it still lacks
    assert completeness == ("missing: more than one seed (1 run(s) with this configuration, seed(s) 0): "
                            "one seed gives no error bar")
    assert "dataset inputs: 3" in check(report, "completeness").details

    # the command line: exit 0, and the three formats
    monkeypatch.chdir(root)
    assert main(["audit", run_id, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run_id"] == run_id and data["status"] == "WARN"
    assert [c["status"] for c in data["checks"]] == list(project["baseline"].values())
    assert main(["audit", "frame/moving_digits", "--format", "html", "-o", str(root / "audit.html")]) == 0
    assert "wrote" in capsys.readouterr().out
    page = (root / "audit.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not any(external in page for external in ("<link", "<script", "src=", "@import"))  # self-contained
    assert page.count('class="badge" style="background:#1a7f37">PASS') == 9
    assert 'style="background:#9a6700">WARN' in page
    markdown = render(report, "md")
    assert "| checkpoint | **PASS** | models/moving_digits/weights.pt has the recorded sha256" in markdown


@pytest.mark.slow
def test_a_tampered_data_file_fails_the_data_check(project: dict):
    videos = project["root"] / "data" / "prepared" / "moving_digits" / "train" / "videos.npy"
    with restored(videos):
        videos.write_bytes(videos.read_bytes() + b"\0")
        report = audited(project)
    assert_only(report, project, "data", "FAIL")
    data = check(report, "data")
    assert "data/prepared/moving_digits: on disk" in data.evidence and "run and dvc.lock" in data.evidence
    assert data.details == ("data/prepared/moving_digits: train/videos.npy modified",)


@pytest.mark.slow
def test_package_drift_fails_or_warns_the_environment_check(project: dict):
    prov_file = artifact(project, "provenance.json")
    installed = installed_packages()["numpy"]
    with restored(prov_file):
        prov = json.loads(prov_file.read_text())
        prov["software"]["packages"]["numpy"] = "1.0.0"
        prov_file.write_text(json.dumps(prov))
        report = audited(project)
    assert_only(report, project, "environment", "FAIL")
    env = check(report, "environment")
    assert f"in 1 package(s): numpy: recorded 1.0.0, running {installed}" in env.evidence
    assert any(line.startswith("run:     python ") for line in env.details)

    lock = project["root"] / "environment.lock"
    with restored(lock):
        lock.write_text(lock.read_text().replace(f"numpy=={installed}\n", "numpy==1.0.0\n"))
        report = audited(project)
    assert_only(report, project, "environment", "WARN")
    assert f"differ from environment.lock in 1: numpy: environment.lock 1.0.0, recorded {installed}" in \
        check(report, "environment").evidence


@pytest.mark.slow
def test_an_edited_checkpoint_fails_the_checkpoint_check(project: dict):
    weights = project["root"] / "models" / "moving_digits" / "weights.pt"
    with restored(weights):
        weights.write_bytes(weights.read_bytes() + b"\0")
        report = audited(project)
    # the metrics check will not evaluate weights that are not the recorded ones
    assert statuses(report) == {**project["baseline"], "checkpoint": "FAIL", "metrics": "WARN"}
    assert check(report, "metrics").evidence.startswith("not re-evaluated: models/moving_digits/weights.pt is missing or "
                                                        "is not the recorded file")
    assert "the weights changed since training" in check(report, "checkpoint").evidence
    assert check(report, "checkpoint").evidence.startswith("models/moving_digits/weights.pt has sha256 ")


@pytest.mark.slow
def test_a_recorded_metric_the_weights_do_not_give_fails_the_metrics_check(project: dict):
    client = client_for(project["cfg"], project["root"])
    run_id = project["run_id"]
    history = client.get_metric_history(run_id, "val/loss")
    last = max(history, key=lambda m: (m.step, m.timestamp))
    try:
        client.log_metric(run_id, "val/loss", last.value * 1.05, step=last.step + 1)  # what a doctored record shows
        report = audited(project)
    finally:
        client.log_metric(run_id, "val/loss", last.value, step=last.step + 2)
    assert_only(report, project, "metrics", "FAIL")
    assert f"val/loss {last.value * 1.05:.6g} -> {last.value:.6g}" in check(report, "metrics").evidence
    assert statuses(audited(project)) == project["baseline"]


@pytest.mark.slow
def test_an_unseeded_start_fails_the_rerun_check(project: dict, monkeypatch):
    """Drop the seeding from the training loop: two short runs start from different weights."""
    import usam.train.loop

    monkeypatch.setattr(usam.train.loop, "seed_everything", lambda seed, deterministic=False: None)
    report = audited(project)
    assert_only(report, project, "rerun", "FAIL")
    assert "the weights and optimizer differ, so training is not bit-exact here" in check(report, "rerun").evidence


@pytest.mark.slow
def test_a_changed_param_fails_the_params_check(project: dict):
    params = project["root"] / "params.yaml"
    with restored(params):
        data = yaml.safe_load(params.read_text())
        lr = data["evaluator"]["train"]["lr"]
        data["evaluator"]["train"]["lr"] = 0.5
        params.write_text(yaml.safe_dump(data, sort_keys=False))
        report = audited(project)
    assert_only(report, project, "params", "FAIL")
    assert check(report, "params").evidence == (
        "the run came from the pipeline stage pipelines/train.py, and params.yaml has changed since: "
        f"evaluator.train.lr (params.yaml 0.5, run {lr})")

    recorded = artifact(project, "config.yaml")
    with restored(recorded):
        data = yaml.safe_load(recorded.read_text())
        data["evaluator"]["train"]["lr"] = 0.5
        recorded.write_text(yaml.safe_dump(data, sort_keys=False))
        report = audited(project)
    assert_only(report, project, "params", "FAIL")
    evidence = check(report, "params").evidence
    assert evidence.startswith("config.yaml re-composes to hash ")
    assert f"differs from the run's params at evaluator.train.lr (config.yaml 0.5, params {lr})" in evidence


@pytest.mark.slow
def test_seed_tags_and_unseeded_dataloaders_show_in_the_seeds_check(project: dict):
    client = client_for(project["cfg"], project["root"])
    client.delete_tag(project["run_id"], "seed.seed")
    try:
        report = audited(project)
    finally:
        client.set_tag(project["run_id"], "seed.seed", "0")
    assert_only(report, project, "seeds", "FAIL")
    assert check(report, "seeds").evidence.startswith("tag seed.seed is not recorded")

    loader = project["root"] / "pipelines" / "loader.py"
    loader.write_text("from torch.utils.data import DataLoader\n\n\ndef batches(ds):\n    return DataLoader(ds, batch_size=2)\n")
    try:
        report = audited(project)
    finally:
        loader.unlink()
    assert_only(report, project, "seeds", "WARN")
    assert check(report, "seeds").details == ("pipelines/loader.py:5",)


@pytest.mark.slow
def test_a_commit_that_no_longer_exists_fails_the_code_check(project: dict):
    client = client_for(project["cfg"], project["root"])
    commit = client.get_run(project["run_id"]).data.tags["git.commit"]
    client.set_tag(project["run_id"], "git.commit", "0" * 40)
    try:
        report = audited(project)
    finally:
        client.set_tag(project["run_id"], "git.commit", commit)
    assert_only(report, project, "code", "FAIL")
    assert check(report, "code").evidence.startswith(f"commit 000000000000 (tag git.commit) does not exist in the repository at {project['root']}")


@pytest.mark.slow
def test_missing_artifacts_are_reported_not_raised(project: dict):
    files = [artifact(project, "provenance.json"), artifact(project, "config.yaml")]
    with restored(*files):
        for f in files:
            f.unlink()
        report = audited(project)
    assert statuses(report)["params"] == "WARN" and statuses(report)["environment"] == "WARN"
    assert check(report, "params").evidence.startswith("artifact config.yaml cannot be read")
    assert check(report, "environment").evidence.startswith("artifact provenance.json cannot be read")
    for name in ("metrics", "rerun"):  # nothing to replay without the recorded config
        assert statuses(report)[name] == "WARN" and "artifact config.yaml cannot be read" in check(report, name).evidence
    kept = ("params", "environment", "metrics", "rerun")
    assert {n: s for n, s in statuses(report).items() if n not in kept} == \
        {n: s for n, s in project["baseline"].items() if n not in kept}


@pytest.mark.slow
def test_a_dirty_tree_fails_the_code_check_unless_only_dvc_files_changed(project: dict):
    root = project["root"]
    stage, lock, params = root / "pipelines" / "train.py", root / "dvc.lock", root / "params.yaml"
    with restored(stage, lock):
        stage.write_text(stage.read_text() + "# tuned by hand\n")
        lock.write_text(lock.read_text() + "# rewritten by dvc repro\n")
        dirty_run = train(root)
    report = audited(project, dirty_run)
    assert_only(report, project, "code", "FAIL")
    code = check(report, "code")
    assert code.evidence.startswith("uncommitted changes to pipelines/train.py when the run started")
    assert "(git.code_state = dirty)" in code.evidence
    assert code.details == ("changed: dvc.lock", "changed: pipelines/train.py")
    assert "2 run(s) with this configuration, seed(s) 0" in check(report, "completeness").evidence

    # what `dvc repro` rewrites (dvc.lock, the stage outs) is no change to the code
    with restored(lock):
        lock.write_text(lock.read_text() + "# rewritten by dvc repro\n")
        with tracked_run(project["cfg"], stage="note", root=root) as note:
            pass
    code = check(audited(project, note.run_id), "code")
    assert code.status == "PASS", code.evidence
    assert "the tree differed from it only in pipeline products (dvc.lock), which `dvc repro` rewrites" in code.evidence

    # a changed params.yaml (a DVC input): reproducible from dvc.lock, not from the commit
    with restored(lock, params):
        params.write_text(params.read_text() + "# tuned by hand\n")
        lock.write_text(lock.read_text() + "# rewritten by dvc repro\n")
        with tracked_run(project["cfg"], stage="note", root=root) as inputs:
            pass
    code = check(audited(project, inputs.run_id), "code")
    assert code.status == "WARN", code.evidence
    assert "only DVC-managed inputs changed (params.yaml): the run is reproducible from dvc.lock" in code.evidence
    assert code.details == ("changed: dvc.lock", "changed: params.yaml")

    # a run recorded before git.code_state existed is classified from its provenance.json against dvc.yaml here
    client = client_for(project["cfg"], root)
    for run_id in (dirty_run, note.run_id, inputs.run_id):
        client.delete_tag(run_id, "git.code_state")
    assert [(c.status, "classified against the dvc.yaml here" in c.evidence)
            for c in (check(audited(project, r), "code") for r in (dirty_run, note.run_id, inputs.run_id))] == [
        ("FAIL", True), ("PASS", True), ("WARN", True)]


def test_an_unknown_run_is_one_clear_error(empty_project: Path, tmp_path: Path, capsys):
    root = empty_project
    with pytest.raises(UsamError) as info:
        audit("0123456789abcdef", compose(), root)
    assert info.value.what == "no run '0123456789abcdef' in the tracking store"
    assert info.value.where == f"sqlite:///{root / 'mlflow.db'}" and "tracking.uri=" in info.value.fix
    other = f"tracking.uri=sqlite:///{tmp_path / 'other.db'}"
    assert main(["audit", "latest", other]) == 2
    err = capsys.readouterr().err
    assert "no run 'latest' in the tracking store" in err and "other.db" in err and "Traceback" not in err
    assert main(["audit", "latest", "--format", "json", other]) == 2  # overrides may follow the options too
    assert "other.db" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["audit", "latest", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_the_dataloader_scan_names_each_call_without_a_generator(tmp_path: Path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "load.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader\n"
        "a = DataLoader([], batch_size=1)\n"
        "b = torch.utils.data.DataLoader([], generator=None)\n"
        "c = torch.utils.data.DataLoader([],\n    shuffle=True)\n"
        "d = DataLoader([], **{'generator': None})\n"
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("from torch.utils.data import DataLoader\nDataLoader([])\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    assert dataloaders_without_generator(tmp_path) == (2, ["pkg/load.py:3", "pkg/load.py:5"])


@pytest.mark.parametrize("where", ["missing folder", "file as folder", "a folder"])
def test_audit_checks_its_output_path_before_the_audit(empty_project: Path, tmp_path: Path, where: str, capsys):
    (tmp_path / "a_file").write_text("x")
    path, problem = {
        "missing folder": (tmp_path / "nodir" / "a.html", f"its folder {tmp_path / 'nodir'} does not exist"),
        "file as folder": (tmp_path / "a_file" / "a.html", f"{tmp_path / 'a_file'} is not a folder"),
        "a folder": (empty_project, f"{empty_project} is a folder"),
    }[where]
    assert main(["audit", "latest", "--format", "html", "-o", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"usam: error: cannot write {path}: {problem}\n  where: -o {path}\n" in err and "Traceback" not in err
    assert "no run" not in err and not (empty_project / "mlflow.db").exists()  # no run was looked up
