"""Training tasks: what to train (model, data, loss, evaluation) on the shared harness.

Each task fulfils the contract ``usam.train.task.Task``; the harness (``usam.train.loop``) does
everything else the same way for every task. ``make_task`` builds one by name.
"""

from __future__ import annotations

from usam.artifacts.layout import Inputs, Layout
from usam.config.schema import TASK_NAMES, Config
from usam.train.baseline_tasks import BASELINE_TASKS
from usam.train.evaluator_task import EvaluatorTask
from usam.train.task import Task
from usam.train.tokenizer_task import TokenizerTask
from usam.train.usam_task import USAMTask

BASELINES = tuple(BASELINE_TASKS)
TASKS = TASK_NAMES


def make_task(name: str, cfg: Config, layout: Layout, inputs: Inputs | None = None) -> Task:
    """The task ``name`` on ``cfg.data.name``, on the prepared data of ``layout`` and the artifacts in ``inputs``
    (default: where ``layout`` keeps them; a Tune trial that trains its own tokenizer passes that one)."""
    data_dir = layout.prepared(cfg.data.name)
    inputs = inputs or layout.inputs(cfg)
    if name in ("evaluator_frame", "evaluator_clip"):
        return EvaluatorTask(cfg, data_dir, name.split("_", 1)[1])
    if name == "tokenizer":
        return TokenizerTask(cfg, data_dir, inputs.frame_evaluator, inputs.lpips)
    if name == "usam":
        return USAMTask(cfg, data_dir, inputs.tokenizer)
    if name in BASELINE_TASKS:
        return BASELINE_TASKS[name](cfg, data_dir, inputs.tokenizer)
    raise KeyError(name)
