"""Where ``fit`` runs the training workers: in this process (the one worker of a Tune trial) or on a Ray
Train worker group. Both take the same ``WorkerSpec`` and return the last report and its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from usam.config.schema import TrainConfig
from usam.train.loop import WorkerSpec, train_worker
from usam.train.session import LocalSession


class Launcher(Protocol):
    in_process: bool  # the workers run in this process (no worker log; a Tune stop must pass through)
    restarts: int  # how often a failed run was restarted before it gave up
    where: str  # the run's ``usam.train.where`` tag

    def run(self, spec: WorkerSpec, ray_name: str, storage: str) -> tuple[dict, object]:
        """Train; (the last report's metrics, its checkpoint: a folder or a Ray ``Checkpoint``; None: none)."""


class InProcess:
    """This process, with no worker group to start: a one-worker Tune trial (on the resources Tune gave it) or
    a one-worker run with no cluster (a pipeline stage, `usam train`). With ``report``, every epoch's metrics
    and checkpoint go to Tune (a scheduler may stop the trial by exiting it from inside a report: Tune must see
    that, so such stops pass through); without, checkpoints stay under the run's storage folder, where
    ``--resume`` finds the newest."""

    in_process = True
    restarts = 0

    def __init__(self, tcfg: TrainConfig, *, report: bool, trial: bool):
        self.tcfg, self.report = tcfg, report
        self.where = "the Tune trial's process" if trial else "this process (one worker, no Ray)"

    def run(self, spec: WorkerSpec, ray_name: str, storage: str) -> tuple[dict, Path | None]:
        device = torch.device("cuda", 0) if self.tcfg.runtime.use_gpu else torch.device("cpu")
        session = LocalSession(device, Path(storage) / ray_name, self.tcfg.runtime.keep_checkpoints, tune=self.report)
        train_worker(spec, session)
        return session.last if session.last is not None else ({}, None)


class RayTrainGroup:
    """``train_worker`` on a ``TorchTrainer`` worker group (DDP, gloo on CPU, NCCL on GPU), restarted from the
    last checkpoint up to ``max_failures`` times; with ``report`` (inside a Tune trial) it reports through
    ``TuneReportCallback``."""

    in_process = False

    def __init__(self, tcfg: TrainConfig, callbacks: list, *, report: bool):
        self.tcfg, self.callbacks, self.report = tcfg, callbacks, report
        self.restarts = tcfg.runtime.max_failures
        self.where = f"Ray Train worker group of {tcfg.runtime.workers}"

    def run(self, spec: WorkerSpec, ray_name: str, storage: str):
        """(last report, the last checkpoint Ray kept)."""
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        tcfg, callbacks = self.tcfg, self.callbacks
        if self.report:
            from ray.tune.integration.ray_train import TuneReportCallback

            callbacks = [*callbacks, TuneReportCallback()]
        backend = tcfg.runtime.backend if tcfg.runtime.backend != "auto" else ("nccl" if tcfg.runtime.use_gpu else "gloo")
        resources = {"CPU": tcfg.runtime.cpus_per_worker, **({"GPU": 1} if tcfg.runtime.use_gpu else {})}
        trainer = TorchTrainer(
            _entry, train_loop_config={"spec": spec}, torch_config=TorchConfig(backend=backend),
            scaling_config=ScalingConfig(num_workers=tcfg.runtime.workers, use_gpu=tcfg.runtime.use_gpu, resources_per_worker=resources),
            run_config=RunConfig(
                name=ray_name, storage_path=storage, failure_config=FailureConfig(max_failures=tcfg.runtime.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=tcfg.runtime.keep_checkpoints), callbacks=callbacks,
            ),
        )
        result = trainer.fit()
        return result.metrics, result.checkpoint


def _entry(config: dict) -> None:
    """Ray Train's worker entry point: its ``train_loop_config`` must be a dict."""
    train_worker(config["spec"])
