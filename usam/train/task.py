"""What every training task shares: the contract the loop trains against, and the checks tasks run first."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from usam.config.schema import TrainConfig
from usam.errors import DataError

SHAPE_KINDS = ("circle", "square", "triangle")


class Task(Protocol):
    """What to train: the model, its data, its loss and its validation; the loop (``usam.train.loop``) does the
    rest the same way for every task. Tasks subclass it to inherit the defaults of the optional parts.

    The loop hands ``loss`` the model it trains (DDP-wrapped on a worker group, so gradients are all-reduced)
    and every other method the bare model."""

    name: str

    @property
    def train_cfg(self) -> TrainConfig: ...

    def check_data(self) -> None:
        """Fail with a clear error, before any work starts, when the task's inputs are missing."""

    def dataset(self, split: str, *, train: bool) -> Dataset: ...

    def datasets(self, device: torch.device) -> tuple[Dataset, Dataset]:
        """The train and val splits the loop iterates (a task may prepare them on ``device``, e.g. pre-encoded)."""
        return self.dataset("train", train=True), self.dataset("val", train=False)

    def build_model(self) -> nn.Module: ...

    def loss(self, model: nn.Module, batch: dict, device: torch.device, step: int = 0) -> tuple[torch.Tensor, dict]:
        """The loss to minimise and its named parts (floats, logged as ``train/<part>``)."""

    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict[str, float]:
        """Sums over the validation shard (so shards can be all-reduced); :meth:`summarize` makes them metrics."""

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """The ``val_*`` metrics of the all-reduced sums."""

    def visuals(self, model: nn.Module, dataset: Dataset, device: torch.device, folder: Path) -> list[Path]:
        """Pictures of this validation written under ``folder`` (logged every ``train.runtime.visuals_every`` epochs)."""
        return []

    def export_meta(self) -> dict:
        """What is stored with the exported weights to rebuild and use the model."""
        return {}

    def head_width(self, model: nn.Module) -> int | None:
        """The width of the model's output head, stored as ``num_classes`` with the exported weights (None: no
        head)."""
        return None


def require_splits(data_dir: Path, name: str) -> None:
    """A clear error, before any work, when a prepared split of dataset ``name`` is missing."""
    for split in ("train", "val", "test"):
        if not (data_dir / split / "videos.npy").is_file():
            raise DataError(f"no prepared {split} split for dataset {name!r}", where=str(data_dir / split),
                            fix=f"run `dvc repro preprocess@{name}` (or `usam data build`)")


def unwrap(model: nn.Module) -> nn.Module:
    """The model under a DDP wrapper. ``loss`` gets the wrapper (its gradients must sync); what the loss reads
    from the model itself (the schedule, helper methods) lives on the module underneath."""
    return getattr(model, "module", model)
