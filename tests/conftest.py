"""Shared fixtures: a throwaway project folder, tiny configs, the project's own files."""

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

# Small enough for seconds on 2 cores, large enough to exercise every code path.
TINY = [
    "data.num_videos.train=12",
    "data.num_videos.val=4",
    "data.num_videos.test=4",
    "evaluator.frame.width=4",
    "evaluator.clip.width=4",
    "evaluator.train.batch_size=4",
    "evaluator.train.epochs=1",
    "evaluator.train.max_steps=2",
    "tokenizer.arch.base_channels=8",
    "tokenizer.quantizer.bits=8",
    "tokenizer.train.batch_size=4",
    "tokenizer.train.epochs=1",
    "tokenizer.train.max_steps=2",
    "tokenizer.eval.panel_videos=2",
    "model.width=32",
    "model.depth=1",
    "model.heads=2",
    "model.sampling.per_class=1",
    "train.batch_size=4",
    "train.epochs=1",
    "train.max_steps=2",
    "baselines.raster_ar.size.width=32",
    "baselines.raster_ar.size.depth=1",
    "baselines.maskgit.size.width=32",
    "baselines.maskgit.size.depth=1",
    "baselines.maskgit.steps=2",
    "baselines.diffusion.size.width=32",
    "baselines.diffusion.size.depth=1",
    "baselines.diffusion.sample_steps=3",
    "baselines.gan.channels=8",
    "baselines.gan.critic_channels=8",
    "eval.num_samples=8",
    "eval.batch_size=4",
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder (cwd), recognised by its dvc.yaml marker."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(root)
    return root


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
