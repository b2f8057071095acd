"""Moving digits: real handwritten digits (scikit-learn's copy of UCI optdigits) bouncing in a frame.

The 1,797 8x8 source images are partitioned into train/val/test pools first, so no
digit image appears in two splits; the label is the class of the first digit.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from usam.config.schema import DataConfig
from usam.data.imageops import interp_matrix
from usam.data.motion import bounce_path, unit
from usam.data.videoset import SPLITS, VideoSet, split_sizes
from usam.errors import DataError
from usam.seeding import derive_seed

LABEL_NAMES = [str(d) for d in range(10)]


@lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digit images (values 0..16, float64 (N, 8, 8)) and their classes; ships with sklearn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images, dtype=np.float64)
    images.setflags(write=False)
    target = np.asarray(d.target, dtype=np.int64)
    target.setflags(write=False)
    return images, target


def source_pools(data_seed: int, shares: dict[str, float]) -> dict[str, np.ndarray]:
    """Disjoint source-image indices per split (a seeded permutation cut by ``shares``)."""
    n = len(source_digits()[1])
    rng = np.random.default_rng(derive_seed(data_seed, "moving_digits", "source_split"))
    order = rng.permutation(n)
    sizes, pools, start = split_sizes(shares, n), {}, 0
    for split in SPLITS:
        pools[split] = np.sort(order[start : start + sizes[split]])
        start += sizes[split]
    return pools


def digit_sprite(image: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (0..16) upscaled bilinearly to (size, size), as uint8 0..255.

    Upscaling only (digit_size >= 8), where bilinear is already alias-free.
    """
    m = interp_matrix(image.shape[0], size)
    up = m @ image @ m.T
    return np.clip(np.rint(up * (255.0 / 16.0)), 0, 255).astype(np.uint8)


def _caption(classes: list[int], speeds: list[float], mid: float) -> str:
    pace = "fast" if speeds[0] >= mid else "slow"
    text = f"digit {classes[0]} bouncing {pace}"
    others = [str(c) for c in classes[1:]]
    if len(others) == 1:
        text += f" with digit {others[0]}"
    elif others:
        text += f" with digits {', '.join(others[:-1])} and {others[-1]}"
    return text


def generate(cfg: DataConfig, split: str, n: int, rng: np.random.Generator) -> VideoSet:
    """``n`` videos for ``split``, drawn from that split's source pool only."""
    md = cfg.moving_digits
    size, frame, frames = md.digit_size, cfg.frame_size, cfg.frames
    pool = source_pools(cfg.seed, md.source_split)[split]
    if len(pool) == 0:
        raise DataError(
            f"moving_digits.source_split gives split {split!r} no source digit images",
            where="config data.moving_digits.source_split",
            fix=f"give {split!r} a larger share in data.moving_digits.source_split (at least one of 1,797 images)",
        )
    images, target = source_digits()
    limit = float(frame - size)
    lo, hi = md.speed
    mid = (lo + hi) / 2
    videos = np.zeros((n, frames, frame, frame), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    captions, items = [], []
    for v in range(n):
        src = rng.choice(pool, size=md.digits_per_video)
        starts = rng.uniform(0.0, limit, size=(md.digits_per_video, 2))
        speeds = rng.uniform(lo, hi, size=md.digits_per_video)
        angles = rng.uniform(0.0, 2 * np.pi, size=md.digits_per_video)
        classes, paths = [], []
        for k in range(md.digits_per_video):
            sprite = digit_sprite(images[src[k]], size)
            steps = np.tile(unit(angles[k]) * speeds[k], (frames - 1, 1))
            path = np.rint(bounce_path(starts[k], steps, limit)).astype(int)
            for t, (x, y) in enumerate(path):
                region = videos[v, t, y : y + size, x : x + size]
                np.maximum(region, sprite, out=region)
            classes.append(int(target[src[k]]))
            paths.append(path.tolist())
        labels[v] = classes[0]
        captions.append(_caption(classes, speeds.tolist(), mid))
        items.append(
            {
                "digit_classes": classes,
                "source_indices": [int(i) for i in src],
                "speeds": [round(float(s), 6) for s in speeds],
                "positions": paths,  # per digit, per frame: [x, y] of the sprite's top-left corner
            }
        )
    rgb = np.repeat(videos[..., None], 3, axis=-1)
    return VideoSet(rgb, labels, captions, list(LABEL_NAMES), items)
