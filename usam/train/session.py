"""Where a training worker runs: its rank and device, the checkpoint it resumes from, and where it reports.

The loop talks to one ``Session``; ``RayTrainSession`` is a worker of a Ray Train worker group,
``LocalSession`` the only worker, in this process (a one-worker Tune trial, or a re-run with no Ray).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import torch


class Session(Protocol):
    rank: int
    world: int
    device: torch.device

    def restored(self) -> AbstractContextManager[Path | None]:
        """The checkpoint folder to resume from (None: a fresh start), valid inside the context."""

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this worker's device, wrapped for data parallelism when there are several workers."""

    def report(self, metrics: dict, folder: Path) -> None:
        """Hand over this epoch's (or step's) metrics and the checkpoint written to ``folder``."""


class RayTrainSession:
    """One worker of a Ray Train worker group: its rank, device, restored checkpoint and reports."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        """The checkpoint to resume from, as a local folder (downloaded from remote storage if need be)."""
        import ray.train

        found = ray.train.get_checkpoint()
        if found is None:
            yield None
            return
        with found.as_directory() as folder:
            yield Path(folder)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # moves to the device; DDP when world > 1

    def report(self, metrics: dict, folder: Path) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))


class LocalSession:
    """The only worker, in this process: a Tune trial that needs no worker group (``tune=True``: every
    report and checkpoint goes to Tune, which restores the last one when the study resumes), or a run with
    no Ray at all (it resumes from the newest checkpoint already under ``folder``). Checkpoints are kept under ``folder`` (the last ``keep``); ``last`` is the
    latest report and its checkpoint folder."""

    rank, world = 0, 1

    def __init__(self, device: torch.device, folder: Path, keep: int = 1, *, tune: bool = False):
        self.device, self.folder, self.keep, self.tune = device, Path(folder), max(keep, 1), tune
        self.last: tuple[dict, Path] | None = None
        # a resumed trial numbers on from the checkpoints its earlier attempt kept (the newest are kept)
        self._count = max((int(p.name[11:]) for p in self.folder.glob("checkpoint_*") if p.name[11:].isdigit()),
                          default=0)

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        found = None
        if self.tune:
            from ray import tune

            found = tune.get_checkpoint()
        elif self._count:  # a resumed run (`--resume`): its newest kept checkpoint
            newest = self.folder / f"checkpoint_{self._count:06d}"
            self.last = ({}, newest)
            yield newest
            return
        if found is None:
            yield None
            return
        with found.as_directory() as folder:
            self.report({}, Path(folder), to_tune=False)  # kept: a trial restored after its last epoch saves no more
            yield Path(folder)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, folder: Path, to_tune: bool = True) -> None:
        self._count += 1
        kept = self.folder / f"checkpoint_{self._count:06d}"
        partial = self.folder / f".{kept.name}.partial"  # renamed when whole: a kill mid-copy leaves no checkpoint_*
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(folder, partial)
        shutil.rmtree(kept, ignore_errors=True)
        partial.rename(kept)
        for old in sorted(self.folder.glob("checkpoint_*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        self.last = (metrics, kept)
        if self.tune and to_tune:
            from ray import tune

            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(kept)))
