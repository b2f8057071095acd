"""Load a trained domain evaluator and score it on a split (accuracy against chance)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from usam.artifacts.weights import load_weights
from usam.seeding import dataloader_generator


def accuracy(task, weights_path: Path, split: str, *, expected_sha256: str | None = None,
             batch_size: int = 64) -> dict[str, float]:
    """Accuracy and mean cross-entropy of the saved weights on ``split`` (single process, CPU)."""
    state = load_weights(weights_path, expected_sha256)
    model = task.build_model()
    model.load_state_dict(state["model"])
    dataset = task.dataset(split, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, generator=dataloader_generator(task.cfg.seed, "eval", split))
    sums = task.evaluate(model, loader, torch.device("cpu"))
    return {
        "acc": sums["correct"] / sums["seen"],
        "loss": sums["loss_sum"] / sums["seen"],
        "chance": 1.0 / len(dataset.class_names),
        "samples": sums["seen"],
    }
