"""Checkpoints: written atomically (temp file + rename), each file listed with its sha256.

A checkpoint folder holds ``state.pt`` (rank 0: model, optimizer, scheduler, scaler, EMA,
progress), ``rank<r>.pt`` (every rank: its RNG states) and ``checksums_rank<r>.json``.
Reading verifies every checksum first and loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam.errors import CheckpointError
from usam.files import sha256_file

STATE = "state.pt"


def atomic_torch_save(obj: Any, path: Path) -> str:
    """torch.save to a temp sibling, fsync, rename over ``path``; returns the file's sha256."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return sha256_file(path)


def state_digest(state: dict) -> str:
    """sha256 over a state dict's tensors in key order: equal digests, bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict:
    """Every RNG this process draws from (numpy's state as tensors, so weights_only loading accepts it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    """random.setstate wants tuples; a round trip through torch.save may give lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def write(folder: Path, rank: int, *, shared: dict | None, local: dict) -> None:
    """Write this rank's part of a checkpoint into ``folder``."""
    folder = Path(folder)
    sums = {f"rank{rank}.pt": atomic_torch_save(local, folder / f"rank{rank}.pt")}
    if shared is not None:
        sums[STATE] = atomic_torch_save(shared, folder / STATE)
    (folder / f"checksums_rank{rank}.json").write_text(json.dumps(sums, indent=1, sort_keys=True))


def verify(folder: Path) -> dict[str, str]:
    """Check every file against its recorded sha256; a CheckpointError names the first that differs."""
    folder = Path(folder)
    sums: dict[str, str] = {}
    for listing in sorted(folder.glob("checksums_rank*.json")):
        sums.update(json.loads(listing.read_text()))
    if STATE not in sums:
        raise CheckpointError(
            f"checkpoint {folder} has no {STATE} listed", where=str(folder),
            fix="it is incomplete: resume from an earlier checkpoint or start a new run",
        )
    for name, expected in sorted(sums.items()):
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            raise CheckpointError(
                f"checkpoint file {name} is missing or its sha256 does not match the record",
                where=str(path), fix="the checkpoint is corrupt: resume from an earlier one or start a new run",
            )
    return sums


def read(folder: Path, rank: int) -> tuple[dict, dict | None]:
    """(shared state, this rank's local state or None when the world size changed), verified."""
    verify(folder)
    shared = torch.load(Path(folder) / STATE, map_location="cpu", weights_only=True)
    local_path = Path(folder) / f"rank{rank}.pt"
    local = torch.load(local_path, map_location="cpu", weights_only=True) if local_path.is_file() else None
    return shared, local
