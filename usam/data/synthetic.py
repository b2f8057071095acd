"""The synthetic generators by name; each split draws from its own derived seed."""

from __future__ import annotations

import numpy as np

from usam.config.schema import DataConfig
from usam.data import bouncing_shapes, moving_digits
from usam.data.videoset import SPLITS, VideoSet
from usam.errors import DataError
from usam.seeding import derive_seed

GENERATORS = {"moving_digits": moving_digits.generate, "bouncing_shapes": bouncing_shapes.generate}


def generate_split(cfg: DataConfig, name: str, split: str, n: int | None = None) -> VideoSet:
    """Videos of one split of a synthetic dataset: same config and seed, same bytes.

    ``n`` defaults to ``cfg.num_videos.<split>``; the RNG is seeded with
    ``derive_seed(cfg.seed, name, split)`` so splits are independent of each other.
    """
    if name not in GENERATORS:
        raise DataError(
            f"{name!r} is not a synthetic dataset",
            where="data.build / data.name",
            fix=f"use one of {sorted(GENERATORS)}",
        )
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", where=f"dataset {name}", fix=f"use one of {list(SPLITS)}")
    count = getattr(cfg.num_videos, split) if n is None else n
    rng = np.random.default_rng(derive_seed(cfg.seed, name, split))
    return GENERATORS[name](cfg, split, count, rng)


def generate_moving_digits(cfg: DataConfig, split: str, n: int | None = None) -> VideoSet:
    """Moving-digits videos of ``split`` (see :mod:`usam.data.moving_digits`)."""
    return generate_split(cfg, "moving_digits", split, n)


def generate_bouncing_shapes(cfg: DataConfig, split: str, n: int | None = None) -> VideoSet:
    """Bouncing-shapes videos of ``split`` (see :mod:`usam.data.bouncing_shapes`)."""
    return generate_split(cfg, "bouncing_shapes", split, n)
