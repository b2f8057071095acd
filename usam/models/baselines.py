"""The comparison's baseline families, each small and class-conditional, trained on the same data:

* ``maskgit``: transformer-based: bidirectional masked-token prediction over the tokenizer's
  token stream, decoded by iterative parallel unmasking (MaskGIT, Chang et al. 2022).
* ``video_gan``: GAN-based: a 3D-convolutional generator from noise with class-conditional norms and a
  spectrally normalised 3D-convolutional projection critic on pixels (hinge loss, DiffAugment, R1, an EMA
  generator for sampling).
* ``latent_diffusion``: diffusion-based: a transformer denoiser on the tokenizer's continuous
  latents, DDPM training (epsilon prediction), DDIM sampling with any number of steps.

(The standard autoregressive baseline, ``raster_ar``, lives in ``usam.models.raster_ar``.)
The transformer baselines share the blocks of USAM (RMSNorm, QK-norm, SwiGLU, adaptive norms), so the
comparison is between generation schemes, not between building blocks.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

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


_AUGMENTS = ("translation", "brightness", "contrast", "cutout")


def diff_augment(video: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) for videos (B, C, T, H, W) in [-1, 1]: differentiable transforms drawn per
    video and shared by its frames (so motion is untouched), applied alike to real and generated videos before the
    critic. ``translation``: shift by up to 1/8 of the frame, zero-padded; ``brightness``: add U(-0.5, 0.5);
    ``contrast``: scale the deviation from the video's mean by U(0.5, 1.5); ``cutout``: zero a square of half the
    frame side."""
    b, _, _, h, w = video.shape
    dev = video.device

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=generator)

    for kind in policy:
        if kind == "brightness":
            video = video + (rand(b, 1, 1, 1, 1) - 0.5)
        elif kind == "contrast":
            mean = video.mean(dim=(1, 2, 3, 4), keepdim=True)
            video = (video - mean) * (rand(b, 1, 1, 1, 1) + 0.5) + mean
        elif kind == "translation":
            sh, sw = max(1, h // 8), max(1, w // 8)
            dy = (rand(b, 1, 1) * (2 * sh + 1)).long() - sh
            dx = (rand(b, 1, 1) * (2 * sw + 1)).long() - sw
            ys = torch.arange(h, device=dev).view(1, h, 1) + dy + sh
            xs = torch.arange(w, device=dev).view(1, 1, w) + dx + sw
            padded = F.pad(video, (sw, sw, sh, sh))  # zeros, then read the window the shift selects
            index = (ys * (w + 2 * sw) + xs).view(b, 1, 1, h * w).expand(*video.shape[:3], -1)
            video = padded.flatten(3).gather(3, index).view_as(video)
        elif kind == "cutout":
            ch, cw = h // 2, w // 2
            cy = (rand(b, 1, 1) * (h + 1 - ch % 2)).long()
            cx = (rand(b, 1, 1) * (w + 1 - cw % 2)).long()
            ys = torch.arange(h, device=dev).view(1, h, 1)
            xs = torch.arange(w, device=dev).view(1, 1, w)
            keep = ~(((ys - cy).abs() <= ch // 2 - 1 + ch % 2) & ((xs - cx).abs() <= cw // 2 - 1 + cw % 2))
            video = video * keep[:, None, None].to(video.dtype)
        else:
            raise ValueError(f"unknown augmentation {kind!r}; known: {', '.join(_AUGMENTS)}")
    return video


def r1_penalty(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): the mean over the batch of |d score / d real|^2 (``real`` must require grad and
    ``scores`` be computed from it, with a graph: the penalty is differentiated in turn)."""
    (grad,) = torch.autograd.grad(scores.float().sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


class _CondNorm(nn.Module):
    """GroupNorm whose gain and bias come from the conditioning vector (class embedding and noise, as in BigGAN)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(8, channels), channels, affine=False)
        self.film = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain, bias = self.film(y)[:, :, None, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + gain) + bias


class _GenBlock(nn.Module):
    """Conditional norm, SiLU, a 1x1x1 convolution to the output width, nearest upsampling by ``factor`` and a
    3x3x3 convolution (narrowing before upsampling keeps the costly full-resolution convolution small)."""

    def __init__(self, cin: int, cout: int, factor: tuple[int, int, int], cond_dim: int):
        super().__init__()
        self.factor = factor
        self.norm = _CondNorm(cin, cond_dim)
        self.narrow = nn.Conv3d(cin, cout, 1)
        self.conv = nn.Conv3d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.narrow(F.silu(self.norm(x, y)))
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode="nearest"))


class _Generator(nn.Module):
    """Noise + class -> video in [-1, 1]: a linear map to a (C, T0, 4, 4) grid, then one conditional block per
    doubling of the frame side (the first ones also double time), each block's norm modulated by [noise, class]."""

    def __init__(self, frames: int, size: int, noise_dim: int, channels: int, num_classes: int):
        super().__init__()
        levels = int(math.log2(size // 4))
        t_ups = 0
        while t_ups < max(levels - 1, 0) and frames % 2 ** (t_ups + 1) == 0:
            t_ups += 1
        self.t0, self.noise_dim = frames // 2 ** t_ups, noise_dim
        widths = [channels * 2 ** min(levels - i, levels - 1) if levels else channels for i in range(levels + 1)]
        self.top = widths[0]
        self.class_embed = nn.Embedding(num_classes + 1, noise_dim) if num_classes else None
        cond_dim = noise_dim * (2 if num_classes else 1)
        self.proj = nn.Linear(noise_dim, self.top * self.t0 * 16)
        self.blocks = nn.ModuleList(
            _GenBlock(widths[i], widths[i + 1], (2 if i < t_ups else 1, 2, 2), cond_dim) for i in range(levels))
        self.out_norm = _CondNorm(widths[-1], cond_dim)
        self.to_rgb = nn.Conv3d(widths[-1], 3, 1)
        self.num_classes = num_classes

    def forward(self, noise: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        y = noise
        if self.class_embed is not None:
            if classes is None:  # the null class: unconditional samples
                classes = torch.full((noise.shape[0],), self.num_classes, dtype=torch.long, device=noise.device)
            y = torch.cat([noise, self.class_embed(classes)], dim=1)
        x = self.proj(noise).view(-1, self.top, self.t0, 4, 4)
        for block in self.blocks:
            x = block(x, y)
        return torch.tanh(self.to_rgb(F.silu(self.out_norm(x, y))))


class _Critic(nn.Module):
    """Video + class -> realness: spectrally normalised strided 3D convolutions (LeakyReLU) down to a 4x4 grid
    (time halves after the first one while it stays even and above 2), a spectrally normalised linear layer over
    the flattened grid, and a projection head (Miyato & Koyama 2018): a linear score plus the inner product of
    the features with the class embedding."""

    def __init__(self, frames: int, size: int, channels: int, num_classes: int):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        levels = int(math.log2(size // 4))
        layers, c, t = [], 3, frames
        for i in range(max(levels, 1)):
            nxt = channels * 2 ** i
            ts = 2 if t % 2 == 0 and t > 2 and i > 0 else 1
            stride = (ts, 2, 2) if i < levels else (1, 1, 1)
            layers += [sn(nn.Conv3d(c, nxt, 3, stride=stride, padding=1)), nn.LeakyReLU(0.2)]
            c, t = nxt, t // ts
        self.net = nn.Sequential(*layers)
        self.features = c  # width of the dense layer
        self.dense = sn(nn.Linear(c * t * 16, self.features))
        self.out = sn(nn.Linear(self.features, 1))
        self.class_embed = sn(nn.Embedding(num_classes + 1, self.features)) if num_classes else None

    def forward(self, video: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        h = F.leaky_relu(self.dense(self.net(video).flatten(1)), 0.2)
        out = self.out(h).squeeze(-1)
        if self.class_embed is not None and classes is not None:
            out = out + (self.class_embed(classes) * h).sum(-1)
        return out


class _FrameClassifier(nn.Module):
    """Video -> class logits, the mean over frames of a small per-frame conv net (GroupNorm, SiLU, global max pool:
    a small digit on a flat background survives it, an average would wash it out). No spectral norm: it is trained
    by cross-entropy on real videos, not constrained as a critic."""

    def __init__(self, num_classes: int, channels: int = 16):
        super().__init__()
        c = channels
        self.net = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.GroupNorm(4, c), nn.SiLU(),
                                 nn.Conv2d(c, 2 * c, 3, 2, 1), nn.GroupNorm(4, 2 * c), nn.SiLU(),
                                 nn.Conv2d(2 * c, 4 * c, 3, 2, 1), nn.GroupNorm(4, 4 * c), nn.SiLU(),
                                 nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * c, num_classes))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        return self.net(video.transpose(1, 2).reshape(b * t, c, h, w)).view(b, t, -1).mean(1)


def _as_buffers(module: nn.Module) -> nn.Module:
    """``module`` with every parameter turned into a buffer of the same name: it still runs, is saved and moved
    with its owner, but trains with no optimizer and counts in no parameter count."""
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            del m._parameters[name]
            m.register_buffer(name, p.detach().clone())
    return module


class VideoGAN(nn.Module):
    """A class-conditional video GAN (hinge loss) with the usual stabilisations for a short budget:

    * generator (``generator``): noise -> linear (C, T0, 4, 4) grid -> upsampling blocks (conditional GroupNorm
      modulated by [noise, class embedding] as in BigGAN, SiLU, 1x1x1 conv, nearest upsampling, 3x3x3 conv)
      -> 1x1x1 conv to RGB -> tanh;
    * critic (``critic_net``): spectrally normalised strided 3D convs, a dense layer and a projection head on
      the class;
    * DiffAugment (``augment``: translation, brightness, contrast, cutout) on real and fake videos alike before
      the critic, and an R1 penalty on real videos (gradient w.r.t. the un-augmented video);
    * an exponential moving average of the generator (``generator_ema``, kept as buffers): what
      ``generate`` samples from, so it is what the exported weights sample;
    * with classes, an auxiliary classifier on the critic's side (``critic_classifier``, AC-GAN style but a
      network of its own, without spectral norm): it learns the class of augmented real videos by
      cross-entropy, and the generator is also trained to make its videos classified as their class
      (weight ``classifier_weight``), the class signal a projection critic alone forms too slowly on a
      short budget.

    The parameters (``parameters()``, what ``usam.models.parameter_count`` counts) are the generator's and the
    critic's; the EMA copy of the generator is buffers and not counted."""

    def __init__(self, frames: int, size: int, noise_dim: int = 64, channels: int = 32, critic_channels: int = 32,
                 num_classes: int = 0, augment: tuple[str, ...] = ("translation", "brightness"),
                 classifier_weight: float = 0.0):
        super().__init__()
        levels = int(math.log2(size // 4))
        if 4 * 2 ** levels != size:
            raise ValueError(f"video_gan needs a frame size of 4 * 2^k, got {size}")
        unknown = [a for a in augment if a not in _AUGMENTS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; known: {', '.join(_AUGMENTS)}")
        self.frames, self.size, self.noise_dim, self.num_classes = frames, size, noise_dim, num_classes
        self.augment = tuple(augment)
        self.generator = _Generator(frames, size, noise_dim, channels, num_classes)
        self.critic_net = _Critic(frames, size, critic_channels, num_classes)
        self.classifier_weight = classifier_weight
        self.critic_classifier = _FrameClassifier(num_classes) if num_classes and classifier_weight > 0 else None
        self.generator_ema = _as_buffers(copy.deepcopy(self.generator)).requires_grad_(False)
        self.register_buffer("ema_step", torch.zeros((), dtype=torch.long))  # optimizer steps the EMA has seen

    @torch.no_grad()
    def update_ema(self, step: int, decay: float) -> None:
        """Fold the generator's current weights, those after ``step`` optimizer steps, into the EMA, once per step
        (no-op when ``step`` is not past the last one folded in). The decay ramps up as min(decay, (1 + step) /
        (10 + step)), so the early, fast-changing weights fade quickly."""
        if step <= int(self.ema_step):
            return
        beta = min(decay, (1 + step) / (10 + step))
        shadow = dict(self.generator_ema.named_buffers())
        for name, p in self.generator.named_parameters():
            shadow[name].lerp_(p.detach().to(shadow[name].dtype), 1 - beta)
        self.ema_step.fill_(step)

    def generate(self, noise: torch.Tensor, classes: torch.Tensor | None = None, *, ema: bool = True) -> torch.Tensor:
        """Videos (B, 3, T, H, W) in [-1, 1] from the EMA generator (``ema=False``: the one being trained)."""
        return (self.generator_ema if ema else self.generator)(noise, classes)

    def critic(self, video: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """One realness score per video (projection discriminator when classes are given); no augmentation."""
        return self.critic_net(video, classes)

    def sample_noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(batch, self.noise_dim, generator=generator, device=device)

    def critic_frozen(self, video: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """The critic's score with its parameters detached: gradients reach the video (the generator) only."""
        params = {n: p.detach() for n, p in self.named_parameters() if n.startswith("critic")}
        return functional_call(self, params, (video, classes), kwargs={"critic_only": True})

    def forward(self, real: torch.Tensor, classes: torch.Tensor | None = None, *, critic_only: bool = False,
                r1_weight: float = 0.0):
        """Training pass (through DDP) for a batch of real videos in [-1, 1] and as many generated ones:
        (critic loss, generator loss, R1 value). The critic loss is the hinge loss on augmented real and detached
        augmented fake videos, plus ``r1_weight`` x R1 when ``r1_weight`` > 0; the generator loss is minus the
        frozen critic's score of its augmented videos. ``critic_only``: just the critic's scores of ``real``."""
        if critic_only:
            return self.critic(real, classes)
        fake = self.generator(self.sample_noise(real.shape[0], device=real.device), classes)
        real = real.detach().requires_grad_(r1_weight > 0)
        real_scores = self.critic(diff_augment(real, self.augment), classes)
        fake_scores = self.critic(diff_augment(fake.detach(), self.augment), classes)
        critic = F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
        r1 = r1_penalty(real_scores, real) if r1_weight > 0 else torch.zeros((), device=real.device)
        fake_aug = diff_augment(fake, self.augment)
        generator = -self.critic_frozen(fake_aug, classes).mean()
        if self.critic_classifier is not None and classes is not None:
            w = self.classifier_weight
            critic = critic + w * F.cross_entropy(self.critic_classifier(diff_augment(real.detach(), self.augment)),
                                                  classes)
            frozen = {n: p.detach() for n, p in self.critic_classifier.named_parameters()}
            generator = generator + w * F.cross_entropy(functional_call(self.critic_classifier, frozen, (fake_aug,)),
                                                        classes)
        return critic + r1_weight * r1, generator, r1.detach()


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
