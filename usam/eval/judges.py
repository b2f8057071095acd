"""The frozen judges of every score: weights files checked by sha256, and the domain evaluators loaded from them."""

from __future__ import annotations

from pathlib import Path

import torch

from usam.errors import UsamError
from usam.models.evaluators import ClipClassifier, FrameClassifier

EVALUATOR_FIX = "run `dvc repro evaluators` (or `usam train evaluator_{kind}`) to create {name}"


def verified_file(path: Path, sha256: str | None, what: str, fix: str) -> Path:
    """``path``, after checking it exists and (when ``sha256`` is given) has that sha256."""
    from usam.track.provenance import sha256_file

    path = Path(path)
    if not path.is_file():
        raise UsamError(f"{what} not found", where=str(path), fix=fix)
    if sha256:
        actual = sha256_file(path)
        if actual != sha256:
            raise UsamError(f"{what} has sha256 {actual[:12]}..., expected {sha256[:12]}...", where=str(path),
                            fix="restore the right file or update the recorded sha256")
    return path


def verified_state(path: Path, sha256: str | None, what: str, fix: str) -> dict:
    """A checked file, loaded with ``weights_only=True``; unreadable files get the same clear error."""
    verified_file(path, sha256, what, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise UsamError(f"cannot read {what}: {type(exc).__name__}", where=str(path), fix=fix) from None


def load_evaluator(kind: str, weights: Path, sha256: str | None) -> tuple[torch.nn.Module, str]:
    """The ``frame`` or ``clip`` evaluator saved by the ``evaluators`` stage, frozen, and its weights' sha256."""
    from usam.track.provenance import sha256_file

    weights = Path(weights)
    fix = EVALUATOR_FIX.format(kind=kind, name=weights.name)
    state = verified_state(weights, sha256, f"{kind} evaluator weights", fix)
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
