"""Training-time clip augmentation with an explicit torch.Generator (never the global RNG).

Each random parameter is drawn once per clip and applied to every frame alike, so the
augmented clip is still a coherent video (no per-frame flicker or jitter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from usam.config.schema import AugmentConfig
from usam.errors import DataError

_GRAY = (0.299, 0.587, 0.114)


def _gray(clip: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=clip.dtype).view(1, 3, 1, 1)
    return (clip * w).sum(1, keepdim=True)


class _Draw:
    """Uniform draws from one generator."""

    def __init__(self, generator: torch.Generator):
        self.g = generator

    def rand(self) -> float:
        return float(torch.rand((), generator=self.g, dtype=torch.float64))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.rand()

    def randint(self, lo: int, hi: int) -> int:
        """Integer in [lo, hi] inclusive."""
        return int(torch.randint(lo, hi + 1, (), generator=self.g))


def sample_frames(cfg: AugmentConfig, frames: int, draw: _Draw) -> dict:
    """Stride (clamped to fit), start and direction of the clip; always clip_frames (or all) frames."""
    n_out = cfg.clip_frames or frames
    if n_out > frames:
        raise DataError(
            f"preprocess.augment.clip_frames = {n_out} exceeds the {frames} frames per video",
            where="config preprocess.augment.clip_frames",
            fix=f"set preprocess.augment.clip_frames <= {frames} (or null), or raise data.frames",
        )
    drawn = cfg.frame_strides[draw.randint(0, len(cfg.frame_strides) - 1)]
    stride = max(1, min(drawn, (frames - 1) // (n_out - 1) if n_out > 1 else drawn))
    start = draw.randint(0, frames - ((n_out - 1) * stride + 1))
    reverse = draw.rand() < cfg.reverse_p
    idx = [start + stride * k for k in range(n_out)]
    frames_out = idx[::-1] if reverse else idx
    return {"stride": stride, "stride_drawn": drawn, "start": start, "reversed": reverse, "frames": frames_out}


def augment_clip(clip: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Augment a (T, C, H, W) float clip in [0, 1]; returns the clip and the parameters drawn."""
    if not cfg.enabled:
        return clip, {"enabled": False}
    draw = _Draw(generator)
    t = sample_frames(cfg, clip.shape[0], draw)
    cj = cfg.color_jitter
    p = {
        "enabled": True,
        **t,
        "brightness": draw.uniform(1 - cj.brightness, 1 + cj.brightness),
        "contrast": draw.uniform(1 - cj.contrast, 1 + cj.contrast),
        "saturation": draw.uniform(1 - cj.saturation, 1 + cj.saturation),
        "hue": draw.uniform(-cj.hue, cj.hue),
        "hflip": draw.rand() < cfg.hflip_p,
        "vflip": draw.rand() < cfg.vflip_p,
        "angle": draw.uniform(-cfg.rotation_deg, cfg.rotation_deg),
        "crop_offset": [draw.randint(0, 2 * cfg.random_crop_padding), draw.randint(0, 2 * cfg.random_crop_padding)],
    }
    x = clip[torch.tensor(p["frames"])]
    rgb = x.shape[1] == 3
    if cj.brightness:
        x = (x * p["brightness"]).clamp(0, 1)
    if cj.contrast:  # one mean for the whole clip, so every frame gets the same mapping
        m = (_gray(x) if rgb else x).mean()
        x = ((x - m) * p["contrast"] + m).clamp(0, 1)
    if cj.saturation and rgb:
        g = _gray(x)
        x = ((x - g) * p["saturation"] + g).clamp(0, 1)
    if cj.hue and rgb:
        from torchvision.transforms.v2 import functional as TF  # torchvision costs seconds to import: only when used

        x = TF.adjust_hue(x, p["hue"])
    if p["hflip"]:
        x = x.flip(-1)
    if p["vflip"]:
        x = x.flip(-2)
    if cfg.rotation_deg:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        x = TF.rotate(x, p["angle"], interpolation=InterpolationMode.BILINEAR)
    pad = cfg.random_crop_padding
    if pad:
        h, w = x.shape[-2:]
        mode = "reflect" if pad < min(h, w) else "constant"
        x = F.pad(x, (pad, pad, pad, pad), mode=mode)
        oy, ox = p["crop_offset"]
        x = x[..., oy : oy + h, ox : ox + w]
    return x.contiguous(), p
