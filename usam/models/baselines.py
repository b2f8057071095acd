"""The comparison's baseline families, each small and class-conditional, trained on the same data:

* ``maskgit``: transformer-based: bidirectional masked-token prediction over the tokenizer's
  token stream, decoded by iterative parallel unmasking (MaskGIT, Chang et al. 2022).
* ``video_gan``: GAN-based: a 3D-convolutional generator from noise and a 3D-convolutional
  projection critic on pixels (hinge loss).
* ``latent_diffusion``: diffusion-based: a transformer denoiser on the tokenizer's continuous
  latents, DDPM training (epsilon prediction), DDIM sampling with any number of steps.

(The standard autoregressive baseline, ``raster_ar``, lives in ``usam.models.raster_ar``.)
Every model shares the blocks of USAM (RMSNorm, QK-norm, SwiGLU, adaptive norms), so the
comparison is between generation schemes, not between building blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from usam.models.usam import Block, RMSNorm, sample_bits


class _Conditioned(nn.Module):
    """A class embedding with a null class (index ``num_classes``) for classifier-free guidance."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.num_classes, self.cond_width = num_classes, width
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes else None

    def embed_class(self, classes: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if self.class_embed is None:
            return torch.zeros(batch, self.cond_width, device=device)
        if classes is None:
            classes = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.class_embed(classes)

    def drop_classes(self, classes: torch.Tensor | None, rate: float) -> torch.Tensor | None:
        if classes is None or not self.training or rate == 0:
            return classes
        drop = torch.rand(classes.shape, device=classes.device) < rate
        return torch.where(drop, torch.full_like(classes, self.num_classes), classes)


class MaskGIT(_Conditioned):
    """Bidirectional transformer over a stream of ``tokens`` tokens of ``bits`` bits each."""

    def __init__(self, bits: int, tokens: int, width: int = 96, depth: int = 3, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, num_classes: int = 0, cond_dropout: float = 0.1):
        super().__init__(width, num_classes)
        self.bits, self.tokens, self.width, self.cond_dropout = bits, tokens, width, cond_dropout
        self.in_proj = nn.Linear(bits, width)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, True, dropout, 0.0, cross=False) for _ in range(depth))
        self.head_norm = RMSNorm(width)
        self.head = nn.Linear(width, 2 * bits)

    def forward(self, bits: torch.Tensor, masked: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """bits (B, L, d) bool, masked (B, L) bool -> logits (B, L, d, 2) for every token (read at the masked ones)."""
        b = bits.shape[0]
        x = self.in_proj(bits.float() * 2 - 1)
        x = torch.where(masked[..., None], self.mask_token.to(x.dtype), x) + self.pos
        c = F.silu(self.embed_class(self.drop_classes(classes, self.cond_dropout), b, bits.device))[:, None]
        for block in self.blocks:
            x = block(x, c.expand(-1, self.tokens, -1), None)
        return self.head(self.head_norm(x)).view(b, self.tokens, self.bits, 2).float()

    @staticmethod
    def mask_schedule(ratio: torch.Tensor) -> torch.Tensor:
        """Share of tokens still masked at decoding progress ``ratio`` in [0, 1] (cosine, as in MaskGIT)."""
        return torch.cos(ratio * math.pi / 2)

    @torch.no_grad()
    def generate(self, batch: int, classes: torch.Tensor | None = None, steps: int = 8, temperature: float = 1.0,
                 cfg: float = 1.0, generator: torch.Generator | None = None, cfg_ramp: str = "constant") -> torch.Tensor:
        """(B, L, d) bool bits by iterative parallel decoding: each step samples every masked token, keeps the
        most confident ones and re-masks the rest, following the cosine schedule. Guidance ``cfg`` holds at
        every step (``cfg_ramp="constant"``) or rises linearly from 1 at the first step to ``cfg`` at the last."""
        if cfg_ramp not in ("constant", "linear"):
            raise ValueError(f"unknown guidance ramp {cfg_ramp!r}; use constant or linear")
        device = self.pos.device
        bits = torch.zeros(batch, self.tokens, self.bits, dtype=torch.bool, device=device)
        masked = torch.ones(batch, self.tokens, dtype=torch.bool, device=device)
        for step in range(steps):
            logits = self.forward(bits, masked, classes)
            scale = cfg if cfg_ramp == "constant" else 1 + (cfg - 1) * step / max(steps - 1, 1)
            if scale != 1.0 and classes is not None:
                null = self.forward(bits, masked, None)
                logits = null + scale * (logits - null)
            drawn = sample_bits(logits, temperature, 0, 1.0, generator)
            logp = torch.log_softmax(logits, -1)
            confidence = torch.where(drawn, logp[..., 1], logp[..., 0]).sum(-1)  # log-probability of the drawn token
            bits = torch.where(masked[..., None], drawn, bits)
            remaining = int(self.tokens * float(self.mask_schedule(torch.tensor((step + 1) / steps))))
            if remaining == 0:
                masked = torch.zeros_like(masked)
                break
            confidence = confidence.masked_fill(~masked, float("inf"))  # decided tokens stay decided
            keep_masked = confidence.argsort(dim=1)[:, :remaining]
            masked = torch.zeros_like(masked).scatter_(1, keep_masked, True)
        return bits


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int, factor: tuple[int, int, int]):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(min(8, cout), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return F.silu(self.norm(self.conv(x)))


class VideoGAN(nn.Module):
    """Generator (noise + class -> video in [-1, 1]) and a projection critic (video + class -> realness)."""

    def __init__(self, frames: int, size: int, noise_dim: int = 64, channels: int = 32, critic_channels: int = 32,
                 num_classes: int = 0):
        super().__init__()
        levels = int(math.log2(size // 4))
        if 4 * 2 ** levels != size:
            raise ValueError(f"video_gan needs a frame size of 4 * 2^k, got {size}")
        self.frames, self.size, self.noise_dim, self.num_classes = frames, size, noise_dim, num_classes
        top = channels * 2 ** (levels - 1) if levels else channels
        self.top = top
        self.class_embed = nn.Embedding(num_classes + 1, noise_dim) if num_classes else None
        self.proj = nn.Linear(noise_dim, top * frames * 16)
        ups, c = [], top
        for _ in range(levels):
            ups.append(_Up(c, max(c // 2, channels), (1, 2, 2)))
            c = max(c // 2, channels)
        self.ups = nn.Sequential(*ups)
        self.to_rgb = nn.Conv3d(c, 3, 3, padding=1)
        sn = nn.utils.parametrizations.spectral_norm
        critic, c = [], 3
        for i in range(levels):
            nxt = critic_channels * 2 ** i
            critic += [sn(nn.Conv3d(c, nxt, (3, 4, 4), stride=(1, 2, 2), padding=1)), nn.LeakyReLU(0.2)]
            c = nxt
        self.critic_net = nn.Sequential(*critic)
        self.critic_out = sn(nn.Linear(c, 1))
        self.critic_class = nn.Embedding(num_classes + 1, c) if num_classes else None

    def generate(self, noise: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        h = noise
        if self.class_embed is not None and classes is not None:
            h = h * (1 + self.class_embed(classes))
        x = self.proj(h).view(-1, self.top, self.frames, 4, 4)
        return torch.tanh(self.to_rgb(self.ups(F.silu(x))))

    def critic(self, video: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """One realness score per video (projection discriminator when classes are given)."""
        h = self.critic_net(video).flatten(2).sum(-1)
        out = self.critic_out(h).squeeze(-1)
        if self.critic_class is not None and classes is not None:
            out = out + (self.critic_class(classes) * h).sum(-1)
        return out

    def sample_noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(batch, self.noise_dim, generator=generator, device=device)

    def critic_frozen(self, video: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """The critic's score with its parameters detached: gradients reach the video (the generator) only."""
        from torch.func import functional_call

        params = {n: p.detach() for n, p in self.named_parameters() if n.startswith("critic")}
        return functional_call(self, params, (video, classes), kwargs={"critic_only": True})

    def forward(self, real: torch.Tensor, classes: torch.Tensor | None = None, *, critic_only: bool = False):
        """Training pass (through DDP): hinge losses (critic, generator) for a batch of real videos in [-1, 1]
        and as many generated ones. The critic learns from detached fakes; the generator through a frozen critic.
        ``critic_only``: just the critic's scores of ``real``."""
        if critic_only:
            return self.critic(real, classes)
        fake = self.generate(self.sample_noise(real.shape[0], device=real.device), classes)
        critic = F.relu(1 - self.critic(real, classes)).mean() + F.relu(1 + self.critic(fake.detach(), classes)).mean()
        generator = -self.critic_frozen(fake, classes).mean()
        return critic, generator


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class LatentDiffusion(_Conditioned):
    """Transformer denoiser over the latent grid (tokens = latent frames x height x width, channels = bits)."""

    def __init__(self, channels: int, tokens: int, width: int = 96, depth: int = 3, heads: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, num_classes: int = 0, cond_dropout: float = 0.1,
                 timesteps: int = 1000):
        super().__init__(width, num_classes)
        self.channels, self.tokens, self.width, self.cond_dropout = channels, tokens, width, cond_dropout
        self.timesteps = timesteps
        self.in_proj = nn.Linear(channels, width)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, True, dropout, 0.0, cross=False) for _ in range(depth))
        self.head_norm = RMSNorm(width)
        self.head = nn.Linear(width, channels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        scale = 1000.0 / timesteps  # DDPM's linear schedule, stretched so any length ends near pure noise
        betas = torch.linspace(1e-4 * scale, min(0.02 * scale, 0.999), timesteps, dtype=torch.float64)
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0).float(), persistent=False)
        self.register_buffer("latent_scale", torch.zeros(()))  # 1 / std of the training latents, set once

    def forward(self, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise for noisy latent tokens x (B, L, C) at integer timesteps t (B,)."""
        b = x.shape[0]
        h = self.in_proj(x) + self.pos
        c = self.time(_timestep_embedding(t, self.width)) + self.embed_class(self.drop_classes(classes, self.cond_dropout), b, x.device)
        c = F.silu(c)[:, None].expand(-1, self.tokens, -1)
        for block in self.blocks:
            h = block(h, c, None)
        return self.head(self.head_norm(h))

    def noised(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """DDPM's forward process at a random timestep per sample: (noisy latent, timestep, the noise)."""
        b = x0.shape[0]
        t = torch.randint(0, self.timesteps, (b,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        a = self.alpha_bar[t].view(b, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise

    @torch.no_grad()
    def generate(self, batch: int, classes: torch.Tensor | None = None, steps: int = 25, cfg: float = 1.0,
                 eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM (Song et al. 2021) over ``steps`` evenly spaced timesteps; eta 0 is deterministic given the noise."""
        device = self.pos.device
        x = torch.randn(batch, self.tokens, self.channels, device=device, generator=generator)
        times = torch.linspace(self.timesteps - 1, 0, steps, device=device).round().long()
        for i, t in enumerate(times):
            tt = t.expand(batch)
            eps = self(x, tt, classes)
            if cfg != 1.0 and classes is not None:
                null = self(x, tt, None)
                eps = null + cfg * (eps - null)
            a = self.alpha_bar[t]
            a_prev = self.alpha_bar[times[i + 1]] if i + 1 < len(times) else torch.ones((), device=device)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp_min(0).sqrt()
            direction = (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            noise = torch.randn(x.shape, device=device, generator=generator) if eta > 0 else 0.0
            x = a_prev.sqrt() * x0 + direction + sigma * noise
        return x
