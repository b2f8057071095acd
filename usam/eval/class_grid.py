"""The per-class sample grid of a trained generator and its class accuracy: what the USAM and baseline
stages and every sweep trial show and score, so the three read the same numbers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from usam.artifacts.layout import Weights
from usam.artifacts.sampling import classify_frames
from usam.config import Config
from usam.eval.generators import TrainedGenerator
from usam.media.panels import write_grid


def class_grid(gen: TrainedGenerator, cfg: Config, folder: Path, client, run_id: str,
               frame_evaluator: Callable[[], Weights], *, mp4: bool = True) -> dict[str, float]:
    """Sample ``model.sampling.per_class`` videos per class (per action cue, or one unconditional row), write
    the grid into ``folder`` and log it to run ``run_id`` under ``samples``.

    For a class-conditional generator, returns the share of samples the frame evaluator assigns to the class
    they were generated for (``sample_class_acc``, also logged as ``samples/class_acc``) with chance level;
    ``frame_evaluator`` gives its weights and is asked only then. Otherwise returns no scores."""
    labels, names = gen.task.grid_conditions(cfg.model.sampling.per_class, torch.device("cpu"))
    videos = gen.sample_labels(labels, len(names) * cfg.model.sampling.per_class, cfg.seed)
    for path in write_grid(videos, folder, "samples", mp4=mp4):
        client.log_artifact(run_id, str(path), "samples")
    if "class" not in labels:
        return {}
    frame = frame_evaluator()
    predicted = classify_frames(videos, frame.path, frame.sha256, gen.task.normalize)
    accuracy = float((predicted == labels["class"]).float().mean())
    client.log_metric(run_id, "samples/class_acc", accuracy)
    return {"sample_class_acc": accuracy, "chance": 1.0 / len(names)}
