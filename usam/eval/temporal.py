"""Temporal coherence of videos, weight-free and on the domain evaluator: warping error and feature consistency.

Warping error: for each pair of frames, classical optical flow (OpenCV Farneback) from frame
t+1 back to frame t warps frame t onto t+1; the error is the mean absolute difference where
the flow is trusted. Occluded or disoccluded pixels fail the forward-backward check (the flow
there and back does not return near its start) and are left out. A still video and a
video whose motion the flow explains score 0; flicker, popping and broken motion raise it.
Feature consistency is the mean cosine similarity of the frame evaluator's features between
consecutive frames (1 for a still video).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from usam.data.dataset import stats_tensors

FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=9, iterations=5, poly_n=5, poly_sigma=1.1, flags=0)


def _gray_u8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W) uint8 luma."""
    rgb = frame.float().clamp(0, 1)
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (luma * 255).round().to(torch.uint8).numpy()


def optical_flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Dense flow (2, H, W) in pixels such that dst(p) ~ src(p + flow(p)) (Farneback, from ``dst`` to ``src``)."""
    import cv2

    flow = cv2.calcOpticalFlowFarneback(_gray_u8(dst), _gray_u8(src), None, **FARNEBACK)
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


def warping_error(videos: torch.Tensor) -> torch.Tensor:
    """Per video (B, 3, T, H, W in [0, 1]): mean over frame pairs of the occlusion-masked |warp(x_t) - x_t+1|."""
    b, _, t, _, _ = videos.shape
    out = torch.zeros(b)
    if t < 2:
        return out
    videos = videos.detach().float().cpu()
    for i in range(b):
        errors = []
        for j in range(t - 1):
            prev, nxt = videos[i, :, j], videos[i, :, j + 1]
            flow = optical_flow(prev, nxt)  # nxt(p) ~ prev(p + flow)
            back = optical_flow(nxt, prev)
            mask = occlusion_mask(flow, back).float()
            diff = (warp(prev, flow) - nxt).abs().mean(0)
            errors.append(float((diff * mask).sum() / mask.sum().clamp_min(1.0)))
        out[i] = float(np.mean(errors))
    return out


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
