"""USAM as a training task: a frozen tokenizer feeds the transformer its token stream.

Each batch is encoded by the tokenizer saved by the ``tokenizer`` stage (frozen, no
gradient), quantized with bitwise self-correction (a random share of each stage's bits
flipped, later targets recomputed from the corrupted history), and the transformer learns
the per-bit cross-entropy, averaged per stage and weighted by a capped power of the stage's
token count. Validation is teacher-forced (no corruption); the pictures are sample grids.

``StreamTask`` holds what USAM shares with the baselines (``usam.train.baseline_tasks``):
the frozen tokenizer, the conditioned datasets, sample grids and the exported metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from usam.artifacts.layout import Weights
from usam.artifacts.loaders import load_tokenizer
from usam.artifacts.sampling import generate_videos
from usam.config.schema import Conditioning, Config, ModelConfig, TrainConfig
from usam.data import VideoDataset
from usam.data.text import TEXT_LEN, build_vocabulary, encode_text
from usam.errors import UsamError
from usam.media.panels import write_grid
from usam.models.tokenizer import latent_frames
from usam.models.usam import USAM, USAMConfig
from usam.seeding import dataloader_generator
from usam.train.task import SHAPE_KINDS, Task, require_splits, unwrap


class ConditionedVideos(torch.utils.data.Dataset):
    """A split plus the conditions USAM is trained with: class, action cue and caption ids per video."""

    def __init__(self, base: VideoDataset, classes: np.ndarray | None, actions: np.ndarray | None,
                 texts: torch.Tensor | None):
        self.base, self.classes, self.actions, self.texts = base, classes, actions, texts

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], **self.conditions_of(i)}

    def conditions_of(self, i: int) -> dict:
        """Video ``i``'s conditions alone (no frames are read)."""
        item = {}
        if self.classes is not None:
            item["class"] = torch.tensor(int(self.classes[i]))
        if self.actions is not None:
            item["action"] = torch.tensor(int(self.actions[i]))
        if self.texts is not None:
            item["text"] = self.texts[i]
        return item


class EncodedVideos(torch.utils.data.Dataset):
    """A split encoded once by the frozen tokenizer: items hold ``latent`` (the encoder's output) and the
    conditions, not the frames. Encoding is un-augmented and in fp32, batch by batch in index order."""

    def __init__(self, videos: ConditionedVideos, encode, device: torch.device, batch_size: int = 32):
        self.videos = videos
        # its own generator: iterating a loader otherwise draws a base seed from the global RNG
        loader = torch.utils.data.DataLoader(videos, batch_size=batch_size, shuffle=False,
                                             generator=dataloader_generator(0, "encode"))
        with torch.autocast(device.type, enabled=False):
            self.latents = torch.cat([encode(batch, device).cpu() for batch in loader])

    def set_epoch(self, epoch: int) -> None:
        """The latents are fixed: nothing changes between epochs."""

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latent": self.latents[i], **self.videos.conditions_of(i)}


@dataclass
class StreamTask(Task):
    """What every generator trained on a dataset's videos shares: the frozen tokenizer of the dataset (when
    the model works on its tokens or latents), the conditions, sample grids and the exported metadata."""

    cfg: Config
    data_dir: Path
    tokenizer_weights: Weights  # the `tokenizer` stage's (or a Tune trial's own) weights of this dataset
    name: str = "stream"
    _tokenizer: nn.Module | None = field(default=None, repr=False)
    _tokenizer_meta: dict | None = field(default=None, repr=False)
    _vocab: dict | None = field(default=None, repr=False)

    @property
    def conditioning(self) -> Conditioning:
        """Which conditions the model takes (the baselines: the class label only)."""
        return replace(self.cfg.model.conditioning, class_label=True, action=False, text=False, context_frames=False)

    @property
    def per_class(self) -> int:
        return self.cfg.model.sampling.per_class

    @property
    def train_cfg(self) -> TrainConfig:
        return self.cfg.train

    # ---- the tokenizer ---------------------------------------------------------------------------------------

    def tokenizer(self, device: torch.device | None = None) -> nn.Module:
        if self._tokenizer is None:
            model, meta = load_tokenizer(self.tokenizer_weights.path, self.tokenizer_weights.sha256)
            self._tokenizer, self._tokenizer_meta = model.requires_grad_(False).eval(), meta
        if device is not None:
            self._tokenizer.to(device)
        return self._tokenizer

    @property
    def tokenizer_meta(self) -> dict:
        self.tokenizer()
        return self._tokenizer_meta

    # ---- data ------------------------------------------------------------------------------------------------

    def check_data(self) -> None:
        """Everything a run needs, checked before Ray starts: data, the trained tokenizer, supported conditions."""
        name = self.cfg.data.name
        require_splits(self.data_dir, name)
        path = self.tokenizer_weights.path
        if not path.is_file():
            raise UsamError(f"{self.name} needs the trained tokenizer of its dataset", where=str(path),
                            fix=f"run `dvc repro tokenizer@{name}` (or `usam train tokenizer data.name={name}`)")
        meta = self.tokenizer_meta
        frames = self.frames
        if meta["frames"] != frames or meta["frame_size"] != self.cfg.preprocess.crop_size:
            raise UsamError(f"the tokenizer was trained on {meta['frames']} frames of {meta['frame_size']}px, "
                            f"this config feeds {frames} frames of {self.cfg.preprocess.crop_size}px", where=str(path),
                            fix="retrain the tokenizer with this config (`dvc repro tokenizer`) or restore the config")

    @property
    def frames(self) -> int:
        return self.cfg.preprocess.augment.clip_frames or self.cfg.data.frames

    @property
    def normalize(self) -> dict:
        return self.tokenizer_meta["normalize"]

    def class_names(self) -> list[str]:
        if self.cfg.data.name == "bouncing_shapes":
            return list(SHAPE_KINDS)
        return VideoDataset(self.data_dir / "train", self.cfg.preprocess, train=False, seed=self.cfg.seed).label_names

    def action_names(self) -> list[str]:
        return VideoDataset(self.data_dir / "train", self.cfg.preprocess, train=False, seed=self.cfg.seed).label_names

    def vocabulary(self) -> dict[str, int]:
        if self._vocab is None:
            base = VideoDataset(self.data_dir / "train", self.cfg.preprocess, train=False, seed=self.cfg.seed)
            self._vocab = build_vocabulary(base.meta()["captions"])
        return self._vocab

    def dataset(self, split: str, *, train: bool) -> ConditionedVideos:
        base = VideoDataset(self.data_dir / split, self.cfg.preprocess, train=train, seed=self.cfg.seed)
        cond = self.conditioning
        classes = actions = texts = None
        if cond.class_label:
            if self.cfg.data.name == "bouncing_shapes":
                classes = np.array([SHAPE_KINDS.index(it["shapes"][0]["kind"]) for it in base.meta()["items"]])
            else:
                classes = base.labels
        if cond.action:
            actions = base.labels
        if cond.text:
            vocab = self.vocabulary()
            texts = torch.stack([encode_text(c, vocab) for c in base.meta()["captions"]])
        return ConditionedVideos(base, classes, actions, texts)

    encodes = True  # the model learns the tokenizer's tokens or latents (the pixel GAN does not)

    def datasets(self, device: torch.device) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
        """Train and val splits for the training loop: with ``train.cache_latents`` each video is encoded once
        on ``device`` (the train split un-augmented), so a step no longer runs the frozen encoder."""
        if not (self.encodes and self.train_cfg.cache_latents):
            return self.dataset("train", train=True), self.dataset("val", train=False)
        return tuple(EncodedVideos(self.dataset(split, train=False), self._encode, device) for split in ("train", "val"))

    def conditions(self, batch: dict, device: torch.device, latent: torch.Tensor | None = None) -> dict:
        cond = {}
        if "class" in batch:
            cond["class"] = batch["class"].to(device)
        if "action" in batch:
            cond["action"] = batch["action"].to(device)
        if "text" in batch:
            cond["text"] = batch["text"].to(device)
        if self.conditioning.context_frames:
            cond["context"] = latent[:, :, :1].float()
        return cond

    def _encode(self, batch: dict, device: torch.device) -> torch.Tensor:
        """The encoder's continuous latents (B, d, t, h, w) of the batch (cached ones when it carries them)."""
        if "latent" in batch:
            return batch["latent"].to(device)
        tok = self.tokenizer(device)
        with torch.no_grad():
            return tok.encoder(batch["video"].to(device).transpose(1, 2)).float()

    def export_meta(self) -> dict:
        """Stored with the weights: how to rebuild the model and what its conditions mean."""
        cond = self.conditioning
        return {"model_kwargs": self.model_kwargs(),
                "tokenizer": {"path": self.tokenizer_weights.ref, "sha256": self.tokenizer_weights.sha256},
                "class_names": self.class_names() if cond.class_label else None,
                "action_names": self.action_names() if cond.action else None,
                "vocabulary": self.vocabulary() if cond.text else None,
                "normalize": self.normalize}

    # ---- sampling --------------------------------------------------------------------------------------------

    def grid_conditions(self, per: int, device: torch.device) -> tuple[dict, list[str]]:
        """One row per class (or action cue), ``per`` samples each: the conditions and the row names."""
        cond = self.conditioning
        if cond.class_label:
            names = self.class_names()
            key = "class"
        elif cond.action:
            names = self.action_names()
            key = "action"
        else:
            return {}, ["unconditional"]
        ids = torch.arange(len(names), device=device).repeat_interleave(per)
        return {key: ids}, names

    @torch.no_grad()
    def visuals(self, model: nn.Module, dataset, device: torch.device, folder: Path) -> list[Path]:
        """A sample grid (one row per class, PNG of frame strips and an animated GIF)."""
        if self.conditioning.text or self.conditioning.context_frames:
            return []  # the grid is per class; text and context samples come from `usam sample`
        per = self.per_class
        cond, names = self.grid_conditions(per, device)
        rows = len(names) * per
        generator = torch.Generator(device=device).manual_seed(self.cfg.seed)
        videos = self.sample(model, cond, rows, device, generator)
        return write_grid(videos, folder, "samples")


@dataclass
class USAMTask(StreamTask):
    """USAM on the frozen tokenizer's stream, with the conditions of ``model.conditioning``."""

    name: str = "usam"

    @property
    def mcfg(self) -> ModelConfig:
        return self.cfg.model

    @property
    def conditioning(self) -> Conditioning:
        return self.mcfg.conditioning

    def check_data(self) -> None:
        """Everything a run needs, checked before Ray starts: data, the trained tokenizer, supported conditions."""
        super().check_data()
        name, meta, frames = self.cfg.data.name, self.tokenizer_meta, self.frames
        if self.mcfg.conditioning.action and name != "bouncing_shapes":
            raise UsamError(f"dataset {name!r} has no action cues", where="model.conditioning.action",
                            fix="set model.conditioning.action=false, or data.name=bouncing_shapes")
        scales = len(meta["model_kwargs"]["scales"]) if meta["model_kwargs"]["multiscale"] else 1
        if len(self.mcfg.sampling.temperature) not in (1, scales):
            raise UsamError(f"model.sampling.temperature has {len(self.mcfg.sampling.temperature)} values for "
                            f"{scales} scales", where="model.sampling.temperature",
                            fix=f"give one value, or one per scale ({scales})")
        if self.mcfg.conditioning.context_frames and frames < 2:
            raise UsamError("context frames need videos of at least 2 frames", where="model.conditioning.context_frames",
                            fix="set model.conditioning.context_frames=false")

    def model_kwargs(self) -> dict:
        m, tok = self.mcfg, self.tokenizer_meta["model_kwargs"]
        scales = tuple(tok["scales"]) if tok["multiscale"] else (tok["scales"][-1],)
        cond = m.conditioning
        return dict(
            bits=tok["bits"], scales=list(scales), latent_frames=latent_frames(self.tokenizer_meta["frames"], tok["temporal_down"]),
            clip_frames=tok["clip_frames"], width=m.width, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio,
            dropout=m.dropout, drop_path=m.drop_path, attention=m.attention, positions=m.positions, qk_norm=m.qk_norm,
            num_classes=len(self.class_names()) if cond.class_label else 0,
            num_actions=len(self.action_names()) if cond.action else 0,
            text_vocab=len(self.vocabulary()) + 2 if cond.text else 0, text_len=TEXT_LEN,
            context=cond.context_frames, cond_dropout=cond.dropout,
        )

    def build_model(self) -> USAM:
        return USAM(USAMConfig(**self.model_kwargs(), grad_checkpointing=self.train_cfg.runtime.grad_checkpointing))

    # ---- training --------------------------------------------------------------------------------------------

    def head_width(self, model: USAM) -> int:
        return model.head.out_features

    def stage_weights(self, model: USAM, device) -> torch.Tensor:
        """Per token: its stage's weight / (the stage's tokens x the weights' sum), so the loss is the weighted
        mean over stages of each stage's mean bit cross-entropy."""
        loss = self.mcfg.loss
        stages = model.schedule.stages
        w = torch.tensor([min(st.tokens ** loss.scale_weight_power, loss.scale_weight_cap) for st in stages])
        per_token = torch.cat([torch.full((st.tokens,), float(wi) / st.tokens) for st, wi in zip(stages, w)])
        return (per_token / w.sum()).to(device)

    def loss(self, model: nn.Module, batch: dict, device: torch.device, step: int = 0) -> tuple[torch.Tensor, dict]:
        bare = unwrap(model)
        z = self._encode(batch, device)
        quantizer = self.tokenizer().quantizer
        corrupted, targets = quantizer.self_correction(z, self.mcfg.loss.self_correction)
        inputs = quantizer.next_scale_inputs(corrupted, bare.schedule)
        logits = model(inputs, self.conditions(batch, device, z))
        target = (bare.flatten(targets) > 0).long()
        ce = F.cross_entropy(logits.reshape(-1, 2), target.reshape(-1), reduction="none",
                             label_smoothing=self.mcfg.loss.label_smoothing).view(target.shape)
        loss = (ce.mean((0, 2)) * self.stage_weights(bare, device)).sum()
        acc = (logits.argmax(-1) == target).float().mean()
        return loss, {"loss": float(loss.detach()), "bit_acc": float(acc)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict[str, float]:
        """Teacher-forced sums over videos: weighted bit cross-entropy and bit accuracy, overall and per segment kind."""
        model.eval()
        quantizer = self.tokenizer(device).quantizer
        weights = self.stage_weights(model, device)
        image_tokens = model.bounds[len(model.schedule.scales)]
        sums = {"seen": 0.0, "loss_sum": 0.0, "bits_right": 0.0, "bits": 0.0, "image_right": 0.0, "image_bits": 0.0}
        for batch in loader:
            z = self._encode(batch, device)
            q = quantizer(z)
            logits = model(quantizer.next_scale_inputs(q.codes, q.schedule), self.conditions(batch, device, z))
            target = (model.flatten(q.codes) > 0).long()
            ce = F.cross_entropy(logits.reshape(-1, 2), target.reshape(-1), reduction="none").view(target.shape)
            right = (logits.argmax(-1) == target).float()
            sums["seen"] += z.shape[0]
            sums["loss_sum"] += float((ce.mean(2) * weights).sum())
            sums["bits_right"] += float(right.sum())
            sums["bits"] += right.numel()
            sums["image_right"] += float(right[:, :image_tokens].sum())
            sums["image_bits"] += right[:, :image_tokens].numel()
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        out = {"val_loss": sums["loss_sum"] / max(sums["seen"], 1.0), "val_bit_acc": sums["bits_right"] / max(sums["bits"], 1.0),
               "val_bit_acc_first_frame": sums["image_right"] / max(sums["image_bits"], 1.0)}
        clip_bits = sums["bits"] - sums["image_bits"]
        if clip_bits > 0:
            out["val_bit_acc_clips"] = (sums["bits_right"] - sums["image_right"]) / clip_bits
        return out

    @torch.no_grad()
    def sample(self, model: USAM, cond: dict, batch: int, device: torch.device, generator=None,
               forced=None) -> torch.Tensor:
        """Sampled videos in [0, 1], (B, 3, T, H, W), with the configured guidance, temperature, top-k/top-p."""
        return generate_videos(model, self.tokenizer(device), self.tokenizer_meta["normalize"],
                               self.tokenizer_meta["frames"], cond, batch, self.mcfg.sampling, generator, forced)

