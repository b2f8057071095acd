"""Quality during training: a generator's samples scored every few epochs, so a run's curve shows quality.

``QualityCheck`` is a training hook the generator stages hand to ``fit`` (``eval.every_epochs``; 0: off):
after every ``every``-th epoch and the last, rank 0 samples ``eval.quality_samples`` videos (classes in
turn, a fixed sampling seed) from the model as it is and scores them against the dataset's **val** split
with the evaluation suite's frame evaluator: FID-domain and the share of samples classified as their class.
The scores join the epoch's validation metrics (``val_fid_domain``, ``val_class_acc``: MLflow's
``val/fid_domain`` and ``val/class_acc``, beside ``val/loss``). The sampler settings are the model's
configured ones (the settings chosen on val come later, from the trained weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from usam.artifacts.layout import Weights
from usam.artifacts.sampling import classify_frames
from usam.eval.fidelity import fidelity, frames_of, register_domain_extractor
from usam.eval.generators import FAMILIES, TrainedGenerator
from usam.train.hooks import HookBase

QUALITY_SEED = 7  # one sampling stream for every check of every run: curves compare the weights, not the noise


@dataclass
class QualityCheck(HookBase):
    """Samples of ``model_name`` against the val videos in ``val_videos`` (a prepared split's videos.npy), scored
    with the frame evaluator ``frame``; plain values only, so it pickles to a Ray Train worker."""

    model_name: str
    val_videos: Path
    frame: Weights
    every: int
    samples: int

    def after_epoch(self) -> None:
        t = self.trainer
        epoch = t.progress.epoch
        last = t.done or epoch >= t.cfg.epochs
        if t.session.rank != 0 or self.every <= 0 or not (epoch % self.every == 0 or last):
            return
        t.val.update(self.scores(t.task, t.bare))

    def scores(self, task, model: torch.nn.Module) -> dict[str, float]:
        real = torch.from_numpy(np.load(self.val_videos)).permute(0, 4, 1, 2, 3)
        family = FAMILIES.get(self.model_name, TrainedGenerator)
        was_training = model.training
        model.eval()
        try:
            gen = family(self.model_name, task, model, "")
            classes = torch.arange(self.samples) % len(gen.class_names)
            fake = gen.sample(classes, QUALITY_SEED, batch_size=min(self.samples, 64))
        finally:
            model.train(was_training)
        extractor = register_domain_extractor("frame", self.frame.path, self.frame.sha256, task.normalize)
        kid = min(50, self.samples, len(real))
        fid = fidelity(frames_of(real), frames_of(fake), extractor, label="domain", kid_subset=kid, isc=False,
                       prc=False)["fid_domain"]
        predicted = classify_frames(fake, self.frame.path, self.frame.sha256, task.normalize)
        return {"val_fid_domain": float(fid), "val_class_acc": float((predicted == classes).float().mean())}


def quality_hooks(cfg, layout, model_name: str, evaluators: Path | None = None) -> tuple:
    """The stage's hooks for ``fit``: one ``QualityCheck`` when ``eval.every_epochs`` is set and the dataset's frame
    evaluator has been trained, else none. ``evaluators``: the folder of the dataset's evaluators (default: where
    the layout keeps them)."""
    frame = layout.evaluator_weights(cfg.data.name, "frame", evaluators)
    if cfg.eval.every_epochs <= 0 or not frame.path.is_file():
        return ()
    return (QualityCheck(model_name, layout.prepared(cfg.data.name) / "val" / "videos.npy", frame,
                         cfg.eval.every_epochs, cfg.eval.quality_samples),)
