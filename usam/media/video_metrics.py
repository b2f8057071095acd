"""Weight-free video quality metrics on pixel values in [0, 1], per video.

Videos are (B, C, T, H, W). Every function returns one value per video so callers can
sum across batches and ranks and divide once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(recon: torch.Tensor, target: torch.Tensor, cap_db: float = 100.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (peak 1.0); identical videos get ``cap_db``."""
    mse = (recon.float() - target.float()).pow(2).flatten(1).mean(1)
    return (-10.0 * torch.log10(mse.clamp_min(10 ** (-cap_db / 10)))).clamp_max(cap_db)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(1, 1, size, size)


def ssim(recon: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004: Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03),
    averaged over channels, frames and the valid window positions."""
    b, c, t, h, w = target.shape
    size = min(window, h, w)
    x = recon.float().transpose(1, 2).reshape(b * t * c, 1, h, w)
    y = target.float().transpose(1, 2).reshape(b * t * c, 1, h, w)
    g = _gaussian_window(size, sigma, x.device, x.dtype)
    mu_x, mu_y = F.conv2d(x, g), F.conv2d(y, g)
    var_x = F.conv2d(x * x, g) - mu_x**2
    var_y = F.conv2d(y * y, g) - mu_y**2
    cov = F.conv2d(x * y, g) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.reshape(b, -1).mean(1)


def flicker(video: torch.Tensor) -> torch.Tensor:
    """VBench temporal flickering, (255 - mean |frame_t - frame_t+1|) / 255: 1.0 for a still video.

    Raw frames, no motion compensation: on moving content it measures the motion as much as any flicker
    (dimming alternate frames of moving digits can raise it). The evaluation's flicker figure is the
    motion-compensated one, :func:`usam.eval.temporal.motion_compensated_flicker`."""
    if video.shape[2] < 2:
        return torch.ones(video.shape[0], device=video.device)
    return 1.0 - (video[:, :, 1:] - video[:, :, :-1]).abs().flatten(1).mean(1)


def temporal_change_error(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |(recon_t+1 - recon_t) - (target_t+1 - target_t)|: 0 when the motion is reproduced exactly,
    whatever the per-frame error. The temporal-consistency loss, and a metric."""
    if target.shape[2] < 2:
        return torch.zeros(target.shape[0], device=target.device)
    d_recon = recon[:, :, 1:] - recon[:, :, :-1]
    d_target = target[:, :, 1:] - target[:, :, :-1]
    return (d_recon - d_target).abs().flatten(1).mean(1)
