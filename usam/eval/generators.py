"""Trained generators, whatever their family, behind one interface: sample videos for given classes.

``load_generator`` rebuilds a model saved by the ``usam`` or ``baseline`` stage (weights checked
by sha256, task name checked) with its task, so USAM and the four baselines are sampled, timed
and scored by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from usam.artifacts.layout import Inputs, Layout
from usam.artifacts.weights import load_weights
from usam.config import Config
from usam.errors import UsamError
from usam.models import parameter_count
from usam.track.provenance import sha256_file
from usam.train.tasks import make_task


@dataclass
class TrainedGenerator:
    name: str
    task: object
    model: torch.nn.Module
    sha256: str

    @property
    def class_names(self) -> list[str]:
        return self.task.class_names()

    @property
    def parameters(self) -> int:
        return parameter_count(self.model)

    @torch.no_grad()
    def sample(self, classes: torch.Tensor, seed: int, batch_size: int = 64) -> torch.Tensor:
        """Videos (N, 3, T, H, W) in [0, 1] for ``classes`` (N,), generated in batches from one seeded stream."""
        generator = torch.Generator().manual_seed(seed)
        device = torch.device("cpu")
        out = []
        for lo in range(0, classes.shape[0], batch_size):
            chunk = classes[lo:lo + batch_size]
            out.append(self.task.sample(self.model, self.condition(chunk), chunk.shape[0], device, generator))
        return torch.cat(out)

    def condition(self, classes: torch.Tensor) -> dict:
        if self.name == "usam":
            cond = self.model.null_condition(classes.shape[0], torch.device("cpu"))
            if "class" in cond:
                cond["class"] = classes
            return cond
        return {"class": classes}


def load_generator(name: str, cfg: Config, layout: Layout, weights: Path, sha256: str | None,
                   inputs: Inputs | None = None) -> TrainedGenerator:
    """The generator ``name`` trained on ``cfg.data.name``, from its exported weights; ``inputs``: the artifacts
    it was trained on, when not the ones ``layout`` keeps."""

    state = load_weights(weights, sha256)
    if state.get("task") != name:
        raise UsamError(f"{Path(weights).name} holds a {state.get('task')!r} model, not {name!r}", where=str(weights),
                        fix=f"pass the weights the `{'usam' if name == 'usam' else 'baseline'}` stage wrote for {name}")
    task = make_task(name, cfg, layout, inputs)
    model = task.build_model()
    model.load_state_dict(state["model"])

    return TrainedGenerator(name, task, model.eval(), sha256 or sha256_file(weights))
