"""The USAM spacetime tokenizer: a causal 3D-conv autoencoder with multi-scale residual BSQ.

video (B, 3, T, H, W) -> encoder -> latent (B, d, t, h, w) -> BSQ codes per stage -> decoder -> video

with h = H / spatial_down and t = 1 + ceil((T - 1) / temporal_down): the first frame is
encoded on its own, later frames are compressed in time. Every switch an ablation needs
(temporal fusion, multi-scale, residual paths) is a constructor argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from usam.models.bsq import MultiScaleBSQ, Quantized, ScaleSchedule
from usam.models.causal import CausalConv3d, Downsample, ResBlock, Upsample, framewise, norm, temporal_fusion


def latent_frames(frames: int, temporal_down: int) -> int:
    return 1 + math.ceil((frames - 1) / temporal_down)


def _levels(spatial_down: int, temporal_down: int) -> tuple[int, int]:
    n_s, n_t = int(math.log2(spatial_down)), int(math.log2(temporal_down))
    if 2**n_s != spatial_down or 2**n_t != temporal_down or n_t > n_s:
        raise ValueError(f"spatial_down {spatial_down} and temporal_down {temporal_down} must be powers of 2, "
                         "temporal <= spatial")
    return n_s, n_t


def _channels(base: int, n_s: int) -> list[int]:
    return [base * min(2**i, 4) for i in range(n_s + 1)]


class Encoder(nn.Module):
    def __init__(self, bits: int, base: int, res_blocks: int, spatial_down: int, temporal_down: int,
                 fusion: str, residual: bool):
        super().__init__()
        n_s, n_t = _levels(spatial_down, temporal_down)
        ch = _channels(base, n_s)
        self.conv_in = CausalConv3d(3, ch[0], (1, 3, 3))
        layers: list[nn.Module] = []
        for i in range(n_s):
            layers.append(Downsample(ch[i], ch[i + 1], temporal=i < n_t))
            layers += [ResBlock(ch[i + 1], ch[i + 1], residual) for _ in range(res_blocks)]
            layers.append(temporal_fusion(fusion, ch[i + 1], residual))
        self.down = nn.Sequential(*layers)
        self.norm_out = norm(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], bits, (1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.conv_in(x))
        return self.conv_out(F.silu(framewise(self.norm_out, h)))


class Decoder(nn.Module):
    """Mirrors the encoder; its output head maps back to pixels."""

    def __init__(self, bits: int, base: int, res_blocks: int, spatial_down: int, temporal_down: int,
                 fusion: str, residual: bool):
        super().__init__()
        n_s, n_t = _levels(spatial_down, temporal_down)
        ch = _channels(base, n_s)
        self.conv_in = CausalConv3d(bits, ch[-1], (1, 3, 3))
        layers: list[nn.Module] = []
        for i in reversed(range(n_s)):
            layers.append(temporal_fusion(fusion, ch[i + 1], residual))
            layers += [ResBlock(ch[i + 1], ch[i + 1], residual) for _ in range(res_blocks)]
            layers.append(Upsample(ch[i + 1], ch[i], temporal=i < n_t))
        self.up = nn.Sequential(*layers)
        self.norm_out = norm(ch[0])
        self.conv_out = CausalConv3d(ch[0], 3, (1, 3, 3))

    @property
    def last_layer(self) -> torch.Tensor:
        """The output head's weight: where the adversarial loss's adaptive weight compares gradients."""
        return self.conv_out.conv.weight

    def forward(self, z: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.up(self.conv_in(z))
        return self.conv_out(F.silu(framewise(self.norm_out, h)))[:, :, :frames]


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (B, 3, T, H, W)
    latent: torch.Tensor  # encoder output before quantization
    quant: Quantized


class SpacetimeTokenizer(nn.Module):
    """encode -> per-stage bits; decode from any prefix of scales; forward for training."""

    def __init__(self, bits: int = 16, base_channels: int = 32, res_blocks: int = 1, spatial_down: int = 4,
                 temporal_down: int = 2, temporal_fusion: str = "conv", residual: bool = True,
                 scales=(1, 2, 4, 8), multiscale: bool = True, clip_frames: int | None = None,
                 entropy_temperature: float = 0.5, entropy_gamma: float = 1.0, grad_checkpointing: bool = False):
        super().__init__()
        if temporal_fusion == "off" and temporal_down != 1:
            raise ValueError("temporal_fusion='off' is the per-frame tokenizer: it needs temporal_down=1")
        arch = dict(bits=bits, base=base_channels, res_blocks=res_blocks, spatial_down=spatial_down,
                    temporal_down=temporal_down, fusion=temporal_fusion, residual=residual)
        self.encoder = Encoder(**arch)
        self.decoder = Decoder(**arch)
        scales = tuple(scales) if multiscale else (tuple(scales)[-1],)
        self.quantizer = MultiScaleBSQ(bits, scales, clip_frames, entropy_temperature, entropy_gamma)
        self.spatial_down, self.temporal_down = spatial_down, temporal_down
        self.grad_checkpointing = grad_checkpointing

    def schedule(self, frames: int) -> ScaleSchedule:
        return self.quantizer.schedule(latent_frames(frames, self.temporal_down))

    def _run(self, module: nn.Module, *args):
        if self.grad_checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, video: torch.Tensor) -> TokenizerOutput:
        """Training pass: video (B, 3, T, H, W) -> reconstruction, latent and quantizer terms."""
        latent = self._run(self.encoder, video)
        quant = self.quantizer(latent)
        recon = self._run(self.decoder, quant.z_q, video.shape[2])
        return TokenizerOutput(recon, latent, quant)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> tuple[list[torch.Tensor], ScaleSchedule]:
        """Per-stage bit tensors (B, d, frames, side, side) and the schedule they follow."""
        quant = self.quantizer(self.encoder(video))
        return self.quantizer.bits_of(quant), quant.schedule

    @torch.no_grad()
    def decode(self, bits: list[torch.Tensor], schedule: ScaleSchedule, frames: int, scales: int | None = None) -> torch.Tensor:
        """Pixels from the first ``scales`` scales of every segment (all when None)."""
        codes = self.quantizer.codes_from_bits(bits, self.decoder.conv_in.conv.weight.dtype)
        return self.decoder(self.quantizer.cumulative(codes, schedule, scales), frames)


class PatchGAN3d(nn.Module):
    """A 3D PatchGAN: one real/fake logit per spacetime patch (hinge loss in training)."""

    def __init__(self, channels: int = 32, layers: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv3d(3, channels, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):
            mods += [nn.Conv3d(c, c * 2, (3, 4, 4), stride=(2, 2, 2), padding=(1, 1, 1)), nn.GroupNorm(8, c * 2),
                     nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv3d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


# Submodules the tokenizer task attaches for training only (their keys are in the checkpoint and the exported
# file, never in the rebuilt tokenizer): the PatchGAN critic and the auxiliary-objective heads.
TRAINING_ONLY = ("discriminator.", "aux.")


class ProjectionHead(nn.Module):
    """The contrastive head: a latent (B, d, t, h, w) pooled over time and space, through a 2-layer MLP, onto the
    unit sphere (B, dim), where InfoNCE compares clips by cosine similarity."""

    def __init__(self, bits: int, dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(bits, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(latent.float().mean(dim=(2, 3, 4))), dim=1)


class LatentPredictor(nn.Module):
    """The predictive head: latent frames 1..t-1 from the frames before each, causally.

    ``forward(z)`` with z (B, d, t, h, w) returns (B, d, t-1, h, w) whose frame j predicts z[:, :, j+1] from
    z[:, :, :j+1] only: the last frame plus a change from a causal temporal conv (``kernel`` frames in time, 3x3
    in space, so motion between grid cells can be predicted). The change's output layer starts at zero, so the
    predictor begins as "nothing moves"."""

    def __init__(self, bits: int, hidden: int = 32, kernel: int = 2):
        super().__init__()
        self.conv_in = CausalConv3d(bits, hidden, (kernel, 3, 3))
        self.conv_out = CausalConv3d(hidden, bits, (1, 1, 1))
        nn.init.zeros_(self.conv_out.conv.weight)
        nn.init.zeros_(self.conv_out.conv.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[2] < 2:
            raise ValueError(f"a latent of {z.shape[2]} frame(s) has no next frame to predict")
        past = z[:, :, :-1]
        return past + self.conv_out(F.silu(self.conv_in(past)))
