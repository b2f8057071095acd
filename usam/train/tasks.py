"""Training tasks: what to train (model, data, loss, evaluation) on the shared harness.

Each task fulfils the contract ``usam.train.task.Task``; the harness (``usam.train.loop``) does
everything else the same way for every task. ``make_task`` builds one by name.
"""

from __future__ import annotations

from pathlib import Path

from usam.config.schema import Config
from usam.paths import find_project_root
from usam.train.baseline_tasks import BASELINE_TASKS
from usam.train.evaluator_task import EvaluatorTask
from usam.train.task import Task
from usam.train.tokenizer_task import TokenizerTask
from usam.train.usam_task import USAMTask

BASELINES = tuple(BASELINE_TASKS)
TASKS = ("evaluator_frame", "evaluator_clip", "tokenizer", "usam", *BASELINES)


def make_task(name: str, cfg: Config, data_root: Path, root: Path | None = None) -> Task:
    """The task ``name`` on ``cfg.data.name``; ``data_root`` is the absolute ``data.root``, ``root`` the project."""
    data_dir = Path(data_root) / "prepared" / cfg.data.name
    root = Path(root) if root else find_project_root()
    if name in ("evaluator_frame", "evaluator_clip"):
        return EvaluatorTask(cfg, data_dir, name.split("_", 1)[1])
    if name == "tokenizer":
        return TokenizerTask(cfg, data_dir, root)
    if name == "usam":
        return USAMTask(cfg, data_dir, root)
    if name in BASELINE_TASKS:
        return BASELINE_TASKS[name](cfg, data_dir, root)
    raise KeyError(name)
