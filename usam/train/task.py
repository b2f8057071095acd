"""What every training task shares: the contract the loop trains against, and the checks tasks run first."""

from __future__ import annotations

from pathlib import Path

from usam.errors import DataError

SHAPE_KINDS = ("circle", "square", "triangle")


def require_splits(data_dir: Path, name: str) -> None:
    """A clear error, before any work, when a prepared split of dataset ``name`` is missing."""
    for split in ("train", "val", "test"):
        if not (data_dir / split / "videos.npy").is_file():
            raise DataError(f"no prepared {split} split for dataset {name!r}", where=str(data_dir / split),
                            fix=f"run `dvc repro preprocess@{name}` (or `usam data build`)")
