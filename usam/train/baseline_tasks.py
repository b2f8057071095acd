"""The baselines as training tasks, on the same harness, data, recipe (``train``) and seed as USAM.

* ``raster_ar``: next-token autoregression over the tokenizer's stream, one token at a time.
* ``maskgit``: masked-token prediction over the same stream (cosine masking ratio), iterative decoding.
* ``gan``: pixel-space 3D-conv GAN, hinge loss, spectral-norm projection critic, DiffAugment, lazy R1 and an
  EMA generator (what is sampled); one optimizer with a parameter group per player (two learning rates,
  Adam betas of ``baselines.gan.betas``): the generator's term never trains the critic and the critic's
  term never trains the generator (fakes are detached for it).
* ``diffusion``: DDPM on the tokenizer's continuous latents (scaled to unit variance), DDIM
  sampling; sampled latents are quantized and decoded by the same tokenizer.

Every task is class-conditional (the digit, or the shape kind) and samples through
``sample(model, cond, batch, device, generator)`` -> videos in [0, 1], like ``USAMTask``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from usam.config.schema import TrainConfig
from usam.data import VideoDataset
from usam.data.dataset import stats_tensors
from usam.models.baselines import LatentDiffusion, MaskGIT, VideoGAN
from usam.models.raster_ar import RasterAR
from usam.models.tokenizer import latent_frames
from usam.train.task import require_splits, unwrap
from usam.train.usam_task import StreamTask


def batch_size(batch: dict) -> int:
    return len(batch["latent"] if "latent" in batch else batch["video"])


def _unit(video: torch.Tensor, normalize: dict) -> torch.Tensor:
    mean, std = stats_tensors(normalize, (1, -1, 1, 1, 1), video.device)
    return (video.float() * std + mean).clamp(0, 1)


@dataclass
class _TokenBaseline(StreamTask):
    """Shared by the baselines that model the tokenizer's bit stream."""

    @property
    def bcfg(self):
        return getattr(self.cfg.baselines, self.name)

    @property
    def train_cfg(self) -> TrainConfig:
        """The shared recipe (``train``), at the family's own learning rate when it sets one (chosen on val)."""
        lr = self.bcfg.lr
        return self.cfg.train if lr is None else replace(self.cfg.train, lr=lr)

    def schedule(self):
        return self.tokenizer().schedule(self.frames)

    def stream_bits(self, batch: dict, device: torch.device) -> torch.Tensor:
        """(B, L, d) bool: the batch's tokens in stream order (what USAM predicts, flattened)."""
        quantizer = self.tokenizer(device).quantizer
        q = quantizer(self._encode(batch, device))
        return q.schedule.flatten(q.codes) > 0

    def classes(self, batch: dict, device: torch.device) -> torch.Tensor | None:
        return batch["class"].to(device) if "class" in batch else None

    def decode(self, bits: torch.Tensor, device: torch.device) -> torch.Tensor:
        tok = self.tokenizer(device)
        schedule = self.schedule()
        video = tok.decode(schedule.split(bits), schedule, self.frames).float()
        return _unit(video, self.normalize)

    def build_model(self) -> nn.Module:
        return self.model_class(**self.model_kwargs())

    def model_kwargs(self) -> dict:
        """A transformer over the stream: bits per token, tokens, the configured size, the classes."""
        size = self.bcfg.size
        return dict(bits=self.tokenizer_meta["model_kwargs"]["bits"], tokens=self.schedule().tokens, width=size.width,
                    depth=size.depth, heads=size.heads, num_classes=len(self.class_names()),
                    cond_dropout=self.cfg.model.conditioning.dropout)

    def head_width(self, model: nn.Module) -> int:
        return model.head.out_features

    def _bit_loss(self, logits: torch.Tensor, bits: torch.Tensor, where: torch.Tensor | None = None):
        ce = F.cross_entropy(logits.reshape(-1, 2), bits.long().reshape(-1), reduction="none").view(bits.shape).mean(-1)
        right = (logits.argmax(-1) == bits.long()).float().mean(-1)
        if where is None:
            return ce.mean(), right.mean()
        w = where.float()
        return (ce * w).sum() / w.sum().clamp_min(1), (right * w).sum() / w.sum().clamp_min(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict[str, float]:
        model.eval()
        sums = {"seen": 0.0, "loss_sum": 0.0, "acc_sum": 0.0}
        generator = torch.Generator(device=device).manual_seed(self.cfg.seed)
        for batch in loader:
            loss, acc = self._eval_batch(model, batch, device, generator)
            n = batch_size(batch)
            sums["seen"] += n
            sums["loss_sum"] += float(loss) * n
            sums["acc_sum"] += float(acc) * n
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        seen = max(sums["seen"], 1.0)
        return {"val_loss": sums["loss_sum"] / seen, "val_bit_acc": sums["acc_sum"] / seen}


@dataclass
class RasterARTask(_TokenBaseline):
    name: str = "raster_ar"
    model_class = RasterAR

    def loss(self, model, batch, device, step: int = 0):
        bits = self.stream_bits(batch, device)
        loss, acc = self._bit_loss(model(bits, self.classes(batch, device)), bits)
        return loss, {"loss": float(loss.detach()), "bit_acc": float(acc)}

    def _eval_batch(self, model, batch, device, generator):
        bits = self.stream_bits(batch, device)
        return self._bit_loss(model(bits, self.classes(batch, device)), bits)

    @torch.no_grad()
    def sample(self, model, cond: dict, batch: int, device, generator=None) -> torch.Tensor:
        c = self.bcfg
        bits = model.generate(batch, cond.get("class"), temperature=c.temperature, generator=generator, cfg=c.cfg,
                              cfg_ramp=c.cfg_ramp)
        return self.decode(bits, device)


@dataclass
class MaskGITTask(_TokenBaseline):
    name: str = "maskgit"
    model_class = MaskGIT

    def _masked(self, bits: torch.Tensor, generator=None) -> torch.Tensor:
        """A cosine-distributed share of each sample's tokens (at least one) is masked."""
        b, n, _ = bits.shape
        share = MaskGIT.mask_schedule(torch.rand(b, 1, device=bits.device, generator=generator))
        masked = torch.rand(b, n, device=bits.device, generator=generator) < share
        first = torch.zeros_like(masked)
        first[:, 0] = True
        return masked | (first & ~masked.any(1, keepdim=True))

    def loss(self, model, batch, device, step: int = 0):
        bits = self.stream_bits(batch, device)
        masked = self._masked(bits)
        loss, acc = self._bit_loss(model(bits, masked, self.classes(batch, device)), bits, masked)
        return loss, {"loss": float(loss.detach()), "bit_acc": float(acc)}

    def _eval_batch(self, model, batch, device, generator):
        bits = self.stream_bits(batch, device)
        masked = self._masked(bits, generator)
        return self._bit_loss(model(bits, masked, self.classes(batch, device)), bits, masked)

    @torch.no_grad()
    def sample(self, model, cond: dict, batch: int, device, generator=None) -> torch.Tensor:
        c = self.bcfg
        bits = model.generate(batch, cond.get("class"), steps=c.steps, temperature=c.temperature, cfg=c.cfg,
                              generator=generator, cfg_ramp=c.cfg_ramp)
        return self.decode(bits, device)


@dataclass
class DiffusionTask(_TokenBaseline):
    name: str = "diffusion"
    model_class = LatentDiffusion

    def latent_shape(self) -> tuple[int, int, int, int]:
        tok = self.tokenizer_meta["model_kwargs"]
        side = self.cfg.preprocess.crop_size // tok["spatial_down"]
        return tok["bits"], latent_frames(self.frames, tok["temporal_down"]), side, side

    def model_kwargs(self) -> dict:
        size, c = self.bcfg.size, self.bcfg
        d, t, h, w = self.latent_shape()
        return dict(channels=d, tokens=t * h * w, width=size.width, depth=size.depth, heads=size.heads,
                    num_classes=len(self.class_names()), cond_dropout=self.cfg.model.conditioning.dropout,
                    timesteps=c.timesteps)

    def latents(self, model, batch: dict, device) -> torch.Tensor:
        """The batch's continuous latents as tokens (B, L, d), scaled to unit variance (the scale is fixed on the
        first training batch and stored with the weights)."""
        z = self._encode(batch, device)
        if float(model.latent_scale) == 0:
            model.latent_scale.fill_(1.0 / float(z.std().clamp_min(1e-6)))
        return z.flatten(2).transpose(1, 2) * model.latent_scale

    def _denoising_loss(self, model, batch, device, generator=None) -> torch.Tensor:
        """DDPM: regress the noise added at a random timestep (mean squared error), through the model's forward."""
        bare = unwrap(model)
        noisy, t, noise = bare.noised(self.latents(bare, batch, device), generator)
        return F.mse_loss(model(noisy, t, self.classes(batch, device)).float(), noise)

    def loss(self, model, batch, device, step: int = 0):
        loss = self._denoising_loss(model, batch, device)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> dict[str, float]:
        model.eval()
        generator = torch.Generator(device=device).manual_seed(self.cfg.seed)
        sums = {"seen": 0.0, "loss_sum": 0.0}
        for batch in loader:
            n = batch_size(batch)
            sums["loss_sum"] += float(self._denoising_loss(model, batch, device, generator)) * n
            sums["seen"] += n
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return {"val_loss": sums["loss_sum"] / max(sums["seen"], 1.0)}

    @torch.no_grad()
    def sample(self, model, cond: dict, batch: int, device, generator=None) -> torch.Tensor:
        c = self.bcfg
        x = model.generate(batch, cond.get("class"), steps=c.sample_steps, cfg=c.cfg, eta=c.eta, generator=generator)
        d, t, h, w = self.latent_shape()
        z = (x / model.latent_scale).transpose(1, 2).reshape(batch, d, t, h, w)
        tok = self.tokenizer(device)
        video = tok.decoder(tok.quantizer(z.to(tok.decoder.conv_in.conv.weight.dtype)).z_q, self.frames).float()
        return _unit(video, self.normalize)


@dataclass
class GANTask(StreamTask):
    """Pixel space: no tokenizer; the videos' normalization comes from the prepared data."""

    name: str = "gan"
    _stats: dict | None = None
    encodes = False

    @property
    def bcfg(self):
        return self.cfg.baselines.gan

    @property
    def train_cfg(self) -> TrainConfig:
        lr = self.bcfg.lr
        return self.cfg.train if lr is None else replace(self.cfg.train, lr=lr)

    def check_data(self) -> None:
        require_splits(self.data_dir, self.cfg.data.name)  # pixels only: no tokenizer needed

    @property
    def normalize(self) -> dict:
        if self._stats is None:
            self._stats = VideoDataset(self.data_dir / "val", self.cfg.preprocess, train=False, seed=self.cfg.seed).stats
        return self._stats

    def model_kwargs(self) -> dict:
        c = self.bcfg
        return dict(frames=self.frames, size=self.cfg.preprocess.crop_size, noise_dim=c.noise_dim, channels=c.channels,
                    critic_channels=c.critic_channels, num_classes=len(self.class_names()), augment=list(c.augment),
                    classifier_weight=c.classifier_weight)

    def build_model(self) -> nn.Module:
        return VideoGAN(**self.model_kwargs())

    def optimizer_groups(self, model: nn.Module) -> list[dict]:
        """One AdamW group per player and kind of tensor (matrices and kernels decay, biases and gains do not):
        the generator at ``train_cfg.lr``, the critic at ``critic_lr_ratio`` times it (two time-scale update
        rule), both with ``baselines.gan.betas``. The learning-rate schedule scales every group alike."""
        c, tcfg = self.bcfg, self.train_cfg
        groups = []
        for player, lr in (("generator", tcfg.lr), ("critic", tcfg.lr * c.critic_lr_ratio)):
            params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(player)]
            for decay in (True, False):
                chosen = [p for p in params if (p.ndim >= 2) == decay]
                if chosen:
                    groups.append({"params": chosen, "lr": lr, "betas": tuple(c.betas),
                                   "weight_decay": tcfg.weight_decay if decay else 0.0})
        assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
        return groups

    def export_meta(self) -> dict:
        return {"model_kwargs": self.model_kwargs(), "class_names": self.class_names(), "normalize": self.normalize}

    def _as_model_range(self, video: torch.Tensor) -> torch.Tensor:
        """Dataset videos (B, T, C, H, W, normalized) -> (B, C, T, H, W) in [-1, 1], the generator's range."""
        return _unit(video.transpose(1, 2), self.normalize) * 2 - 1

    def r1_weight(self, step: int) -> float:
        """The R1 term's weight at optimizer step ``step``: gamma / 2, times ``r1_every`` on every ``r1_every``-th
        step and 0 on the others (lazy regularization, as in StyleGAN2)."""
        c = self.bcfg
        return c.r1_gamma / 2 * c.r1_every if c.r1_gamma > 0 and step % c.r1_every == 0 else 0.0

    def loss(self, model, batch, device, step: int = 0):
        """Critic and generator losses summed (each trains only its own player). First the generator's EMA
        takes in the weights the ``step`` optimizer steps so far left (once per step), so the exported EMA
        lags the final optimizer step by one."""
        unwrap(model).update_ema(step, self.bcfg.ema_decay)
        real = self._as_model_range(batch["video"].to(device))
        critic, generator, r1 = model(real, batch["class"].to(device) if "class" in batch else None,
                                      r1_weight=self.r1_weight(step))
        loss = critic + generator
        parts = {"loss": float(loss.detach()), "critic": float(critic.detach()), "generator": float(generator.detach())}
        if self.r1_weight(step) > 0:
            parts["r1"] = float(r1)
        return loss, parts

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> dict[str, float]:
        """The critic's margin between real validation videos and the EMA generator's (smaller: harder to tell
        apart)."""
        model.eval()
        generator = torch.Generator(device=device).manual_seed(self.cfg.seed)
        sums = {"seen": 0.0, "gap_sum": 0.0}
        for batch in loader:
            real = self._as_model_range(batch["video"].to(device))
            classes = batch["class"].to(device) if "class" in batch else None
            fake = model.generate(model.sample_noise(real.shape[0], generator, device), classes)
            sums["gap_sum"] += float((model.critic(real, classes) - model.critic(fake, classes)).sum())
            sums["seen"] += real.shape[0]
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return {"val_critic_gap": sums["gap_sum"] / max(sums["seen"], 1.0)}

    @torch.no_grad()
    def sample(self, model, cond: dict, batch: int, device, generator=None) -> torch.Tensor:
        """Videos in [0, 1] from the EMA generator."""
        video = model.generate(model.sample_noise(batch, generator, device), cond.get("class"))
        return (video.float() + 1) / 2


BASELINE_TASKS = {"raster_ar": RasterARTask, "maskgit": MaskGITTask, "gan": GANTask, "diffusion": DiffusionTask}
