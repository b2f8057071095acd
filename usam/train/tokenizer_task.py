"""The tokenizer as a training task: the seed's loss suite, its metrics, and reconstruction panels.

Losses (each weighted in ``tokenizer.loss``, 0 turns one off): L1 and L2 reconstruction;
a perceptual distance (real LPIPS on local weights, else the domain evaluator's, labelled);
a 3D PatchGAN hinge loss with a start step and VQGAN's adaptive weight; temporal
consistency; denoising and super-resolution auxiliaries (a share of each batch gets a
corrupted input and must still give back the clean clip, so they cost no extra pass);
BSQ commitment and entropy; and two optional auxiliary objectives for stable representations, off by default:
contrastive (InfoNCE between two views of each clip) and predictive (the next latent frame from the earlier ones).
Their heads are training-only (``model.aux``, like ``model.discriminator``): never part of the rebuilt tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from usam.artifacts.layout import Weights
from usam.config.schema import Config, TokenizerConfig, TrainConfig
from usam.data import VideoDataset
from usam.data.dataset import stats_tensors
from usam.errors import ConfigError, UsamError
from usam.media import video_metrics as vm
from usam.media.panels import save_gif, save_png, side_by_side_frames, strip_grid
from usam.media.perceptual import DOMAIN_LABEL, LPIPS_LABEL, LpipsDistance, load_domain_distance
from usam.models.bsq import check_schedule
from usam.models.tokenizer import LatentPredictor, PatchGAN3d, ProjectionHead, SpacetimeTokenizer, latent_frames
from usam.train.task import Task, require_splits, unwrap

ROLE_RECON, ROLE_DENOISE, ROLE_SR = 0, 1, 2


def tokenizer_kwargs(tcfg: TokenizerConfig, grad_checkpointing: bool = False) -> dict:
    """Constructor arguments of :class:`SpacetimeTokenizer` (also stored with exported weights)."""
    a, q = tcfg.arch, tcfg.quantizer
    return dict(
        bits=q.bits, base_channels=a.base_channels, res_blocks=a.res_blocks, spatial_down=a.spatial_down,
        temporal_down=a.temporal_down, temporal_fusion=a.temporal_fusion, residual=a.residual,
        scales=list(q.scales), multiscale=q.multiscale, clip_frames=q.clip_frames,
        entropy_temperature=q.entropy_temperature, entropy_gamma=q.entropy_gamma, grad_checkpointing=grad_checkpointing,
    )


def stage_names(schedule) -> list[str]:
    """Readable names of the token stream's stages, e.g. ``img_1x2x2`` or ``clip1_4x8x8``."""
    return [f"{'img' if s.segment == 0 else f'clip{s.segment}'}_{s.frames}x{s.side}x{s.side}" for s in schedule.stages]


@dataclass
class TokenizerTask(Task):
    cfg: Config
    data_dir: Path  # <data.root>/prepared/<dataset>
    frame_evaluator: Weights  # the domain perceptual loss's network: the `evaluators` stage's, or the configured one
    lpips: Path | None  # eval.lpips_weights, resolved
    name: str = "tokenizer"
    _perceptual: nn.Module | None = field(default=None, repr=False)
    _stats: dict | None = field(default=None, repr=False)

    @property
    def tcfg(self) -> TokenizerConfig:
        return self.cfg.tokenizer

    @property
    def train_cfg(self) -> TrainConfig:
        return self.tcfg.train

    # ---- data and model -------------------------------------------------------------------------------------

    def check_data(self) -> None:
        """Everything a run needs, checked before Ray starts: a schedule that tiles the frames, the data,
        the perceptual network's weights."""
        problems = schedule_problems(self.cfg)
        if problems:
            raise ConfigError("the tokenizer's scale schedule does not fit the frames it gets:\n  - " + "\n  - ".join(problems),
                              where="tokenizer.arch / tokenizer.quantizer vs data.frames / preprocess.crop_size",
                              fix="change the scales or clip_frames as suggested, or the frame count / crop size")
        require_splits(self.data_dir, self.cfg.data.name)
        backend = self.perceptual_backend
        if backend == "lpips" and not self.lpips.is_file():
            raise UsamError("LPIPS backbone weights not found", where=f"eval.lpips_weights = {self.cfg.eval.lpips_weights}",
                            fix="copy torchvision's AlexNet state dict there, or set tokenizer.loss.perceptual.backend=domain")
        if backend == "domain" and not self.frame_evaluator.path.is_file():
            raise UsamError("the domain perceptual loss needs the frame evaluator, which is not trained yet",
                            where=str(self.frame_evaluator.path),
                            fix=f"run `dvc repro evaluators@{self.cfg.data.name}`, point "
                                "tokenizer.loss.perceptual.domain_weights at a frame evaluator, or set "
                                "tokenizer.loss.perceptual.weight=0")

    def dataset(self, split: str, *, train: bool) -> VideoDataset:
        ds = VideoDataset(self.data_dir / split, self.cfg.preprocess, train=train, seed=self.cfg.seed)
        self._stats = ds.stats
        return ds

    def build_model(self) -> nn.Module:
        model = SpacetimeTokenizer(**tokenizer_kwargs(self.tcfg, self.train_cfg.runtime.grad_checkpointing))
        adv = self.tcfg.loss.adversarial
        if adv.weight > 0:
            model.discriminator = PatchGAN3d(adv.channels, adv.layers)
        heads = aux_heads(self.tcfg)
        if heads:  # built only when switched on: with both weights 0 no parameter is made and no RNG is drawn
            model.aux = nn.ModuleDict(heads)
        return model

    def export_meta(self) -> dict:
        """Stored beside the exported weights: enough to rebuild and feed the tokenizer without the config."""
        return {"model_kwargs": tokenizer_kwargs(self.tcfg), "normalize": self.stats,
                "frames": self.cfg.preprocess.augment.clip_frames or self.cfg.data.frames,
                "frame_size": self.cfg.preprocess.crop_size, "perceptual": self.perceptual_label}

    @property
    def stats(self) -> dict:
        if self._stats is None:
            self.dataset("val", train=False)
        return self._stats

    # ---- perceptual distance ---------------------------------------------------------------------------------

    @property
    def perceptual_backend(self) -> str | None:
        p = self.tcfg.loss.perceptual
        if p.weight == 0:
            return None
        if p.backend == "auto":
            return "lpips" if self.cfg.eval.lpips_weights else "domain"
        return p.backend

    @property
    def perceptual_label(self) -> str | None:
        return {"lpips": LPIPS_LABEL, "domain": DOMAIN_LABEL, None: None}[self.perceptual_backend]

    def perceptual(self, device: torch.device) -> nn.Module | None:
        if self._perceptual is None and self.perceptual_backend is not None:
            if self.perceptual_backend == "lpips":
                net = LpipsDistance(self.lpips, self.cfg.eval.lpips_sha256)
            else:
                net = load_domain_distance(self.frame_evaluator.path, self.frame_evaluator.sha256, self.stats)
            self._perceptual = net.to(device)
        return self._perceptual

    # ---- training --------------------------------------------------------------------------------------------

    def _unit(self, video: torch.Tensor) -> torch.Tensor:
        """Normalized (B, C, T, H, W) -> pixel values (0..1 for real frames; not clamped, so gradients flow)."""
        mean, std = stats_tensors(self.stats, (1, -1, 1, 1, 1), video.device)
        return video.float() * std + mean

    def _corrupt(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs with a share of the batch noised (denoising) or downsampled (super-resolution); per-sample roles."""
        loss = self.tcfg.loss
        dn, sr = loss.denoise, loss.super_resolution
        u = torch.rand(video.shape[0], device=video.device)
        role = torch.full_like(u, ROLE_RECON, dtype=torch.long)
        if dn.weight > 0:
            role[u < dn.share] = ROLE_DENOISE
        if sr.weight > 0:
            role[(u >= dn.share) & (u < dn.share + sr.share)] = ROLE_SR
        inputs = video
        if (role == ROLE_DENOISE).any():
            noised = video + dn.strength * torch.randn_like(video)
            inputs = torch.where((role == ROLE_DENOISE).view(-1, 1, 1, 1, 1), noised, inputs)
        if (role == ROLE_SR).any():
            inputs = torch.where((role == ROLE_SR).view(-1, 1, 1, 1, 1), low_resolution(video, sr.strength), inputs)
        return inputs, role

    def loss(self, model: nn.Module, batch: dict, device: torch.device, step: int = 0) -> tuple[torch.Tensor, dict]:
        L = self.tcfg.loss
        video = batch["video"].to(device).transpose(1, 2)  # (B, C, T, H, W)
        inputs, role = self._corrupt(video)
        out = model(inputs)
        recon = out.recon.float()
        err = recon - video
        per_video = L.l1 * err.abs().flatten(1).mean(1) + L.l2 * err.pow(2).flatten(1).mean(1)
        weights = torch.ones_like(per_video)
        weights[role == ROLE_DENOISE] = L.denoise.weight
        weights[role == ROLE_SR] = L.super_resolution.weight
        nll = (weights * per_video).mean()
        parts = {"l1": _num(err.abs().mean()), "l2": _num(err.pow(2).mean())}
        for name, r in (("recon", ROLE_RECON), ("denoise", ROLE_DENOISE), ("super_resolution", ROLE_SR)):
            if (role == r).any():
                parts[name] = _num(per_video[role == r].mean())
        if L.temporal > 0:
            tc = vm.temporal_change_error(recon, video).mean()
            nll = nll + L.temporal * tc
            parts["temporal"] = _num(tc)
        net = self.perceptual(device)
        if net is not None:
            p = net(_frames(self._unit(recon)), _frames(self._unit(video))).mean()
            nll = nll + L.perceptual.weight * p
            parts[self.perceptual_label] = _num(p)
        loss = nll + L.commitment * out.quant.commitment + L.entropy * out.quant.entropy
        parts["commitment"], parts["entropy"] = _num(out.quant.commitment), _num(out.quant.entropy)
        bare = unwrap(model)
        if L.adversarial.weight > 0:
            loss = loss + self._adversarial(bare, video, recon, nll, step, parts)
        if L.contrastive.weight > 0:
            c = self._contrastive(bare, video, out.latent)
            loss = loss + L.contrastive.weight * c
            parts["contrastive"] = _num(c)
        if L.predictive.weight > 0:
            pred = predictive_loss(bare.aux["predictive"], out.latent, L.predictive.detach_target)
            loss = loss + L.predictive.weight * pred
            parts["predictive"] = _num(pred)
        parts = {"loss": _num(loss), **parts}
        return loss, parts

    def _contrastive(self, bare: nn.Module, video: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """InfoNCE between the latent of the training input (``latent``: noised or downsampled for the
        denoising / super-resolution share) and that of a second view of the clean clip (shifted, brightness
        jittered; one extra encoder pass); the batch's other clips are the negatives."""
        c = self.tcfg.loss.contrastive
        mean, std = stats_tensors(self.stats, (1, -1, 1, 1, 1), video.device)
        view = second_view(video, mean, std, c.shift, c.brightness)
        other = bare._run(bare.encoder, view)
        head = bare.aux["contrastive"]
        return info_nce(head(latent), head(other), c.temperature)

    def _adversarial(self, bare: nn.Module, video, recon, nll, step: int, parts: dict) -> torch.Tensor:
        """Hinge PatchGAN: the critic learns from step 0; the generator term starts at ``start_step``."""
        adv = self.tcfg.loss.adversarial
        disc = bare.discriminator
        d_loss = hinge_critic_loss(disc(video), disc(recon.detach()))
        parts["critic"] = _num(d_loss)
        if step < adv.start_step:
            return d_loss
        disc.requires_grad_(False)  # the generator's term must not train the critic
        try:
            g_loss = hinge_generator_loss(disc(recon))
        finally:
            disc.requires_grad_(True)
        weight = adv.weight
        if adv.adaptive:
            last = bare.decoder.last_layer
            g_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
            g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
            weight = weight * float((g_nll.norm() / (g_adv.norm() + 1e-4)).clamp(0, adv.max_adaptive))
        parts["generator"], parts["adaptive_weight"] = _num(g_loss), weight
        return d_loss + weight * g_loss

    # ---- evaluation ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict[str, float]:
        """Sums over videos (so shards can be all-reduced); :meth:`summarize` turns them into metrics."""
        model.eval()
        net = self.perceptual(device)
        sums: dict[str, float] = {}

        def add(key: str, value) -> None:
            sums[key] = sums.get(key, 0.0) + float(value)

        for batch in loader:
            video = batch["video"].to(device).transpose(1, 2)
            out = model(video)
            target, recon = self._unit(video).clamp(0, 1), self._unit(out.recon.float()).clamp(0, 1)
            add("seen", video.shape[0])
            add("psnr", vm.psnr(recon, target).sum())
            add("ssim", vm.ssim(recon, target).sum())
            add("l1", (recon - target).abs().flatten(1).mean(1).sum())
            add("flicker", vm.flicker(recon).sum())
            add("flicker_input", vm.flicker(target).sum())
            add("temporal_error", vm.temporal_change_error(recon, target).sum())
            if net is not None:
                dist = net(_frames(recon), _frames(target)).view(video.shape[0], -1).mean(1)
                add("perceptual", dist.sum())
            schedule = out.quant.schedule
            latent = out.latent.float()
            for k in range(1, len(schedule.scales) + 1):
                prefix = model.quantizer.cumulative(out.quant.codes, schedule, k)
                partial = model.decoder(prefix, video.shape[2])
                add(f"psnr_prefix_{k}", vm.psnr(self._unit(partial.float()).clamp(0, 1), target).sum())
                add(f"latent_residual_prefix_{k}", relative_residual(latent, prefix.float()).sum())
            for name, code in zip(stage_names(schedule), out.quant.codes):
                ones = (code > 0).transpose(0, 1).flatten(1).float()  # (d, tokens)
                add(f"tokens/{name}", ones.shape[1])
                for bit, count in enumerate(ones.sum(1).tolist()):
                    add(f"ones/{name}/{bit}", count)
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        seen = max(sums.get("seen", 0.0), 1.0)
        out = {f"val_{k}": sums[k] / seen for k in ("psnr", "ssim", "l1", "flicker", "flicker_input", "temporal_error")}
        if "perceptual" in sums:
            out[f"val_{self.perceptual_label}"] = sums["perceptual"] / seen
        out.update({f"val_{k}": v / seen for k, v in sums.items() if k.startswith(("psnr_prefix_", "latent_residual_prefix_"))})
        entropies, dead = [], 0
        for key in sorted(k for k in sums if k.startswith("tokens/")):
            name = key.split("/", 1)[1]
            p = np.array([sums[f"ones/{name}/{b}"] for b in range(self.tcfg.quantizer.bits)]) / max(sums[key], 1.0)
            ent = float(np.mean(_bernoulli_entropy(p)))
            out[f"val_bit_entropy/{name}"] = ent
            entropies.append(ent)
            dead += int(((p < 0.01) | (p > 0.99)).sum())
        if entropies:
            out["val_bit_entropy"] = float(np.mean(entropies))
            out["val_dead_bits"] = float(dead)
        return out

    @torch.no_grad()
    def visuals(self, model: nn.Module, dataset: VideoDataset, device: torch.device, folder: Path) -> list[Path]:
        """Reconstruction panels of the first validation videos: input vs output strips (PNG), a side-by-side
        GIF, and the coarse-to-fine reconstructions from each prefix of scales (PNG)."""
        n = min(self.tcfg.eval.panel_videos, len(dataset))
        if n == 0:
            return []
        was_training = model.training
        model.eval()
        video = torch.stack([dataset[i]["video"] for i in range(n)]).to(device).transpose(1, 2)
        out = model(video)
        target, recon = self._unit(video).clamp(0, 1), self._unit(out.recon.float()).clamp(0, 1)
        schedule = out.quant.schedule
        prefixes = [self._unit(model.decoder(model.quantizer.cumulative(out.quant.codes, schedule, k), video.shape[2])
                               .float()).clamp(0, 1) for k in range(1, len(schedule.scales) + 1)]
        model.train(was_training)
        frames = lambda v: v.transpose(0, 1)  # noqa: E731  (C, T, H, W) -> (T, C, H, W)
        rows = [frames(r) for i in range(n) for r in (target[i], recon[i])]
        files = [save_png(strip_grid(rows), folder / "reconstruction.png"),
                 save_gif(side_by_side_frames([[frames(v) for v in target], [frames(v) for v in recon]]),
                          folder / "reconstruction.gif"),
                 save_png(strip_grid([frames(p[0]) for p in prefixes] + [frames(target[0])]), folder / "coarse_to_fine.png")]
        return files


def schedule_problems(cfg: Config) -> list[str]:
    """Why the tokenizer's scale schedule cannot tile the frames this config feeds it (empty when it can)."""
    arch, q = cfg.tokenizer.arch, cfg.tokenizer.quantizer
    side, frames = cfg.preprocess.crop_size, cfg.preprocess.augment.clip_frames or cfg.data.frames
    where = f"{frames} frames of {side}x{side}, spatial_down {arch.spatial_down}, temporal_down {arch.temporal_down}"
    if side % arch.spatial_down:
        return [f"preprocess.crop_size = {side} is not divisible by tokenizer.arch.spatial_down = {arch.spatial_down}: "
                "pick a crop size that is a multiple of it"]
    grid = side // arch.spatial_down
    later = latent_frames(frames, arch.temporal_down) - 1
    clip = later if q.clip_frames is None else q.clip_frames
    return [f"{problem} ({where}): set tokenizer.quantizer.scales to end at {grid} and tokenizer.quantizer.clip_frames "
            f"to a divisor of {later} (or null)" for problem in check_schedule(tuple(q.scales), grid, later, clip)]


def aux_heads(tcfg: TokenizerConfig) -> dict[str, nn.Module]:
    """The training-only heads of the auxiliary objectives that are switched on (none by default)."""
    L, bits = tcfg.loss, tcfg.quantizer.bits
    heads: dict[str, nn.Module] = {}
    if L.contrastive.weight > 0:
        heads["contrastive"] = ProjectionHead(bits, L.contrastive.dim)
    if L.predictive.weight > 0:
        heads["predictive"] = LatentPredictor(bits, L.predictive.hidden, L.predictive.kernel)
    return heads


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over unit vectors (N, D): row i of ``a`` and row i of ``b`` are a positive pair, every
    other row of the other side is a negative. log N when the views tell nothing apart; towards 0 when each
    view is closer to its partner than to any other clip."""
    logits = a.float() @ b.float().t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def predictive_loss(predictor: nn.Module, latent: torch.Tensor, detach_target: bool = True) -> torch.Tensor:
    """MSE of the predicted against the actual latent frames 1..t-1 (each predicted from the frames before it)."""
    target = latent[:, :, 1:].float()
    return F.mse_loss(predictor(latent).float(), target.detach() if detach_target else target)


def second_view(video: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, shift: int, brightness: float
                ) -> torch.Tensor:
    """The contrastive second view of normalized clips (B, C, T, H, W): per clip, its brightness (in pixel
    values) scaled by a factor in [1 - brightness, 1 + brightness] and every frame shifted by up to ``shift``
    pixels in each direction (edges replicated), the same for all frames of a clip."""
    b, _, _, h, w = video.shape
    gain = 1 + brightness * (2 * torch.rand(b, 1, 1, 1, 1, device=video.device) - 1)
    out = ((video.float() * std + mean) * gain - mean) / std
    if shift > 0:
        padded = F.pad(out, (shift, shift, shift, shift, 0, 0), mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (b, 2)).tolist()
        out = torch.stack([padded[i, :, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    return out


def hinge_critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Zero once real patches score >= 1 and fake ones <= -1."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def low_resolution(video: torch.Tensor, factor: float) -> torch.Tensor:
    """Each frame area-downsampled by ``factor`` and scaled back up (bilinear): the super-resolution input."""
    b, c, t, h, w = video.shape
    frames = video.transpose(1, 2).reshape(b * t, c, h, w)
    small = F.interpolate(frames, size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="area")
    big = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return big.reshape(b, t, c, h, w).transpose(1, 2)


def _num(t: torch.Tensor) -> float:
    return float(t.detach())


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B * T, C, H, W)."""
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


def _bernoulli_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def relative_residual(latent: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Per video: ||latent - approx|| / ||latent|| (what a prefix of scales leaves of the latent)."""
    return (latent - approx).flatten(1).norm(dim=1) / latent.flatten(1).norm(dim=1).clamp_min(1e-12)
