"""The evaluation suite's numbers for one trained generator of a study (an ablation trial), on a val sample.

``study_scores`` samples ``samples`` videos (classes in turn, one sampling seed) at the settings the comparison
chose on val for the reference model (``metrics/select/<model>/<dataset>.json``; the configured ones when the
pipeline has not chosen yet) and scores them against the dataset's **val** split with the dataset's evaluators:
``eval_fid_domain`` (frame evaluator), ``eval_fvd_domain`` (clip evaluator, when it has been trained),
``eval_class_acc`` (the share classified as the class they were sampled for) and ``eval_warping_error``
(optical-flow warping error, lower: more coherent motion). Test data stays untouched: a study chooses
between components, which is what val is for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from usam.artifacts.layout import Layout
from usam.artifacts.sampling import classify_frames
from usam.config import Config
from usam.eval.fidelity import fidelity, frames_of, register_domain_extractor
from usam.eval.select import with_settings
from usam.eval.temporal import warping_error

STUDY_SEED = 11  # one sampling stream for every trial: the variants differ in their weights, not in the noise
# a study's metrics and whether higher is better (``val_*`` from training, ``sample_class_acc`` from the class grid)
DIRECTIONS = {"eval_fid_domain": False, "eval_fvd_domain": False, "eval_class_acc": True, "eval_warping_error": False,
              "val_loss": False, "val_fid_domain": False, "val_class_acc": True, "sample_class_acc": True}
GENERATOR_ONLY = ("eval_", "sample_", "val_fid_domain", "val_class_acc")


def higher_is_better(metric: str) -> bool:
    """The direction of a study metric (unknown names: lower is better, as for a loss)."""
    return DIRECTIONS.get(metric, metric.endswith(("acc", "psnr", "ssim")))


def chosen_settings(layout: Layout, model: str, dataset: str) -> dict[str, str]:
    """The sampling settings the comparison chose on val for ``model`` on ``dataset`` (empty: none chosen yet)."""
    path = layout.selection(model, dataset)
    return json.loads(path.read_text())["chosen"] if path.is_file() else {}


def study_cfg(cfg: Config, layout: Layout, model: str) -> tuple[Config, dict[str, str]]:
    """``cfg`` at the chosen sampling settings of the reference ``model`` on ``cfg.data.name``, and those settings."""
    settings = chosen_settings(layout, model, cfg.data.name)
    return (with_settings(cfg, settings) if settings else cfg), settings


def study_scores(gen, layout: Layout, dataset: str, samples: int) -> dict[str, float]:
    """The suite's val numbers for the loaded generator ``gen`` (a ``usam.eval.generators.TrainedGenerator``)."""
    real = torch.from_numpy(np.load(layout.prepared(dataset) / "val" / "videos.npy")).permute(0, 4, 1, 2, 3)
    classes = torch.arange(samples) % len(gen.class_names)
    fake = gen.sample(classes, STUDY_SEED, batch_size=min(samples, 64))
    normalize = gen.task.normalize
    frame = layout.evaluator_weights(dataset, "frame")
    kid = min(50, samples, len(real))
    frame_ext = register_domain_extractor("frame", frame.path, frame.sha256, normalize)
    scores = {"eval_fid_domain": float(fidelity(frames_of(real), frames_of(fake), frame_ext, label="domain",
                                                kid_subset=kid, isc=False, prc=False)["fid_domain"])}
    clip = layout.evaluator_weights(dataset, "clip")
    if Path(clip.path).is_file():
        clip_ext = register_domain_extractor("clip", clip.path, clip.sha256, normalize)
        scores["eval_fvd_domain"] = float(fidelity(real, fake, clip_ext, label="clip", kid_subset=min(kid, len(fake)),
                                                   isc=False, prc=False)["fid_clip"])
    predicted = classify_frames(fake, frame.path, frame.sha256, normalize)
    scores["eval_class_acc"] = float((predicted == classes).float().mean())
    scores["eval_warping_error"] = float(warping_error(fake).mean())
    return scores
