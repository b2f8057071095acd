"""Bouncing motion shared by the synthetic generators.

Positions are computed on the unfolded straight-line path and folded back into the
box, which is an exact elastic bounce for any speed (several bounces per frame included).
"""

from __future__ import annotations

import math

import numpy as np


def fold(p: np.ndarray, limit: float) -> np.ndarray:
    """Reflect unfolded positions into [0, limit] (a triangle wave; limit 0 pins to 0)."""
    p = np.asarray(p, dtype=np.float64)
    if limit <= 0:
        return np.zeros_like(p)
    q = np.mod(p, 2.0 * limit)
    return np.where(q <= limit, q, 2.0 * limit - q)


def bounce_path(start: np.ndarray, steps: np.ndarray, limit: float) -> np.ndarray:
    """Positions (T, 2) of a point starting at ``start`` and moving by ``steps`` (T-1, 2), bouncing in [0, limit]^2."""
    unfolded = np.concatenate([np.asarray(start, float)[None], np.asarray(start, float) + np.cumsum(steps, axis=0)])
    return fold(unfolded, limit)


def unit(angle: float) -> np.ndarray:
    """(x, y) unit vector; y grows downwards as in images.

    Scalar ``math`` functions, not numpy's SIMD ones, so the bytes do not depend on the CPU.
    """
    return np.array([math.cos(angle), math.sin(angle)])
