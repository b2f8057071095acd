"""Where every stage's inputs and outputs live: the one place that knows the artifact tree.

``dvc.yaml`` passes these paths to the stages (a test checks that the two agree), the stages hand
the tasks the artifacts they train on (``Weights``), and a Tune trial that trains its own tokenizer
hands that one over instead: no task builds a path from the project root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from usam.config.schema import Config
from usam.paths import resolve


def _family(model: str) -> Path:
    return Path("usam") if model == "usam" else Path("baselines", model)


@dataclass(frozen=True)
class Weights:
    """A weights file another stage wrote and the sha256 that stage recorded (None: none recorded, not checked).

    ``ref`` is how exported metadata names the file: project-relative, so a checkout elsewhere finds it."""

    path: Path
    sha256: str | None
    ref: str


@dataclass(frozen=True)
class Inputs:
    """The artifacts a task trains on: a generator's frozen tokenizer, the tokenizer's perceptual networks."""

    tokenizer: Weights
    frame_evaluator: Weights
    lpips: Path | None


@dataclass(frozen=True)
class Layout:
    """The artifact tree of the project at ``root`` whose datasets live in ``data_root`` (``data.root``)."""

    root: Path
    data_root: Path

    @classmethod
    def of(cls, cfg: Config, root: Path) -> Layout:
        root = Path(root).resolve()
        return cls(root, resolve(cfg.data.root, root))

    # ---- data ------------------------------------------------------------------------------------------------

    def raw(self, dataset: str) -> Path:
        return self.data_root / "raw" / dataset

    def prepared(self, dataset: str | None = None) -> Path:
        folder = self.data_root / "prepared"
        return folder / dataset if dataset else folder

    # ---- trained weights and their metrics -------------------------------------------------------------------

    def evaluators(self, dataset: str | None = None) -> Path:
        folder = self.root / "models" / "evaluators"
        return folder / dataset if dataset else folder

    def evaluator(self, dataset: str, kind: str) -> Path:
        return self.evaluators(dataset) / f"{kind}.pt"

    def evaluator_metrics(self, dataset: str) -> Path:
        return self.root / "metrics" / "evaluators" / f"{dataset}.json"

    def tokenizer_dir(self, dataset: str) -> Path:
        return self.root / "models" / "tokenizer" / dataset

    def tokenizer(self, dataset: str) -> Path:
        return self.tokenizer_dir(dataset) / "tokenizer.pt"

    def tokenizer_metrics(self, dataset: str) -> Path:
        return self.root / "metrics" / "tokenizer" / f"{dataset}.json"

    def generator_dir(self, model: str, dataset: str, seed: int) -> Path:
        """The folder of a generator trained with ``seed``: USAM's own, a baseline's under its family."""
        return self.root / "models" / _family(model) / dataset / f"seed{seed}"

    def generator(self, model: str, dataset: str, seed: int) -> Path:
        return self.generator_dir(model, dataset, seed) / f"{model}.pt"

    def generator_metrics(self, model: str, dataset: str, seed: int) -> Path:
        return self.root / "metrics" / _family(model) / dataset / f"seed{seed}.json"

    # ---- evaluation and reports ------------------------------------------------------------------------------

    def selection(self, model: str | None = None, dataset: str | None = None) -> Path:
        """The sampling settings chosen on val (with the grid that chose them): all, or one generator's."""
        folder = self.root / "metrics" / "select"
        return folder / model / f"{dataset}.json" if model and dataset else folder

    def eval(self, model: str | None = None, dataset: str | None = None, seed: int | None = None) -> Path:
        """Evaluation outputs (sample strips, training curves): all, or one trained generator's."""
        folder = self.root / "eval"
        return folder / model / dataset / f"seed{seed}" if model and dataset and seed is not None else folder

    def eval_metrics(self, model: str | None = None, dataset: str | None = None, seed: int | None = None) -> Path:
        """Evaluation records: all (``<model>/<dataset>/seed<k>.json`` below), or one trained generator's."""
        folder = self.root / "metrics" / "eval"
        return folder / model / dataset / f"seed{seed}.json" if model and dataset and seed is not None else folder

    def metrics(self) -> Path:
        return self.root / "metrics"

    def models(self) -> Path:
        """Every trained model's folder (evaluators, tokenizers, USAM, baselines)."""
        return self.root / "models"

    def reports(self) -> Path:
        return self.root / "reports"

    def outputs(self, *parts: str) -> Path:
        """Work no DVC stage owns: sweep and ablation studies, ``usam sample`` grids, replicas, Ray's storage."""
        return self.root.joinpath("outputs", *parts)

    # ---- what a stage recorded -------------------------------------------------------------------------------

    def ref(self, path: Path) -> str:
        """``path`` as recorded: project-relative when inside the project, else absolute."""
        path, root = Path(path).resolve(), self.root.resolve()
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def weights(self, path: Path, metrics: Path, *keys: str) -> Weights:
        """``path`` with the sha256 recorded under ``keys`` in the stage's ``metrics`` JSON (None when unreadable:
        a stage that has not run yet is reported by whoever needs the file, with the fix)."""
        try:
            entry = json.loads(Path(metrics).read_text())
            for key in keys:
                entry = entry[key]
            sha = entry["weights_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            sha = None
        return Weights(Path(path), sha, self.ref(path))

    def tokenizer_weights(self, dataset: str, folder: Path | None = None) -> Weights:
        """The tokenizer of ``dataset``, in ``folder`` (a stage's ``--tokenizer``) or where the layout keeps it."""
        path = Path(folder) / "tokenizer.pt" if folder else self.tokenizer(dataset)
        return self.weights(path, self.tokenizer_metrics(dataset))

    def evaluator_weights(self, dataset: str, kind: str, folder: Path | None = None) -> Weights:
        """The ``kind`` evaluator of ``dataset``, in ``folder`` (a stage's ``--evaluators``) or where the layout keeps it."""
        path = Path(folder) / f"{kind}.pt" if folder else self.evaluator(dataset, kind)
        return self.weights(path, self.evaluator_metrics(dataset), kind)

    def generator_weights(self, model: str, dataset: str, seed: int, folder: Path | None = None) -> Weights:
        path = Path(folder) / f"{model}.pt" if folder else self.generator(model, dataset, seed)
        return self.weights(path, self.generator_metrics(model, dataset, seed))

    def inputs(self, cfg: Config, *, tokenizers: Path | None = None, evaluators: Path | None = None) -> Inputs:
        """What the tasks on ``cfg.data.name`` train on: the tokenizer and frame evaluator in the folders a stage
        was given (default: where the layout keeps them; a configured ``domain_weights`` wins), with the
        sha256 their stages recorded."""
        name = cfg.data.name
        configured = cfg.tokenizer.loss.perceptual.domain_weights
        frame = (Weights(resolve(configured, self.root), None, configured) if configured
                 else self.evaluator_weights(name, "frame", evaluators))
        lpips = resolve(cfg.eval.lpips_weights, self.root) if cfg.eval.lpips_weights else None
        return Inputs(self.tokenizer_weights(name, tokenizers), frame, lpips)
