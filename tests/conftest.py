"""Shared fixtures: a throwaway project folder, tiny configs, the project's own files, a local Ray, and the
set-ups several modules build their (module-scoped) projects from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# An address-less ray.init() joins any Ray cluster it finds running on the machine; tests run side by side
# (some start clusters), so each test process and the commands it runs start their own local Ray.
os.environ.setdefault("RAY_ADDRESS", "local")

# Small enough for seconds on 2 cores, large enough to exercise every code path: the `tiny` profile
# (usam/conf/profile/tiny.yaml), spelled out as overrides so tests can pick parts of it or pass it to `dvc exp -S`.
# `usam train usam profile=tiny` runs what the tests run (tests/test_config.py checks the two agree).
def profile_overrides(name: str) -> list[str]:
    import yaml

    from usam.config import flatten

    data = yaml.safe_load((REPO / "usam" / "conf" / "profile" / f"{name}.yaml").read_text())
    return [f"{key}={value}" for key, value in flatten(data).items()]


TINY = profile_overrides("tiny")


@pytest.fixture
def empty_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder (cwd), recognised by its dvc.yaml marker."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def project(empty_project: Path) -> Path:
    """The empty project, under the name most modules use (those with a module-scoped `project` of their own
    ask for `empty_project`)."""
    return empty_project


def tracked_files() -> list[str]:
    """What a fresh clone would hold: tracked plus untracked-but-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    return [line for line in out.splitlines() if line and (REPO / line).is_file()]


def venv_env(**extra: str) -> dict[str, str]:
    """The test interpreter's bin first on PATH, so `python`/`dvc` in DVC commands are ours."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=venv_env(**env))
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def ray_instance():
    """A small local Ray for the module (one of an earlier module's left running is shut down first)."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    yield
    ray.shutdown()


def git(root: Path, *args: str) -> str:
    return run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root).stdout.strip()


STAGE = '''"""Stage `train`: the frame evaluator of one dataset, the way the project's stages train."""
import sys
from pathlib import Path

from usam.config import load_params
from usam.track import client_for
from usam.train import fit, with_dataset


def main(name):
    root = Path(__file__).resolve().parent.parent
    cfg = with_dataset(load_params(root / "params.yaml"), name)
    result = fit(cfg, "evaluator_frame", root=root, out_dir=root / "models" / name, run_name=f"frame/{name}")
    client_for(cfg, root).set_tag(result.run_id, "checkpoint.path", f"models/{name}/weights.pt")
    return result


if __name__ == "__main__":
    main(sys.argv[1])
'''

DVC_YAML = """stages:
  data:
    cmd: usam data build --name moving_digits --params params.yaml
    outs:
      - data/raw/moving_digits
      - data/prepared/moving_digits
"""


def committed_project(root: Path) -> Path:
    """``root`` made a git repository whose data came from a real `dvc repro` (tiny moving digits), with a
    pipeline-style training stage (pipelines/train.py, see STAGE), its environment.lock, all committed."""
    from usam.config import write_params
    from usam.track.provenance import installed_packages

    write_params(root / "params.yaml", TINY)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "pipelines").mkdir()
    (root / "pipelines" / "train.py").write_text(STAGE)
    (root / "environment.lock").write_text("".join(f"{n}=={v}\n" for n, v in installed_packages().items()))
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\noutputs/\nmodels/\n")
    git(root, "init", "-q")
    run(["dvc", "init", "-q"], cwd=root)
    run(["dvc", "repro", "-q"], cwd=root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "data and the train stage")
    return root


def digits_and_tokenizer(root: Path, overrides: list[str]) -> str:
    """``root`` a project (dvc.yaml marker) with moving digits built and preprocessed under ``overrides``, and an
    untrained tokenizer (seed 0) saved the way its stage saves it; the tokenizer file's sha256."""
    import torch

    from usam.artifacts.layout import Layout
    from usam.config import compose
    from usam.data import build_dataset, preprocess_dataset
    from usam.train.checkpoint import atomic_torch_save
    from usam.train.tasks import make_task

    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(overrides)
    build_dataset(cfg, "moving_digits", root / "data" / "raw" / "moving_digits")
    preprocess_dataset(cfg, root / "data" / "raw" / "moving_digits", root / "data" / "prepared" / "moving_digits")
    task = make_task("tokenizer", cfg, Layout(root, root / "data"))
    torch.manual_seed(0)
    model = task.build_model()
    path = root / "models" / "tokenizer" / "moving_digits" / "tokenizer.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save({"model": model.state_dict(), "progress": {}, "task": "tokenizer", **task.export_meta()},
                             path)
