"""Training tasks: what to train (model, data, loss, evaluation) on the shared harness.

A task names its config section, builds its model and datasets, and computes its loss;
the harness (``usam.train.loop``) does everything else the same way for every task.
The interface: ``name``, ``train_cfg``, ``check_data()``, ``dataset(split, train=)``,
``build_model()``, ``loss(model, batch, device, step) -> (loss, parts)``,
``evaluate(model, loader, device) -> sums`` and ``summarize(sums) -> val_* metrics``;
optionally ``visuals(model, dataset, device, folder) -> files`` (logged every ``train.runtime.visuals_every``
epochs), ``datasets(device) -> (train, val)`` (splits prepared on the device, e.g. pre-encoded
latents) and ``export_meta() -> dict`` (stored with the exported weights).
"""

from __future__ import annotations

from usam.artifacts.layout import Inputs, Layout
from usam.config.schema import Config
from usam.train.baseline_tasks import BASELINE_TASKS
from usam.train.evaluator_task import EvaluatorTask
from usam.train.tokenizer_task import TokenizerTask
from usam.train.usam_task import USAMTask

BASELINES = tuple(BASELINE_TASKS)
TASKS = ("evaluator_frame", "evaluator_clip", "tokenizer", "usam", *BASELINES)


def make_task(name: str, cfg: Config, layout: Layout, inputs: Inputs | None = None):
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
