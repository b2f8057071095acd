"""The in-memory form every dataset source produces, before it is written to disk.

One type for generated and user videos keeps ``build.py`` source-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class VideoSet:
    """Videos of one split: uint8 (N, T, H, W, 3), int64 labels, one caption and metadata dict per video."""

    videos: np.ndarray
    labels: np.ndarray
    captions: list[str]
    label_names: list[str]
    items: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.videos.dtype != np.uint8 or self.videos.ndim != 5 or self.videos.shape[-1] != 3:
            raise ValueError(f"videos must be uint8 (N, T, H, W, 3), got {self.videos.dtype} {self.videos.shape}")
        if not (self.videos.shape[0] == n == len(self.captions) == len(self.items)):
            raise ValueError("videos, labels, captions and items must have the same length")
        self.videos = np.ascontiguousarray(self.videos)
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> list[int]:
        """Videos per class, indexed like ``label_names``."""
        return np.bincount(self.labels, minlength=len(self.label_names)).astype(int).tolist()


def split_sizes(shares: dict[str, float], n: int) -> dict[str, int]:
    """Cut ``n`` items into train/val/test by ``shares`` with cumulative rounding (sizes always sum to n)."""
    total = sum(shares.get(s, 0.0) for s in SPLITS) or 1.0
    bounds, acc = [], 0.0
    for s in SPLITS:
        acc += shares.get(s, 0.0) / total
        bounds.append(int(round(acc * n)))
    bounds[-1] = n
    starts = [0, *bounds[:-1]]
    return {s: b - a for s, a, b in zip(SPLITS, starts, bounds)}
