"""Trained generators, whatever their family, behind one interface: sample videos for given labels.

``load_generator`` rebuilds a model saved by the ``usam`` or ``baseline`` stage (weights checked
by sha256, task name checked) with its task, so USAM and the four baselines are sampled, timed
and scored by the same code. What differs per family (how the model is rebuilt, how labels
become its condition) is a method of the family's generator class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from usam.artifacts.layout import Inputs, Layout
from usam.artifacts.sampling import rebuild_usam
from usam.artifacts.weights import load_weights
from usam.config import Config
from usam.errors import UsamError
from usam.models import parameter_count
from usam.track.provenance import sha256_file
from usam.train.tasks import make_task


@dataclass
class TrainedGenerator:
    """A trained baseline: rebuilt by its task, conditioned on the class label alone."""

    name: str
    task: object
    model: torch.nn.Module
    sha256: str

    stage = "baseline"  # the DVC stage that writes this family's weights

    @property
    def class_names(self) -> list[str]:
        return self.task.class_names()

    @property
    def parameters(self) -> int:
        return parameter_count(self.model)

    def sample(self, classes: torch.Tensor, seed: int, batch_size: int = 64) -> torch.Tensor:
        """Videos (N, 3, T, H, W) in [0, 1] for ``classes`` (N,)."""
        return self.sample_labels({"class": classes}, classes.shape[0], seed, batch_size)

    @torch.no_grad()
    def sample_labels(self, labels: dict[str, torch.Tensor], num: int, seed: int, batch_size: int = 64) -> torch.Tensor:
        """``num`` videos (N, 3, T, H, W) in [0, 1] for per-sample ``labels`` (``class`` and/or ``action``, (N,)
        each; none: unconditional), generated in batches from one seeded stream."""
        generator = torch.Generator().manual_seed(seed)
        device = torch.device("cpu")
        out = []
        for lo in range(0, num, batch_size):
            n = min(batch_size, num - lo)
            chunk = {key: ids[lo:lo + n] for key, ids in labels.items()}
            out.append(self.task.sample(self.model, self.condition(chunk, n), n, device, generator))
        return torch.cat(out)

    def condition(self, labels: dict[str, torch.Tensor], num: int) -> dict:
        return {"class": labels["class"]}

    @staticmethod
    def rebuild(task, state: dict) -> torch.nn.Module:
        model = task.build_model()
        model.load_state_dict(state["model"])
        return model.eval()


class USAMGenerator(TrainedGenerator):
    """USAM: rebuilt as `usam sample` rebuilds it; a label it was not trained on is left out, every other
    condition it takes is the null one."""

    stage = "usam"

    def condition(self, labels: dict[str, torch.Tensor], num: int) -> dict:
        cond = self.model.null_condition(num, torch.device("cpu"))
        cond.update({key: ids for key, ids in labels.items() if key in cond})
        return cond

    @staticmethod
    def rebuild(task, state: dict) -> torch.nn.Module:
        return rebuild_usam(state)


FAMILIES: dict[str, type[TrainedGenerator]] = {"usam": USAMGenerator}  # any other name: a baseline


def load_generator(name: str, cfg: Config, layout: Layout, weights: Path, sha256: str | None,
                   inputs: Inputs | None = None) -> TrainedGenerator:
    """The generator ``name`` trained on ``cfg.data.name``, from its exported weights; ``inputs``: the artifacts
    it was trained on, when not the ones ``layout`` keeps."""
    family = FAMILIES.get(name, TrainedGenerator)
    state = load_weights(weights, sha256)
    if state.get("task") != name:
        raise UsamError(f"{Path(weights).name} holds a {state.get('task')!r} model, not {name!r}", where=str(weights),
                        fix=f"pass the weights the `{family.stage}` stage wrote for {name}")
    task = make_task(name, cfg, layout, inputs)
    return family(name, task, family.rebuild(task, state), sha256 or sha256_file(weights))
