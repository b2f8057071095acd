"""Resampling shared by the generators, the video folder loader and the preprocess stage.

PIL's resize is antialiased when shrinking and deterministic, so the same input gives
the same bytes on every machine.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear resampling weights (n_out, n_in), half-pixel centres (for upscaling small arrays).

    Weights are rounded to multiples of 1/256, so products with small integers are exact in
    float64 and the result does not depend on the BLAS summation order of the machine.
    """
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.round((x - lo) * 256.0) / 256.0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - w)
    np.add.at(m, (np.arange(n_out), hi), w)
    return m


def resize_shorter_center_crop(frame: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (crop, crop, 3): shorter side to ``resize`` (antialiased bilinear), then a centre crop."""
    h, w = frame.shape[:2]
    scale = resize / min(h, w)
    nh, nw = max(resize, int(round(h * scale))), max(resize, int(round(w * scale)))
    if (nh, nw) != (h, w):
        frame = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.Resampling.BILINEAR))
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return np.ascontiguousarray(frame[top : top + crop, left : left + crop])
