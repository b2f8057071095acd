"""Score an exported tokenizer on a split: reconstruction quality, temporal behaviour, bit usage."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from usam.artifacts.loaders import load_tokenizer
from usam.seeding import dataloader_generator
from usam.train.tokenizer_task import TokenizerTask


def score_tokenizer(task: TokenizerTask, weights_path: Path, split: str, *, expected_sha256: str | None = None,
                    batch_size: int = 32, panels: Path | None = None) -> dict[str, float]:
    """``task.summarize`` of the weights on ``split`` (single process, CPU), keys without the ``val_`` prefix;
    reconstruction panels of the split are written to ``panels`` when given."""
    model, _ = load_tokenizer(weights_path, expected_sha256)
    dataset = task.dataset(split, train=False)
    device = torch.device("cpu")
    loader = DataLoader(dataset, batch_size=batch_size, generator=dataloader_generator(task.cfg.seed, "eval", split))
    sums = task.evaluate(model, loader, device)
    if panels is not None:
        panels.mkdir(parents=True, exist_ok=True)
        task.visuals(model, dataset, device, panels)
    return {k[4:]: v for k, v in task.summarize(sums).items()}
