"""Causal spacetime building blocks of the tokenizer: nothing here lets frame t see frames after t.

Tensors are (B, C, T, H, W). Time is padded on the left only, with copies of the first
frame, so the first frame is encoded on its own (an image) and later frames only look back.
Temporal downsampling by 2 keeps that: latent 0 covers frame 0, latent j covers frames
2j-1 and 2j, so a video of T frames has 1 + ceil((T - 1) / 2) latent frames.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pad_time_left(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Prepend ``frames`` copies of the first frame (causal padding)."""
    if frames == 0:
        return x
    return torch.cat([x[:, :, :1].expand(-1, -1, frames, -1, -1), x], dim=2)


class CausalConv3d(nn.Module):
    """A 3D convolution whose output at time t depends on inputs at times <= t only."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (3, 3, 3),
                 stride: tuple[int, int, int] = (1, 1, 1), bias: bool = True):
        super().__init__()
        kt, kh, kw = kernel
        self.time_pad = kt - 1
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(0, kh // 2, kw // 2), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_time_left(x, self.time_pad))


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm, applied frame by frame (:func:`framewise`): statistics over (T, H, W) would let
    later frames change earlier ones."""
    return nn.GroupNorm(min(8, channels), channels, eps=1e-6)


def framewise(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 4D (N, C, H, W) module to every frame: norms then never mix statistics across time."""
    b, c, t, h, w = x.shape
    y = module(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, -1, h, w).transpose(1, 2)


class ResBlock(nn.Module):
    """norm-act-conv x2 over space, with a skip path; ``residual=False`` drops the skip (ablation).
    Time is mixed by the temporal fusion blocks and the temporal down/upsampling only."""

    def __init__(self, cin: int, cout: int, residual: bool = True):
        super().__init__()
        k = (1, 3, 3)
        self.norm1, self.conv1 = norm(cin), CausalConv3d(cin, cout, k)
        self.norm2, self.conv2 = norm(cout), CausalConv3d(cout, cout, k)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(framewise(self.norm1, x)))
        h = self.conv2(F.silu(framewise(self.norm2, h)))
        return self.skip(x) + h if self.residual else h


class Downsample(nn.Module):
    """Halve H and W (strided conv per frame), and T too when ``temporal``.

    In time, latent 0 keeps frame 0 and latent j averages frames 2j-1 and 2j, plus a learned
    causal correction over frames 2j-2 .. 2j that starts at zero: the block begins as plain
    averaging and learns what to add. A missing last frame is filled by repeating the last one,
    so odd and even frame counts both work and no frame is dropped.
    """

    def __init__(self, cin: int, cout: int, temporal: bool):
        super().__init__()
        self.conv = CausalConv3d(cin, cout, (1, 3, 3), stride=(1, 2, 2))
        self.time_mix = CausalConv3d(cout, cout, (3, 1, 1), stride=(2, 1, 1)) if temporal else None
        if self.time_mix is not None:
            nn.init.zeros_(self.time_mix.conv.weight)
            nn.init.zeros_(self.time_mix.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.time_mix is None:
            return x
        if (x.shape[2] - 1) % 2:
            x = torch.cat([x, x[:, :, -1:]], dim=2)
        b, c, t, h, w = x.shape
        pairs = x[:, :, 1:].reshape(b, c, (t - 1) // 2, 2, h, w).mean(3)
        return torch.cat([x[:, :, :1], pairs], dim=2) + self.time_mix(x)


class Upsample(nn.Module):
    """Double H and W (nearest + conv), and T too when ``temporal``: latent 0 becomes frame 0 and
    latent j frames 2j-1 and 2j (a copy each, plus a learned causal correction that starts at zero)."""

    def __init__(self, cin: int, cout: int, temporal: bool):
        super().__init__()
        self.time_conv = CausalConv3d(cin, cin * 2, (3, 1, 1)) if temporal else None
        if self.time_conv is not None:
            nn.init.zeros_(self.time_conv.conv.weight)
            nn.init.zeros_(self.time_conv.conv.bias)
        self.conv = CausalConv3d(cin, cout, (1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_conv is not None:
            b, c, t, h, w = x.shape
            delta = self.time_conv(x).reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            x = (x.repeat_interleave(2, dim=2) + delta)[:, :, 1:]  # latent 0 stands for one frame, not two
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return self.conv(x)


class CausalTemporalConv(nn.Module):
    """Temporal fusion by convolution: each position mixes itself with the two frames before it."""

    def __init__(self, channels: int, residual: bool = True):
        super().__init__()
        self.norm = norm(channels)
        self.conv = CausalConv3d(channels, channels, (3, 1, 1))
        if residual:  # a fresh residual branch starts as the identity map
            nn.init.zeros_(self.conv.conv.weight)
            nn.init.zeros_(self.conv.conv.bias)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.silu(framewise(self.norm, x)))
        return x + h if self.residual else h


class CausalTemporalAttention(nn.Module):
    """Temporal fusion by attention: every spatial position attends over its own past frames."""

    def __init__(self, channels: int, residual: bool = True, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        if residual:  # a fresh residual branch starts as the identity map
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        seq = framewise(self.norm, x).permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
        q, k, v = self.qkv(seq).reshape(b * h * w, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b * h * w, t, c)
        out = self.proj(out).reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        return x + out if self.residual else out


def temporal_fusion(kind: str, channels: int, residual: bool) -> nn.Module:
    """``conv`` | ``attention`` | ``off`` (the per-frame 2D tokenizer of the ablation)."""
    if kind == "conv":
        return CausalTemporalConv(channels, residual)
    if kind == "attention":
        return CausalTemporalAttention(channels, residual)
    if kind == "off":
        return nn.Identity()
    raise ValueError(f"unknown temporal fusion {kind!r}")
