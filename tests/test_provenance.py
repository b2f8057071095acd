"""The code state of a run's tree (clean / dvc-inputs / dirty) on a real git repository with a small templated
dvc.yaml: what `dvc repro` rewrites is not a dirty tree, an edited params.yaml is reproducible from dvc.lock only,
anything else is dirty and named."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from usam.config import compose
from usam.track import client_for, provenance, tracked_run
from usam.track.provenance import code_state, describe_code_state, git_state

DVC_YAML = {
    "stages": {
        "train": {
            "foreach": "${data.build}",
            "do": {
                "cmd": "python -m pipelines.train ${item}",
                "deps": ["pipelines/train.py", "${data.root}/prepared/${item}"],
                "params": ["seed", {"extra.yaml": ["lr"]}],
                "outs": ["models/${item}"],
                "metrics": [{"metrics/train/${item}.json": {"cache": False}}],
            },
        },
        "grid": {
            "matrix": {"model": ["ar", "gan"], "data": "${data.build}"},
            "cmd": "python -m pipelines.grid ${item.model} ${item.data}",
            "outs": [{"${outputs}/${item.model}/${item.data}.csv": {"cache": False}}],
            "plots": ["plots/${item.model}"],
        },
        "report": {"cmd": "python -m pipelines.report", "wdir": "reports", "outs": [{"paper.md": {"cache": False}}]},
    }
}
PARAMS = {"seed": 0, "outputs": "out/grid", "data": {"root": "data", "build": ["digits", "shapes"]}}
FILES = {
    "dvc.yaml": yaml.safe_dump(DVC_YAML),
    "params.yaml": yaml.safe_dump(PARAMS),
    "extra.yaml": "lr: 0.1\n",
    "dvc.lock": "schema: '2.0'\nstages: {}\n",
    "metrics/train/digits.json": '{"loss": 1.0}\n',
    "metrics/train/shapes.json": '{"loss": 2.0}\n',
    "out/grid/gan/shapes.csv": "a,b\n",
    "plots/ar/curve.csv": "step,loss\n",
    "reports/paper.md": "# paper\n",
    "raw.dvc": "outs:\n- md5: 0123\n  path: raw\n",
    "pipelines/train.py": "print('train')\n",
    "README.md": "# project\n",
    "environment.lock": "torch==2.0\n",
}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(project: Path) -> Path:
    """A committed project whose dvc.yaml has a foreach stage (templated outs and metrics), a matrix stage and a
    stage with a wdir."""
    for name, text in FILES.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    return project


def touch(root: Path, *paths: str) -> None:
    for path in paths:
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text((file.read_text() if file.exists() else "") + "# changed\n")


def test_a_clean_checkout_is_clean(repo: Path):
    state = git_state(repo)
    assert (state["dirty"], state["code_state"], state["code_changed"], state["code_inputs"]) == (False, "clean", [], [])


def test_what_the_pipeline_rewrites_leaves_the_code_clean(repo: Path):
    touch(repo, "dvc.lock", "metrics/train/digits.json", "metrics/train/shapes.json", "out/grid/gan/shapes.csv",
          "plots/ar/curve.csv", "reports/paper.md")
    touch(repo, "untracked.py")  # git diff HEAD does not list it
    state = git_state(repo)
    assert state["dirty"] is True and len(state["dirty_files"]) == 6
    assert (state["code_state"], state["code_changed"]) == ("clean", [])


def test_templated_paths_match_only_what_the_stages_declare(repo: Path):
    # a foreach item that is not in data.build, a matrix model that is not in the matrix, a file beside the outs
    for path in ("metrics/train/faces.json", "out/grid/vae/shapes.csv", "metrics/train.json", "reports/notes.md"):
        assert code_state(repo, [path])["state"] == "dirty", path
    assert code_state(repo, ["out/grid/ar/digits.csv", "plots/gan/x/y.csv", "metrics/train/shapes.json"]) == {
        "state": "clean", "changed": [], "inputs": []}


def test_an_unresolvable_foreach_item_matches_one_path_segment(repo: Path):
    spec = {"stages": {"s": {"foreach": "${nowhere}", "do": {"cmd": "x", "metrics": ["m/${item}.json"]}}}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec))
    assert code_state(repo, ["m/anything.json"])["state"] == "clean"
    assert code_state(repo, ["m/a/b.json", "metrics/train/digits.json"])["changed"] == [
        "m/a/b.json", "metrics/train/digits.json"]


def test_params_and_dvc_files_are_dvc_inputs(repo: Path):
    touch(repo, "params.yaml", "extra.yaml", "raw.dvc", "dvc.lock")
    state = git_state(repo)
    assert state["code_state"] == "dvc-inputs"
    assert state["code_changed"] == state["code_inputs"] == ["extra.yaml", "params.yaml", "raw.dvc"]
    # a file inside a path a .dvc file tracks (were it ever committed) is an input too
    assert code_state(repo, ["raw/part-0.csv"])["state"] == "dvc-inputs"


def test_code_configs_and_docs_are_dirty_and_listed(repo: Path):
    touch(repo, "pipelines/train.py", "README.md", "params.yaml", "metrics/train/digits.json")
    state = git_state(repo)
    assert state["code_state"] == "dirty"
    assert state["code_changed"] == ["README.md", "params.yaml", "pipelines/train.py"]
    assert state["code_inputs"] == ["params.yaml"]
    assert provenance.deciding_paths(state) == ["README.md", "pipelines/train.py"]


def test_the_pipeline_definition_itself_is_dirty(repo: Path):
    assert code_state(repo, ["dvc.yaml"])["state"] == "dirty"


def test_a_project_inside_a_larger_repository(repo: Path):
    """git lists paths from the top level; the project's own products are still recognised."""
    assert code_state(repo, ["proj/dvc.lock", "proj/metrics/train/digits.json"], prefix="proj/")["state"] == "clean"
    assert code_state(repo, ["proj/dvc.lock", "other/x.py"], prefix="proj/")["changed"] == ["other/x.py"]


def test_describe_code_state_reads_the_tags_and_falls_back_to_git_dirty():
    assert describe_code_state({"git.code_state": "clean", "git.dirty": "true"}) == "clean"
    assert describe_code_state({"git.code_state": "dvc-inputs", "git.code_changed": "params.yaml"}) == (
        "only DVC-managed inputs changed (params.yaml)")
    assert describe_code_state({"git.code_state": "dirty", "git.code_changed": "usam/models/x.py, README.md"}) == (
        "DIRTY: usam/models/x.py, README.md")
    assert describe_code_state({"git.dirty": "false"}) == "clean"
    assert describe_code_state({"git.dirty": "true"}) == "DIRTY tree"
    assert describe_code_state({}) == "tree state unknown"


@pytest.mark.parametrize(
    ("changed", "state", "listed"),
    [
        (("dvc.lock", "metrics/train/digits.json"), "clean", None),
        (("params.yaml", "dvc.lock"), "dvc-inputs", "params.yaml"),
        (("pipelines/train.py", "params.yaml", "dvc.lock"), "dirty", "pipelines/train.py"),
    ],
)
def test_a_tracked_run_is_tagged_with_its_code_state(repo: Path, changed, state, listed):
    touch(repo, *changed)
    cfg = compose()
    with tracked_run(cfg, stage="demo", root=repo) as run:
        pass
    client = client_for(cfg, repo)
    tags = client.get_run(run.run_id).data.tags
    assert tags["git.dirty"] == "true"  # the raw git truth, as before
    assert tags["git.code_state"] == state
    assert tags.get("git.code_changed") == listed
    prov = provenance_json(client, run.run_id)
    assert prov["git"]["code_state"] == state
    assert prov["git"]["dirty_files"] == sorted(changed)
    assert "dvc.lock" not in prov["git"]["code_changed"]


def provenance_json(client, run_id: str) -> dict:
    return json.loads(Path(client.download_artifacts(run_id, "provenance.json")).read_text())
