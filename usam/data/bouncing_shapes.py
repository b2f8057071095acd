"""Bouncing shapes: coloured shapes whose first shape performs a per-video action cue.

The label is the cue: initial direction (right/left/up/down) x speed profile
(speed_up/slow_down at the middle frame) -> 8 classes. Deliberately unlike moving
digits: saturated colours on non-black (solid, gradient or randomized textured)
backgrounds. Backgrounds stay darker and less saturated than shapes so the cue is
always visible in the pixels.
"""

from __future__ import annotations

import math

import numpy as np

from usam.config.schema import DataConfig
from usam.data.imageops import interp_matrix
from usam.data.motion import bounce_path, unit
from usam.data.shapes_render import draw, hsv, hue_name
from usam.data.videoset import VideoSet

DIRECTIONS = {"right": 0.0, "down": math.pi / 2, "left": math.pi, "up": -math.pi / 2}  # angles, y down
DIRECTION_ORDER = ("right", "left", "up", "down")
PROFILES = ("speed_up", "slow_down")
LABEL_NAMES = [f"{d}+{p}" for d in DIRECTION_ORDER for p in PROFILES]
BG_MAX = 200.0  # background intensities are clipped below the shapes' full brightness (255)


def change_frame(frames: int) -> int:
    """Frame index from which the cued shape moves at its changed speed."""
    return frames // 2


def _muted(rng: np.random.Generator) -> np.ndarray:
    return hsv(rng.uniform(), rng.uniform(0.25, 0.7), rng.uniform(0.3, 0.65))


def _background(rng: np.random.Generator, size: int, randomized: bool, noise: float) -> tuple[np.ndarray, dict]:
    """A float (H, W, 3) non-black background and a description of it."""
    if randomized:
        palette = np.stack([_muted(rng) for _ in range(int(rng.integers(2, 5)))])
        cells = int(rng.integers(2, 6))
        grid = palette[rng.integers(0, len(palette), size=(cells, cells))]
        m = interp_matrix(cells, size)
        bg = np.einsum("hi,ijc,wj->hwc", m, grid, m)
        bg = bg + rng.normal(0.0, noise * 255.0, size=bg.shape)
        info = {"kind": "texture", "palette": np.rint(palette).astype(int).tolist(), "cells": cells}
    elif rng.uniform() < 0.5:
        c = _muted(rng)
        bg = np.broadcast_to(c, (size, size, 3)).copy()
        info = {"kind": "solid", "palette": [np.rint(c).astype(int).tolist()]}
    else:
        c0, c1, a = _muted(rng), _muted(rng), rng.uniform(0, 2 * math.pi)
        d = unit(a)
        proj = np.arange(size)[None, :] * d[0] + np.arange(size)[:, None] * d[1]
        t = ((proj - proj.min()) / max(proj.max() - proj.min(), 1e-9))[..., None]
        bg = c0 * (1 - t) + c1 * t
        info = {"kind": "gradient", "palette": [np.rint(c).astype(int).tolist() for c in (c0, c1)]}
    return np.clip(bg, 0.0, BG_MAX), info


def _cue_steps(speed: float, angle: float, speed_up: bool, factor: float, frames: int) -> np.ndarray:
    """Per-step displacement (T-1, 2): initial speed up to the middle frame, then multiplied/divided."""
    m = change_frame(frames)
    scale = np.array([1.0 if t <= m else (factor if speed_up else 1.0 / factor) for t in range(1, frames)])
    return scale[:, None] * (unit(angle) * speed)[None, :]


def _cue_start(
    rng: np.random.Generator, steps: np.ndarray, axis: int, sign: float, limit: float, frames: int
) -> np.ndarray:
    """Start so the cued shape does not bounce on its main axis (whole video if it fits, else the first half)."""
    start = rng.uniform(0.0, limit, size=2)
    for span in (steps.shape[0], change_frame(frames)):
        need = abs(float(steps[:span, axis].sum()))
        if need <= limit:
            lo, hi = (0.0, limit - need) if sign > 0 else (need, limit)
            start[axis] = rng.uniform(lo, hi)
            break
    return start


def _shape(rng: np.random.Generator, cfg: DataConfig, cue: tuple[str, str] | None) -> dict:
    """One shape: kind, saturated colour, size and its bouncing path; ``cue`` = (direction, profile) for the first."""
    bs, frame, frames = cfg.bouncing_shapes, cfg.frame_size, cfg.frames
    kind = str(bs.shapes[int(rng.integers(len(bs.shapes)))])
    size = int(rng.integers(bs.shape_size[0], bs.shape_size[1] + 1))
    hue = rng.uniform()
    color = hsv(hue, rng.uniform(0.85, 1.0), 1.0)
    speed = rng.uniform(bs.speed[0], bs.speed[1])
    limit = float(frame - size)
    if cue is not None:
        direction, profile = cue
        jitter = math.radians(bs.direction_jitter_deg)
        angle = DIRECTIONS[direction] + rng.uniform(-jitter, jitter)
        steps = _cue_steps(speed, angle, profile == "speed_up", bs.speed_change, frames)
        axis = 0 if direction in ("right", "left") else 1
        sign = 1.0 if direction in ("right", "down") else -1.0
        start = _cue_start(rng, steps, axis, sign, limit, frames)
    else:
        steps = np.tile(unit(rng.uniform(0, 2 * math.pi)) * speed, (frames - 1, 1))
        start = rng.uniform(0.0, limit, size=2)
    path = bounce_path(start, steps, limit)
    return {
        "kind": kind,
        "color": hue_name(hue),
        "rgb": np.rint(color).astype(int).tolist(),
        "size": size,
        "speed": round(float(speed), 6),
        "positions": np.round(path, 4).tolist(),  # bounding-box top-left [x, y] per frame
        "_color": color,
        "_path": path,
    }


def generate(cfg: DataConfig, split: str, n: int, rng: np.random.Generator) -> VideoSet:
    """``n`` videos with balanced action-cue labels."""
    bs = cfg.bouncing_shapes
    frame, frames = cfg.frame_size, cfg.frames
    n_classes = len(LABEL_NAMES)  # balanced: class counts differ by at most one, in random order
    blocks = [rng.permutation(n_classes) for _ in range(-(-n // n_classes))]
    labels = np.concatenate(blocks or [np.zeros(0, int)])[:n].astype(np.int64)
    videos = np.zeros((n, frames, frame, frame, 3), dtype=np.uint8)
    captions, items = [], []
    for v in range(n):
        direction, profile = LABEL_NAMES[labels[v]].split("+")
        randomized = bool(rng.uniform() < bs.domain_randomization.p)
        bg, bg_info = _background(rng, frame, randomized, bs.domain_randomization.noise)
        shapes = [_shape(rng, cfg, (direction, profile) if k == 0 else None) for k in range(bs.shapes_per_video)]
        for t in range(frames):
            canvas = bg.copy()
            for s in shapes[::-1]:  # the cued shape is drawn last, on top
                draw(canvas, s["kind"], s["_path"][t][0], s["_path"][t][1], s["size"], s["_color"])
            videos[v, t] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        for s in shapes:
            del s["_color"], s["_path"]
        first = shapes[0]
        verb = "speeding up" if profile == "speed_up" else "slowing down"
        caption = f"{first['color']} {first['kind']} moving {direction}, {verb}"
        if len(shapes) > 1:
            caption += f", with {len(shapes) - 1} other shape" + ("s" if len(shapes) > 2 else "")
        captions.append(caption)
        items.append(
            {
                "action": LABEL_NAMES[labels[v]],
                "direction": direction,
                "profile": profile,
                "change_frame": change_frame(frames),
                "speed_change": bs.speed_change,
                "background": bg_info,
                "domain_randomized": randomized,
                "shapes": shapes,  # shapes[0] performs the cue
            }
        )
    return VideoSet(videos, labels, captions, list(LABEL_NAMES), items)
