"""Domain evaluators: a per-frame image classifier and a per-clip video classifier.

Small residual CNNs trained on our own data: their penultimate features replace
Inception/I3D (not available offline) for Frechet distances, IS, KID and a perceptual
distance. ``features`` returns those embeddings; ``forward`` returns class logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescale the survivors."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class ResBlock(nn.Module):
    """conv-norm-act x2 with a (possibly strided, projected) skip path; 2D or 3D."""

    def __init__(self, cin: int, cout: int, stride, conv: type, norm_groups: int, drop: float):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(norm_groups, cout)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(norm_groups, cout)
        needs_proj = cin != cout or stride != 1
        self.skip = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(norm_groups, cout)) if needs_proj else nn.Identity()
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.silu(self.skip(x) + drop_path(h, self.drop, self.training))


class _Classifier(nn.Module):
    conv: type = nn.Conv2d
    stride: object = 2

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, stages: int = 2,
                 dropout: float = 0.0, drop_path: float = 0.0, grad_checkpointing: bool = False):
        super().__init__()
        self.stem = nn.Sequential(self.conv(in_channels, width, 3, padding=1, bias=False), nn.GroupNorm(4, width), nn.SiLU())
        blocks, c = [], width
        for i in range(stages):
            rate = drop_path * (i + 1) / stages  # deeper blocks are dropped more often
            blocks.append(ResBlock(c, c * 2, self.stride, self.conv, 4, rate))
            c *= 2
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c, num_classes)
        self.grad_checkpointing = grad_checkpointing

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=False) if self.grad_checkpointing and self.training else block(h)
        return h.flatten(2).amax(-1)  # global max pool: a small object on a flat background survives it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class FrameClassifier(_Classifier):
    """Input (N, C, H, W): one frame per sample."""


class ClipClassifier(_Classifier):
    """Input (N, C, T, H, W): a clip per sample. Only space is downsampled: short clips keep every frame,
    which lifted digit accuracy well above a (2, 2, 2) stride at the same budget."""

    conv = nn.Conv3d
    stride = (1, 2, 2)
