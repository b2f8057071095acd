"""How well a video's later frames agree with its first frame: the figure next-clip conditioning moves.

A generated clip is conditioned on the first frame; if it ignores what the first frame shows, its
later frames drift away from it in pixels and in content. Two figures per video, read against the
same figures on real test videos (real videos move too, so neither is 0 there):

- ``frame0_l1``: the mean absolute pixel difference between each later frame and frame 0;
- ``frame0_class_agreement``: the share of later frames that the frame evaluator puts in the same
  class as frame 0.
"""

from __future__ import annotations

import torch

from usam.data.dataset import stats_tensors


@torch.no_grad()
def first_frame_agreement(videos: torch.Tensor, net: torch.nn.Module, normalize: dict) -> dict[str, torch.Tensor]:
    """Per video (B, 3, T, H, W, uint8 or [0, 1] float): ``frame0_l1`` and ``frame0_class_agreement`` (NaN when T < 2)."""
    b, c, t, h, w = videos.shape
    if t < 2:
        nan = torch.full((b,), float("nan"))
        return {"frame0_l1": nan, "frame0_class_agreement": nan}
    x = videos.detach().cpu().float()
    if videos.dtype == torch.uint8:
        x = x / 255.0
    l1 = (x[:, :, 1:] - x[:, :, :1]).abs().mean((1, 3, 4)).mean(1)
    mean, std = stats_tensors(normalize, (1, -1, 1, 1))
    frames = (x.transpose(1, 2).reshape(b * t, c, h, w) - mean) / std
    predicted = net(frames).argmax(-1).view(b, t)
    agreement = (predicted[:, 1:] == predicted[:, :1]).float().mean(1)
    return {"frame0_l1": l1, "frame0_class_agreement": agreement}
