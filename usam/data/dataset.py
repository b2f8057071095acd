"""A torch Dataset over one prepared split (``<out>/<split>`` of the preprocess stage).

Augmentation seeds come from (seed, epoch, index) only, so a sample is the same with
any number of DataLoader workers and in any order. Videos are memory-mapped lazily in
each process (a memmap pickled to a worker would be copied whole).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from usam.config.schema import PreprocessConfig
from usam.data.augment import augment_clip
from usam.data.preprocess import PREPROCESS_JSON
from usam.errors import DataError
from usam.seeding import derive_seed

REPREP = "run `dvc repro preprocess` (or `usam data build`) to (re)create it"


def stats_tensors(stats: dict, shape: tuple[int, ...], device: torch.device | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalization's per-channel mean and std as float32 tensors viewed as ``shape`` (e.g. ``(1, -1, 1, 1, 1)``
    for (B, C, T, H, W)), so every (de)normalization of every layer broadcasts the same numbers."""
    mean = torch.tensor(stats["mean"], dtype=torch.float32, device=device).view(shape)
    std = torch.tensor(stats["std"], dtype=torch.float32, device=device).view(shape)
    return mean, std


def denormalize(video: torch.Tensor, stats: dict) -> torch.Tensor:
    """Undo the normalization of a (..., C, H, W) tensor and clamp to [0, 1] for display."""
    mean, std = stats_tensors(stats, (-1, 1, 1))
    return (video * std + mean).clamp(0, 1)


class VideoDataset(torch.utils.data.Dataset):
    """Items: {"video": float32 (T, C, H, W) normalized, "label": int64 tensor, "index": i}."""

    def __init__(
        self, split_dir: Path, preprocess_cfg: PreprocessConfig, *, train: bool, seed: int,
        labels: np.ndarray | None = None,
    ):
        """``labels`` replaces labels.npy, e.g. a per-frame target derived from meta.json."""
        self.split_dir = Path(split_dir)
        self.cfg = preprocess_cfg
        self.train = train
        self.seed = seed
        self.epoch = 0
        self._videos = None
        record = self._read_record()
        mode = preprocess_cfg.normalize.mode
        try:
            chosen = record["modes"][mode]
            self.stats = {"mode": mode, "mean": list(chosen["mean"]), "std": list(chosen["std"])}
        except (KeyError, TypeError):
            raise DataError(
                f"{PREPROCESS_JSON} has no statistics for normalize.mode {mode!r}",
                where=str(self.split_dir.parent / PREPROCESS_JSON),
                fix=REPREP,
            ) from None
        self._mean, self._std = stats_tensors(self.stats, (-1, 1, 1))
        self.labels = self._load("labels.npy", mmap=False) if labels is None else np.asarray(labels, np.int64)
        videos = self._load("videos.npy", mmap=True)
        if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3 or len(videos) != len(self.labels):
            raise DataError(
                f"videos.npy has shape {videos.shape} {videos.dtype}, "
                f"expected uint8 (N={len(self.labels)}, T, H, W, 3)",
                where=str(self.split_dir),
                fix=REPREP,
            )
        if videos.shape[2:4] != (preprocess_cfg.crop_size, preprocess_cfg.crop_size):
            raise DataError(
                f"frames are {videos.shape[2]}x{videos.shape[3]} but preprocess.crop_size = {preprocess_cfg.crop_size}",
                where=str(self.split_dir),
                fix="the preprocessed data is stale: " + REPREP,
            )
        self.shape = tuple(videos.shape)
        self.label_names = self._label_names()

    def _read_record(self) -> dict:
        path = self.split_dir.parent / PREPROCESS_JSON
        if not self.split_dir.is_dir() or not path.is_file():
            raise DataError(f"no preprocessed split at {str(self.split_dir)!r}", where=str(path), fix=REPREP)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise DataError(f"{PREPROCESS_JSON} is corrupt", where=str(path), fix=REPREP) from None

    def meta(self) -> dict:
        """The split's meta.json: captions and per-video metadata."""
        try:
            return json.loads((self.split_dir / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise DataError("meta.json is missing or corrupt", where=str(self.split_dir / "meta.json"), fix=REPREP) from None

    def _label_names(self) -> list[str]:
        try:
            return json.loads((self.split_dir.parent / "manifest.json").read_text(encoding="utf-8"))["label_names"]
        except (OSError, ValueError, KeyError):
            return [str(i) for i in range(int(self.labels.max()) + 1 if len(self.labels) else 0)]

    def _load(self, name: str, *, mmap: bool) -> np.ndarray:
        path = self.split_dir / name
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {name} ({type(exc).__name__}: {exc})", where=str(path), fix=REPREP) from None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_videos"] = None  # reopen the memmap in the worker instead of pickling its data
        return state

    @property
    def videos(self) -> np.ndarray:
        if self._videos is None:
            self._videos = self._load("videos.npy", mmap=True)
        return self._videos

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (call before each epoch; workers see it on their next iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        clip = torch.from_numpy(np.array(self.videos[i])).permute(0, 3, 1, 2).float().div_(255.0)
        if self.train and self.cfg.augment.enabled:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "augment", self.epoch, i))
            clip, _ = augment_clip(clip, self.cfg.augment, g)
        video = (clip - self._mean) / self._std
        return {"video": video, "label": torch.tensor(int(self.labels[i]), dtype=torch.int64), "index": i}
