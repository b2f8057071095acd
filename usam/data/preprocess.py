"""The DVC ``preprocess`` stage: the seed's offline resize + centre crop, plus normalization statistics.

Frames stay uint8 in the dataset layout; normalization is applied at load time from
``preprocess.json``, which records every parameter and the input/output hashes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from usam.config.schema import Config
from usam.data.imageops import resize_shorter_center_crop
from usam.data.store import MANIFEST, read_manifest, split_order, verify_files, write_json, write_split
from usam.errors import DataError
from usam.files import atomic_dir, sha256_file

PREPROCESS_JSON = "preprocess.json"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
MIN_STD = 1e-3  # floor for dataset std so a constant channel cannot divide by zero


def _resize_videos(videos: np.ndarray, resize: int, crop: int) -> np.ndarray:
    n, t = videos.shape[:2]
    out = np.empty((n, t, crop, crop, 3), dtype=np.uint8)
    for i in range(n):
        clip = np.asarray(videos[i])
        for j in range(t):
            out[i, j] = resize_shorter_center_crop(clip[j], resize, crop)
    return out


def channel_stats(videos: np.ndarray) -> dict:
    """Per-channel mean/std in [0, 1] units, from exact integer sums (machine-independent)."""
    s = np.zeros(3, dtype=np.int64)
    s2 = np.zeros(3, dtype=np.int64)
    for clip in videos:
        px = clip.reshape(-1, 3).astype(np.int64)
        s += px.sum(0)
        s2 += (px * px).sum(0)
    count = int(videos.shape[0] * np.prod(videos.shape[1:4]))
    mean = [float(v) / (count * 255.0) for v in s]
    var = [float(v) / (count * 255.0**2) - m * m for v, m in zip(s2, mean)]
    return {"mean": mean, "std": [max(math.sqrt(max(v, 0.0)), MIN_STD) for v in var], "pixels": count}


def normalization_modes(train_stats: dict) -> dict:
    """Mean/std for every normalize.mode (x_norm = (x - mean) / std, x in [0, 1])."""
    return {
        "imagenet": dict(IMAGENET),
        "dataset": {"mean": train_stats["mean"], "std": train_stats["std"]},
        "half": {"mean": [0.5] * 3, "std": [0.5] * 3},
        "none": {"mean": [0.0] * 3, "std": [1.0] * 3},
    }


def preprocess_dataset(cfg: Config, raw_dir: Path, out_dir: Path) -> dict:
    """Resize/crop every split of ``raw_dir`` into ``out_dir`` (atomically); returns the preprocess.json dict."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not (raw_dir / MANIFEST).is_file():
        raise DataError(
            f"raw dataset {str(raw_dir)!r} not found",
            where=str(raw_dir),
            fix="build it first: `dvc repro data` (or `usam data build`)",
        )
    input_hashes = verify_files(raw_dir)  # refuse tampered input: outputs must trace to known bytes
    manifest = read_manifest(raw_dir)
    if "train" not in manifest["splits"]:
        where = str(raw_dir / MANIFEST)
        raise DataError("raw dataset has no train split", where=where, fix="rebuild it with `dvc repro data`")
    p = cfg.preprocess
    with atomic_dir(out_dir) as tmp:
        splits, stats = {}, None
        for split in split_order(manifest["splits"]):
            src = raw_dir / split
            videos = _resize_videos(np.load(src / "videos.npy", mmap_mode="r"), p.resize, p.crop_size)
            labels = np.load(src / "labels.npy")
            splits[split] = write_split(tmp / split, videos, labels, (src / "meta.json").read_bytes())
            if split == "train":
                stats = channel_stats(videos)
            del videos
        modes = normalization_modes(stats)
        record = {
            "params": dataclasses.asdict(p),
            "frame_size": p.crop_size,
            "normalization": {"mode": p.normalize.mode, **modes[p.normalize.mode]},
            "modes": modes,
            "train_stats": stats,
            "input": {"dataset": manifest.get("dataset"), "version": manifest.get("version"), "splits": input_hashes},
            "output": {"splits": {s: v["content_sha256"] for s, v in splits.items()}},
        }
        write_json(tmp / PREPROCESS_JSON, record)
        write_json(
            tmp / MANIFEST,
            {
                "dataset": manifest.get("dataset"),
                "version": manifest.get("version"),
                "format": manifest.get("format", 1),
                "label_names": manifest.get("label_names", []),
                "preprocessed": True,
                "splits": splits,
                "files": {PREPROCESS_JSON: sha256_file(tmp / PREPROCESS_JSON)},
            },
        )
    return record
