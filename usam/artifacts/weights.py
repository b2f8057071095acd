"""Weights on disk, checked by sha256 before torch ever reads them (and then only with ``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path

import torch

from usam.errors import CheckpointError, UsamError
from usam.files import sha256_file


def verified_file(path: Path, sha256: str | None, what: str = "weights file", fix: str = "train the model first") -> Path:
    """``path``, after checking it exists and (when ``sha256`` is given) has that sha256."""
    path = Path(path)
    if not path.is_file():
        raise UsamError(f"{what} not found", where=str(path), fix=fix)
    if sha256:
        actual = sha256_file(path)
        if actual != sha256:
            raise CheckpointError(
                f"{what} {path.name} does not match its recorded sha256 (has {actual[:12]}..., expected {sha256[:12]}...)",
                where=str(path), fix="the file changed since it was recorded: restore it, or re-run what wrote it")
    return path


def load_weights(path: Path, sha256: str | None = None, *, what: str = "weights file",
                 fix: str = "train the model first") -> dict:
    """A checked weights file, loaded on the CPU with ``weights_only=True``; an unreadable file is one clear error."""
    verified_file(path, sha256, what, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise UsamError(f"cannot read {what}: {type(exc).__name__}", where=str(path), fix=fix) from None
