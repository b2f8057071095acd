"""Temporal coherence of videos, weight-free and on the domain evaluator: warping error,
motion-compensated flicker and feature consistency.

Every frame pair goes through the same motion compensation: classical optical flow (OpenCV
Farneback) from frame t+1 back to frame t warps frame t onto t+1, and the residual
``warp(x_t) - x_t+1`` is read only where the flow is trusted. Occluded or disoccluded pixels fail
the forward-backward check (the flow there and back does not return near its start) and are left
out. Between two frames whose 8-bit luma is identical the flow is zero (Farneback alone returns
spurious sub-pixel flow on texture there), so a still video has a zero residual.

* Warping error: the mean absolute residual over the trusted pixels. 0 for a still video, near 0
  for a video whose motion the flow explains; changes the flow does not explain (flicker, for one)
  raise it.
* Motion-compensated flicker: 1 minus the mean absolute *local mean* of the signed residual
  (per channel, a Gaussian of ``FLICKER_SIGMA`` px over the trusted pixels), averaged over the
  trusted pixels and the frame pairs. Brightness that rises or falls between frames once the motion
  is compensated (additive, multiplicative or random-sign flicker, on still or moving content)
  lowers it, and pixel noise of random sign lowers it far less than it raises the warping error:
  it is the brightness part of the residual. 1 for a still video; a steady pan scores close to a
  still video. VBench's flicker
  (:func:`usam.media.video_metrics.flicker`) compares raw frames without motion compensation, so
  it measures motion as much as flicker: dimming alternate frames of moving digits can raise it.
* Feature consistency: the mean cosine similarity of the frame evaluator's features between
  consecutive frames (1 for a still video).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from usam.data.dataset import stats_tensors
from usam.media.video_metrics import flicker

FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=9, iterations=5, poly_n=5, poly_sigma=1.1, flags=0)
FLICKER_SIGMA = 2.0  # px: the neighbourhood whose mean brightness change counts as flicker


def _gray_u8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W) uint8 luma."""
    rgb = frame.float().clamp(0, 1)
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (luma * 255).round().to(torch.uint8).numpy()


def optical_flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Dense flow (2, H, W) in pixels such that dst(p) ~ src(p + flow(p)) (Farneback, from ``dst`` to ``src``).

    Zero where the two frames' 8-bit luma is identical: no change is no motion (Farneback itself returns
    up to about half a pixel of flow between identical textured frames)."""
    import cv2

    gray_dst, gray_src = _gray_u8(dst), _gray_u8(src)
    if np.array_equal(gray_dst, gray_src):
        return torch.zeros(2, *gray_dst.shape)
    flow = cv2.calcOpticalFlowFarneback(gray_dst, gray_src, None, **FARNEBACK)
    return torch.from_numpy(flow).permute(2, 0, 1).float()


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` (C, H, W) at p + flow(p), bilinear, borders replicated."""
    c, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    gx = (xs + flow[0]) / max(w - 1, 1) * 2 - 1
    gy = (ys + flow[1]) / max(h - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)[None]
    return F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


def occlusion_mask(forward: torch.Tensor, backward: torch.Tensor, alpha: float = 0.01, beta: float = 0.5) -> torch.Tensor:
    """(H, W) bool, True where the flow is trusted: going along ``forward`` then ``backward`` (sampled there)
    returns near the start (the usual |f + b|^2 < alpha (|f|^2 + |b|^2) + beta test)."""
    back_at = warp(backward, forward)
    gap = (forward + back_at).pow(2).sum(0)
    return gap < alpha * (forward.pow(2).sum(0) + back_at.pow(2).sum(0)) + beta


def compensated_residual(prev: torch.Tensor, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed residual ``warp(prev) - nxt`` (C, H, W), trusted-pixel mask (H, W) float) for one frame pair."""
    flow = optical_flow(prev, nxt)  # nxt(p) ~ prev(p + flow)
    back = optical_flow(nxt, prev)
    return warp(prev, flow) - nxt.float(), occlusion_mask(flow, back).float()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W), zero outside the frame."""
    radius = max(1, int(round(3 * sigma)))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(x, k.view(1, 1, -1, 1), padding=(radius, 0))


def local_brightness_change(residual: torch.Tensor, mask: torch.Tensor, sigma: float = FLICKER_SIGMA) -> torch.Tensor:
    """(C, H, W): per channel, the Gaussian-weighted mean of the signed ``residual`` over the trusted pixels
    around each pixel (normalised convolution; untrusted pixels and the outside of the frame carry no weight)."""
    weights = _gaussian_blur(mask[None, None], sigma)[0]
    summed = _gaussian_blur((residual * mask)[:, None], sigma)[:, 0]
    return summed / weights.clamp_min(1e-12)


def _pairs(video: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for j in range(video.shape[1] - 1):
        yield compensated_residual(video[:, j], video[:, j + 1])


def coherence(videos: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per video (B, 3, T, H, W in [0, 1]), from one flow computation per frame pair:
    ``warping_error`` and ``flicker_mc`` (the motion-compensated flicker), as the module docstring defines them."""
    b, _, t, _, _ = videos.shape
    out = {"warping_error": torch.zeros(b), "flicker_mc": torch.ones(b)}
    if t < 2:
        return out
    videos = videos.detach().float().cpu()
    for i in range(b):
        errors, flickers = [], []
        for residual, mask in _pairs(videos[i]):
            count = mask.sum().clamp_min(1.0)
            errors.append(float((residual.abs().mean(0) * mask).sum() / count))
            change = local_brightness_change(residual, mask).abs().mean(0)
            flickers.append(float((change * mask).sum() / count))
        out["warping_error"][i] = float(np.mean(errors))
        out["flicker_mc"][i] = 1.0 - float(np.mean(flickers))
    return out


def warping_error(videos: torch.Tensor) -> torch.Tensor:
    """Per video (B, 3, T, H, W in [0, 1]): mean over frame pairs of the occlusion-masked |warp(x_t) - x_t+1|."""
    return coherence(videos)["warping_error"]


def motion_compensated_flicker(videos: torch.Tensor) -> torch.Tensor:
    """Per video (B, 3, T, H, W in [0, 1]): 1 - the mean |local brightness change| left after motion compensation."""
    return coherence(videos)["flicker_mc"]


@torch.no_grad()
def feature_consistency(videos: torch.Tensor, net: torch.nn.Module, normalize: dict) -> torch.Tensor:
    """Per video: mean cosine similarity of the frame evaluator's features between consecutive frames."""
    b, c, t, h, w = videos.shape
    if t < 2:
        return torch.ones(b)
    mean, std = stats_tensors(normalize, (1, -1, 1, 1))
    frames = (videos.float().cpu().transpose(1, 2).reshape(b * t, c, h, w) - mean) / std
    feats = net.features(frames).view(b, t, -1)
    return F.cosine_similarity(feats[:, 1:], feats[:, :-1], dim=-1).mean(1)


def temporal_scores(videos: torch.Tensor, frame_net: torch.nn.Module, normalize: dict,
                    prefix: str = "") -> dict[str, float]:
    """The evaluation's temporal-coherence scores, averaged over ``videos`` (uint8, or float in [0, 1]):
    ``flicker_mc`` (the figure the comparison table reports as flicker), ``warping_error``,
    ``feature_consistency``, and ``flicker_vbench`` (VBench's raw-frame score, kept for reference)."""
    videos = videos.float() / (255.0 if videos.dtype == torch.uint8 else 1.0)
    scores = {k: float(v.mean()) for k, v in coherence(videos).items()}
    scores["feature_consistency"] = float(feature_consistency(videos, frame_net, normalize).mean())
    scores["flicker_vbench"] = float(flicker(videos).mean())
    return {f"{prefix}{k}": v for k, v in scores.items()}
