"""`usam replicate` and `usam kit` on a real run: a git repository, a real `dvc repro` of the data, a real
Ray Train run started the way DVC starts a stage, a sqlite MLflow store. The replica trains again from a
git worktree in a subprocess; the kit is rebuilt from its own files in a fresh folder."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import committed_project, git, run

from usam.cli import main
from usam.config import compose, config_hash, load_params
from usam.errors import UsamError
from usam.files import sha256_file
from usam.repro.kit import build_kit
from usam.repro.replicate import compare_metrics, replicate, tensor_differences
from usam.track import client_for

KIT_FILES = {
    "source.tar", "environment.lock", "config.yaml", "params.yaml", "provenance.json", "data.json", "check_data.py",
    "checkpoint/weights.pt", "checkpoint/weights.pt.sha256", "audit.md", "audit.json", "COMMANDS.sh", "README.md",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """A committed project whose data came from `dvc repro`, and one training run of its stage, run as DVC runs it."""
    root = committed_project(tmp_path_factory.mktemp("replicate"))
    run([sys.executable, "pipelines/train.py", "moving_digits"], cwd=root)
    cfg = load_params(root / "params.yaml")
    client = client_for(cfg, root)
    (original,) = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`usam.task` != ''")
    return {"root": root, "cfg": cfg, "client": client, "run": original, "commit": git(root, "rev-parse", "HEAD")}


@pytest.mark.slow
def test_replicate_reproduces_the_run_bit_exactly_and_links_the_two(project: dict, monkeypatch, capsys):
    root, client, original = project["root"], project["client"], project["run"]
    run_id = original.info.run_id
    monkeypatch.chdir(root)
    assert main(["replicate", "frame/moving_digits"]) == 0
    out = capsys.readouterr().out
    report_path = Path(out.strip().splitlines()[-1].split("report ")[-1])
    assert report_path.name == "replication.md" and report_path.parent.parent == root / "outputs" / "replicas"
    report = json.loads((report_path.parent / "replication.json").read_text())

    # the weights bit for bit, every metric exactly, timings aside
    assert report["verdict"] == "exact"
    assert report["replica"]["weights_sha256"] == report["original"]["weights_sha256"] == original.data.tags["checkpoint.sha256"]
    assert sha256_file(Path(report["replica"]["weights"])) == original.data.tags["checkpoint.sha256"]
    assert report["weights"] == {"equal_sha256": True, "bitwise_expected": True, "max_abs_diff": {}}
    compared = {m["name"]: m for m in report["metrics"]}
    assert {"train/ce", "epoch"} <= set(compared)
    assert all(m["abs_diff"] == 0 and m["within"] for m in compared.values())
    assert {"train_seconds", "train/samples_per_s", "train/memory_mb"} <= set(report["ignored_metrics"])
    replica = client.get_run(report["replica"]["run_id"])
    assert {k: v for k, v in replica.data.metrics.items() if k in compared} == \
        {k: v for k, v in original.data.metrics.items() if k in compared}

    # the same commit, config (but its pinned places), seeds and data
    assert replica.data.tags["git.commit"] == project["commit"] and replica.data.tags["git.dirty"] == "false"
    assert set(report["pinned"]) == {"data.root", "ray.storage_path", "tracking.uri", "tracking.artifact_root"}
    assert report["pinned"]["data.root"] == ["data", str(root / "data")]
    differing = {k for k in original.data.params if original.data.params[k] != replica.data.params.get(k)}
    assert differing == set(report["pinned"])
    for tag in ("seed.seed", "seed.data.seed", "dvc.out.data/prepared/moving_digits", "dvc.lock_sha256", "usam.task"):
        assert replica.data.tags[tag] == original.data.tags[tag]

    # linked in MLflow, the report logged to the replica, the worktree gone
    original = client.get_run(run_id)
    assert replica.data.tags["usam.replica_of"] == run_id
    assert original.data.tags["usam.replicated_by"] == replica.info.run_id
    assert original.data.tags["usam.replication_verdict"] == replica.data.tags["usam.replication_verdict"] == "exact"
    logged = {a.path for a in client.list_artifacts(replica.info.run_id, "replication")}
    assert logged == {"replication/replication.md", "replication/replication.json"}
    assert report_path.read_text().startswith("# Replication of run frame/moving_digits: exact")
    assert len(git(root, "worktree", "list").splitlines()) == 1

    # a perturbed copy of the weights: the tensor-by-tensor comparison names the tensor and the amount
    weights = torch.load(report["replica"]["weights"], weights_only=True)
    name = next(iter(weights["model"]))
    weights["model"][name] = weights["model"][name] + 0.25
    perturbed = report_path.parent / "perturbed.pt"
    torch.save(weights, perturbed)
    diffs = tensor_differences(Path(report["replica"]["weights"]), perturbed)
    assert diffs[f"model/{name}"] == pytest.approx(0.25) and sum(v > 0 for v in diffs.values()) == 1


def test_metrics_compare_exactly_by_default_and_within_a_given_tolerance():
    original = {"val/acc": 0.5, "train/ce": 2.0, "train_seconds": 3.0, "train/samples_per_s": 90.0}
    replica = {"val/acc": 0.5, "train/ce": 2.0 + 1e-9, "train_seconds": 5.0, "train/samples_per_s": 40.0}
    exact, ignored = compare_metrics(original, replica, rtol=0.0, atol=0.0)
    assert ignored == ("train/samples_per_s", "train_seconds")
    assert [(m.name, m.within) for m in exact] == [("train/ce", False), ("val/acc", True)]
    assert exact[0].abs_diff == pytest.approx(1e-9, rel=1e-3)
    loose, _ = compare_metrics(original, replica, rtol=0.0, atol=1e-6)
    assert all(m.within for m in loose)
    missing, _ = compare_metrics(original, {"val/acc": 0.5}, rtol=1.0, atol=1.0)
    assert [(m.name, m.replica, m.within) for m in missing] == [("train/ce", None, False), ("val/acc", 0.5, True)]


def test_replicate_and_kit_of_an_unknown_run_are_one_clear_error(empty_project: Path, tmp_path: Path, capsys):
    root = empty_project
    with pytest.raises(UsamError) as info:
        replicate("0123456789abcdef", compose(), root)
    assert info.value.what == "no run '0123456789abcdef' in the tracking store"
    assert info.value.where == f"sqlite:///{root / 'mlflow.db'}"
    assert main(["replicate", "0123456789abcdef"]) == 2
    assert main(["kit", "latest", "-o", str(tmp_path / "kit")]) == 2
    err = capsys.readouterr().err
    assert err.count("usam: error: no run") == 2 and "Traceback" not in err
    assert not (tmp_path / "kit").exists()


@pytest.mark.slow
def test_a_run_from_another_store_a_lost_commit_or_missing_artifacts_are_clear_errors(project: dict, tmp_path: Path):
    root, cfg, client = project["root"], project["cfg"], project["client"]
    run_id = project["run"].info.run_id
    other = compose([f"tracking.uri=sqlite:///{tmp_path / 'other.db'}"])
    with pytest.raises(UsamError, match="no run") as info:
        replicate(run_id, other, root)
    assert "other.db" in info.value.where

    client.set_tag(run_id, "git.commit", "0" * 40)
    try:
        for command in (lambda: replicate(run_id, cfg, root), lambda: build_kit(run_id, cfg, root, tmp_path / "kit")):
            with pytest.raises(UsamError) as info:
                command()
            assert info.value.what == f"commit 000000000000 recorded by run {run_id} (tag git.commit) no longer exists"
            assert info.value.where == f"the git repository at {root}" and "git fetch" in info.value.fix
    finally:
        client.set_tag(run_id, "git.commit", project["commit"])
    assert not (tmp_path / "kit").exists() and len(git(root, "worktree", "list").splitlines()) == 1

    from urllib.parse import unquote, urlparse

    config = Path(unquote(urlparse(client.get_run(run_id).info.artifact_uri).path)) / "config.yaml"
    saved = config.read_bytes()
    config.unlink()
    try:
        with pytest.raises(UsamError) as info:
            replicate(run_id, cfg, root)
    finally:
        config.write_bytes(saved)
    assert info.value.what.startswith(f"run {run_id} cannot be replayed: artifact config.yaml cannot be read")


@pytest.mark.slow
def test_the_kit_holds_every_file_and_rebuilds_the_same_weights(project: dict, tmp_path: Path, monkeypatch, capsys):
    root, cfg, original = project["root"], project["cfg"], project["run"]
    tags = original.data.tags
    kit = tmp_path / "kit"
    monkeypatch.chdir(root)
    assert main(["kit", original.info.run_id, "-o", str(kit)]) == 0
    assert f"wrote the kit of run {original.info.run_id}" in capsys.readouterr().out
    manifest = json.loads((kit / "kit.json").read_text())

    # every file, listed with its true sha256
    assert set(manifest["files"]) == KIT_FILES
    assert {p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file()} == KIT_FILES | {"kit.json"}
    assert all(sha256_file(kit / name) == sha for name, sha in manifest["files"].items())
    assert manifest["files"]["checkpoint/weights.pt"] == manifest["checkpoint_sha256"] == tags["checkpoint.sha256"]
    assert (kit / "checkpoint/weights.pt.sha256").read_text() == f"{tags['checkpoint.sha256']}  weights.pt\n"
    assert manifest["commit"] == project["commit"] and manifest["notes"] == []

    # the contents: source at the commit, lock, config, params, data hashes, audit
    with tarfile.open(kit / "source.tar") as tar:
        members = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert members == sorted(git(root, "ls-tree", "-r", "--name-only", project["commit"]).splitlines())
    assert (kit / "environment.lock").read_bytes() == (root / "environment.lock").read_bytes()
    assert config_hash(load_params(kit / "config.yaml")) == tags["usam.config_hash"]
    assert (kit / "params.yaml").read_bytes() == (root / "params.yaml").read_bytes()
    data = json.loads((kit / "data.json").read_text())
    assert {p: o["md5"] for p, o in data["outs"].items()} == \
        {p: tags[f"dvc.out.{p}"] for p in ("data/raw/moving_digits", "data/prepared/moving_digits")}
    assert all(o["matches"] and o["stage"] == "data" for o in data["outs"].values())
    assert data["dvc_lock_stages"]["data"]["cmd"] == "usam data build --name moving_digits --params params.yaml"
    audit = json.loads((kit / "audit.json").read_text())
    assert audit["run_id"] == original.info.run_id and audit["status"] != "FAIL"
    assert (kit / "audit.md").read_text().startswith("# Audit of run frame/moving_digits")
    script = (kit / "COMMANDS.sh").read_text()
    assert all(command in script for command in manifest["commands"].values())
    assert "pip install --require-hashes" in script and "dvc pull data/prepared/moving_digits data/raw/moving_digits || dvc repro data" in script

    # a non-empty folder is refused unless --force
    with pytest.raises(UsamError, match="is not empty"):
        build_kit(original.info.run_id, cfg, root, kit)
    again = build_kit(original.info.run_id, cfg, root, kit, force=True)["files"]
    assert set(again) == KIT_FILES  # the same bytes but the audit's timestamp:
    assert {k for k in again if again[k] != manifest["files"][k]} <= {"audit.md", "audit.json"}
    with pytest.raises(UsamError, match="holds the project itself"):
        build_kit(original.info.run_id, cfg, root, root.parent, force=True)
    assert (root / "mlflow.db").is_file()

    # rebuild from the kit alone: its source in a fresh folder, this venv, the data, its training command
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with tarfile.open(kit / "source.tar") as tar:
        tar.extractall(fresh, filter="data")
    for path in data["outs"]:  # the data the kit names, as `dvc pull` would put it there
        (fresh / path).symlink_to(root / path, target_is_directory=True)
    checked = run([sys.executable, str(kit / "check_data.py"), str(kit / "data.json"), "dvc.lock"], cwd=fresh)
    assert checked.stdout.strip() == "all 2 DVC outputs have the recorded md5"
    run(["bash", "-c", manifest["commands"]["train"]], cwd=fresh, KIT=str(kit))
    assert sha256_file(fresh / "rebuilt" / "weights.pt") == tags["checkpoint.sha256"]
    verified = run(["bash", "-c", manifest["commands"]["verify"]], cwd=fresh, KIT=str(kit))
    assert verified.stdout.strip() == "rebuilt/weights.pt: OK"


@pytest.mark.slow
def test_commands_sh_rebuilds_the_run_from_the_kit_alone(project: dict, tmp_path: Path):
    """Every step of COMMANDS.sh, run as a user runs it: the source, this venv as the environment (USAM_KIT_PYTHON,
    checked against the lock; no network), the data rebuilt by `dvc repro` (the project has no DVC remote), the
    training with the recorded config, and the sha256 check of the weights."""
    tags = project["run"].data.tags
    kit = tmp_path / "kit"
    build_kit(project["run"].info.run_id, project["cfg"], project["root"], kit)
    rebuild = tmp_path / "rebuild"
    done = run(["bash", str(kit / "COMMANDS.sh"), str(rebuild)], cwd=tmp_path, USAM_KIT_PYTHON=sys.executable)
    out = done.stdout.splitlines()
    assert [line.split(".")[0] for line in out if line.startswith("== ")] == ["== 1", "== 2", "== 3", "== 4", "== 5"]
    assert f"reusing the environment of {sys.executable} (USAM_KIT_PYTHON)" in out
    assert f"environment matches {kit / 'environment.lock'}" in out
    assert "Running stage 'data'" in done.stdout and "all 2 DVC outputs have the recorded md5" in out
    assert out[-1] == "rebuilt/weights.pt: OK" and "COMMANDS.sh: step" not in done.stderr
    assert sha256_file(rebuild / "rebuilt" / "weights.pt") == tags["checkpoint.sha256"]

    # the data step made the data: DVC's hash of each output on disk (not just dvc.lock) is the recorded md5
    from dvc.repo import Repo

    assert not (rebuild / "data" / "raw" / "moving_digits").is_symlink()
    with Repo(str(rebuild)) as repo:
        on_disk = {Path(o.fs_path).relative_to(rebuild).as_posix(): o.get_hash().value for o in repo.index.outs}
    recorded = {p: tags[f"dvc.out.{p}"] for p in ("data/raw/moving_digits", "data/prepared/moving_digits")}
    assert on_disk == recorded


def test_a_failing_commands_sh_step_stops_the_script_and_names_it(tmp_path: Path):
    """Each step is an `a && b` list, whose failing first commands `set -e` alone would let pass: the script stops
    at the step that fails, names it, and runs none after it. And USAM_KIT_PYTHON must name an interpreter."""
    from types import SimpleNamespace

    from usam.repro.kit import commands_script, rebuild_commands
    from usam.track.provenance import installed_packages

    record = SimpleNamespace(run=SimpleNamespace(info=SimpleNamespace(run_id="0123abcd", run_name="frame/x")),
                             tags={"usam.task": "evaluator_frame"})
    kit = tmp_path / "kit"
    (kit / "src").mkdir(parents=True)
    (kit / "src" / "params.yaml").write_text("seed: 0\n")
    with tarfile.open(kit / "source.tar", "w") as tar:
        tar.add(kit / "src" / "params.yaml", "params.yaml")
    packages = {**installed_packages(), "numpy": "1.0.0"}
    (kit / "environment.lock").write_text("".join(f"{n}=={v}\n" for n, v in packages.items()))
    (kit / "COMMANDS.sh").write_text(commands_script(record, "c" * 40, rebuild_commands(record, "0" * 64, {"outs": {}})))

    def commands(folder: str, **env: str):
        proc = run(["bash", str(kit / "COMMANDS.sh"), folder], cwd=tmp_path, check=False, **env)
        return proc.returncode, proc.stdout, proc.stderr

    # the environment differs from the lock in one package: step 2 lists it and stops there
    code, out, err = commands("drift", USAM_KIT_PYTHON=sys.executable)
    assert code == 1 and f"version  numpy: locked 1.0.0, installed {installed_packages()['numpy']}" in out
    assert err.strip().splitlines()[-1] == (
        "COMMANDS.sh: step 2 failed (exit 1): the environment from the lock (a new .venv, or the one of "
        "USAM_KIT_PYTHON checked against the lock). The steps after it did not run.")
    assert "== 1. the source at commit " + "c" * 40 in out and "== 3." not in out
    assert (tmp_path / "drift" / "params.yaml").is_file() and not (tmp_path / "drift" / "rebuilt").exists()

    # the source archive is damaged: step 1 (`tar ... && git init`) stops the script at tar
    (kit / "source.tar").write_bytes(b"not a tar file")
    code, out, err = commands("damaged", USAM_KIT_PYTHON=sys.executable)
    assert code != 0 and f"COMMANDS.sh: step 1 failed (exit {code}): the source at commit {'c' * 40}." in err
    assert "== 2." not in out and not (tmp_path / "damaged" / ".git").exists()

    # USAM_KIT_PYTHON that is no interpreter: refused before anything is made
    code, _, err = commands("nothing", USAM_KIT_PYTHON=str(tmp_path / "no-python"))
    assert code == 2 and f"USAM_KIT_PYTHON={tmp_path / 'no-python'} is not an executable file" in err
    assert not (tmp_path / "nothing").exists()


KIT_DVC_YAML = """stages:
  evaluators:
    foreach: ${data.build}
    do:
      cmd: python -m pipelines.evaluators ${item}
      outs:
        - models/evaluators/${item}
      metrics:
        - metrics/evaluators/${item}.json:
            cache: false
  select:
    foreach: ${data.build}
    do:
      cmd: python -m pipelines.select ${item}
      outs:
        - eval/select/${item}:
            cache: false
"""

# -o DIR -> what the refusal names; every one of them holds (or is) project work planted below
PROTECTED = {
    "models/evaluators/moving_digits": "is, or lies inside, a DVC output of dvc.yaml",
    "models/evaluators/moving_digits/kit": "is, or lies inside, a DVC output of dvc.yaml",
    "models": "contains the DVC output models/evaluators/moving_digits of dvc.yaml",
    "metrics": "contains the DVC output metrics/evaluators/moving_digits.json of dvc.yaml",
    "eval": "contains the DVC output eval/select/moving_digits of dvc.yaml",
    "notes": "contains git-tracked files (notes/plan.md)",
    ".git": "is the git repository",
    ".dvc/cache": "lies inside DVC's folder (its cache)",
    "mlartifacts": "is the MLflow artifact store (tracking.artifact_root)",
    "outputs": "contains Ray's storage (ray.storage_path)",
    "outputs/ray/frame-run": "lies inside Ray's storage (ray.storage_path)",
    "store": "contains the MLflow tracking store (tracking.uri)",
}


def _planted(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and ".git/" not in p.relative_to(root).as_posix()}


@pytest.mark.parametrize("folder", sorted(PROTECTED))
def test_the_kit_never_replaces_project_work_force_or_not(empty_project: Path, folder: str, capsys):
    from usam.config import write_params

    root = empty_project
    (root / "dvc.yaml").write_text(KIT_DVC_YAML)
    write_params(root / "params.yaml")
    store = f"tracking.uri=sqlite:///{root / 'store' / 'runs.db'}"
    client_for(compose([store]), root).search_experiments()  # a real (empty) sqlite store
    for path, text in {"models/evaluators/moving_digits/frame.pt": "trained weights",
                       "metrics/evaluators/moving_digits.json": "{}", "eval/select/moving_digits/best.json": "{}",
                       "notes/plan.md": "the plan", ".dvc/cache/ab/cdef": "cached", "mlartifacts/1/x/weights.pt": "w",
                       "outputs/ray/frame-run/checkpoint_000001/rank0.pt": "ckpt"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    git(root, "init", "-q")
    git(root, "add", "notes/plan.md")
    git(root, "commit", "-qm", "notes")
    before = _planted(root)

    assert main(["kit", "latest", "-o", folder, "--force", store]) == 2
    err = capsys.readouterr().err
    assert f"the kit folder {root / folder} {PROTECTED[folder]}" in err and "--force or not" in err
    assert "Traceback" not in err and "no run" not in err  # refused before the run is looked up
    assert _planted(root) == before


def test_a_fresh_or_replaceable_folder_is_fine_for_a_kit(empty_project: Path, tmp_path: Path):
    from usam.repro.kit import check_folder, prepare_folder

    root, cfg = empty_project, compose()
    (root / "dvc.yaml").write_text(KIT_DVC_YAML)
    old = root / "kits" / "old"
    old.mkdir(parents=True)
    (old / "README.md").write_text("an earlier kit")
    for out in (root / "kits" / "new", tmp_path / "elsewhere", old):
        check_folder(out, root, cfg, force=True)
    with pytest.raises(UsamError, match="is not empty"):
        check_folder(old, root, cfg, force=False)
    prepare_folder(old)
    assert old.is_dir() and not any(old.iterdir())


@pytest.mark.slow
def test_kit_force_onto_a_dvc_output_of_a_real_run_leaves_it_whole(project: dict, monkeypatch, capsys):
    root, run_id = project["root"], project["run"].info.run_id
    prepared = root / "data" / "prepared" / "moving_digits"
    before = {p.relative_to(root).as_posix(): sha256_file(p) for p in prepared.rglob("*") if p.is_file()}
    assert before
    monkeypatch.chdir(root)
    assert main(["kit", run_id, "-o", "data/prepared/moving_digits", "--force"]) == 2
    err = capsys.readouterr().err
    assert f"the kit folder {prepared} is, or lies inside, a DVC output of dvc.yaml" in err and "Traceback" not in err
    assert {p.relative_to(root).as_posix(): sha256_file(p) for p in prepared.rglob("*") if p.is_file()} == before
