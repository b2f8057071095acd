"""Anti-aliased shape rasterizing and colours for the bouncing-shapes generator.

Coverage is estimated by supersampling each pixel, so sub-pixel motion stays visible.
"""

from __future__ import annotations

import colorsys

import numpy as np

SUPERSAMPLE = 4  # samples per pixel side used for anti-aliasing (1: hard edges)

# (upper hue bound in degrees, colour name)
_HUE_NAMES = [
    (15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"),
    (255, "blue"), (290, "purple"), (345, "magenta"), (361, "red"),
]


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour in 0..255 (float) from hue/saturation/value in [0, 1]."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def hue_name(h: float) -> str:
    deg = (h % 1.0) * 360.0
    return next(name for bound, name in _HUE_NAMES if deg < bound)


def _inside(kind: str, u: np.ndarray, w: np.ndarray, size: float) -> np.ndarray:
    """Whether shape-local points (u right, w down, origin at the box's top-left) are inside."""
    if kind == "square":
        return (u >= 0) & (u < size) & (w >= 0) & (w < size)
    if kind == "circle":
        r = size / 2.0
        return (u - r) ** 2 + (w - r) ** 2 <= r * r
    if kind == "triangle":  # apex at top centre, base along the bottom edge
        return (w >= 0) & (w <= size) & (np.abs(u - size / 2.0) <= w / 2.0)
    raise ValueError(f"unknown shape {kind!r}")


def draw(canvas: np.ndarray, kind: str, x: float, y: float, size: int, color: np.ndarray) -> None:
    """Alpha-composite a shape whose bounding box starts at (x, y) onto a float (H, W, 3) canvas in place."""
    h, w = canvas.shape[:2]
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + size)), w), min(int(np.ceil(y + size)), h)
    if x1 <= x0 or y1 <= y0:
        return
    offs = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    us = (np.arange(x0, x1)[:, None] + offs[None, :]).reshape(-1) - x
    ws = (np.arange(y0, y1)[:, None] + offs[None, :]).reshape(-1) - y
    inside = _inside(kind, us[None, :], ws[:, None], float(size))
    alpha = inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - alpha
    region += alpha * color
