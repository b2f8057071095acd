"""Trained models rebuilt from their exported weights: the frozen domain evaluators and the tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from usam.artifacts.weights import load_weights
from usam.errors import UsamError
from usam.files import sha256_file
from usam.models.evaluators import ClipClassifier, FrameClassifier
from usam.models.tokenizer import TRAINING_ONLY, SpacetimeTokenizer

EVALUATOR_FIX = "run `dvc repro evaluators` (or `usam train evaluator_{kind}`) to create {name}"


def load_evaluator(kind: str, weights: Path, sha256: str | None) -> tuple[torch.nn.Module, str]:
    """The ``frame`` or ``clip`` evaluator saved by the ``evaluators`` stage, frozen, and its weights' sha256."""
    weights = Path(weights)
    fix = EVALUATOR_FIX.format(kind=kind, name=weights.name)
    state = load_weights(weights, sha256, what=f"{kind} evaluator weights", fix=fix)
    model = state.get("model", {}) if isinstance(state, dict) else {}
    if "stem.0.weight" not in model or "head.weight" not in model:
        raise UsamError(f"{weights.name} is not a domain evaluator", where=str(weights), fix=fix)
    cls = FrameClassifier if kind == "frame" else ClipClassifier
    stem = model["stem.0.weight"]
    if (stem.ndim == 4) != (kind == "frame"):
        raise UsamError(f"{weights.name} holds a {'frame' if stem.ndim == 4 else 'clip'} evaluator, not a {kind} one",
                        where=str(weights), fix=fix)
    stages = len({k.split(".")[1] for k in model if k.startswith("blocks.")})
    net = cls(num_classes=model["head.weight"].shape[0], width=stem.shape[0], stages=stages)
    net.load_state_dict(model)
    return net.requires_grad_(False).eval(), sha256 or sha256_file(weights)


def load_tokenizer(path: Path, expected_sha256: str | None = None) -> tuple[SpacetimeTokenizer, dict]:
    """An exported tokenizer (``weights.pt`` of a tokenizer run) in eval mode, and its stored metadata."""
    state = load_weights(path, expected_sha256, what="tokenizer weights",
                         fix="run `dvc repro tokenizer` (or `usam train tokenizer`) to create it")
    if state.get("task") != "tokenizer" or "model_kwargs" not in state:
        raise UsamError(f"{Path(path).name} is not an exported tokenizer (task {state.get('task')!r})", where=str(path),
                        fix="pass the weights written by the `tokenizer` stage (models/tokenizer/<dataset>/tokenizer.pt)")
    model = SpacetimeTokenizer(**state["model_kwargs"])
    weights = {k: v for k, v in state["model"].items() if not k.startswith(TRAINING_ONLY)}
    model.load_state_dict(weights)
    return model.eval(), state
