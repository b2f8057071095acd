"""The domain evaluators: frozen classifiers that judge every generated video (frame and clip kinds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from usam.config.schema import ClassifierConfig, Config, TrainConfig
from usam.data import VideoDataset
from usam.models.evaluators import ClipClassifier, FrameClassifier
from usam.train.task import SHAPE_KINDS, Task, require_splits


@dataclass
class EvaluatorTask(Task):
    """A domain evaluator on ``cfg.data.name``: per-frame (``frame``) or per-clip (``clip``) classifier.

    Targets: the digit class for moving_digits. For bouncing_shapes the clip classifier
    predicts the action cue (it needs motion), while the frame classifier predicts the
    shape kind, since a single frame cannot show an action.
    """

    cfg: Config
    data_dir: Path  # <data.root>/prepared/<dataset>
    kind: str  # "frame" | "clip"

    @property
    def name(self) -> str:
        return f"evaluator_{self.kind}"

    @property
    def train_cfg(self) -> TrainConfig:
        return self.cfg.evaluator.train

    @property
    def model_cfg(self) -> ClassifierConfig:
        return getattr(self.cfg.evaluator, self.kind)

    def check_data(self) -> None:
        """Fail before any work starts when the prepared data is missing."""
        require_splits(self.data_dir, self.cfg.data.name)

    def _targets(self, ds: VideoDataset) -> tuple[np.ndarray | None, list[str]]:
        if self.kind == "frame" and self.cfg.data.name == "bouncing_shapes":
            items = ds.meta()["items"]
            return np.array([SHAPE_KINDS.index(it["shapes"][0]["kind"]) for it in items]), list(SHAPE_KINDS)
        return None, ds.label_names

    def dataset(self, split: str, *, train: bool) -> VideoDataset:
        probe = VideoDataset(self.data_dir / split, self.cfg.preprocess, train=train, seed=self.cfg.seed)
        labels, names = self._targets(probe)
        ds = probe if labels is None else VideoDataset(
            self.data_dir / split, self.cfg.preprocess, train=train, seed=self.cfg.seed, labels=labels
        )
        ds.class_names = names
        return ds

    def num_classes(self) -> int:
        return len(self.dataset("train", train=False).class_names)

    def build_model(self) -> nn.Module:
        m = self.model_cfg
        net = FrameClassifier if self.kind == "frame" else ClipClassifier
        return net(
            num_classes=self.num_classes(), width=m.width, stages=m.stages,
            dropout=m.dropout, drop_path=m.drop_path, grad_checkpointing=self.train_cfg.runtime.grad_checkpointing,
        )

    def head_width(self, model: nn.Module) -> int:
        return model.head.out_features

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        video, label = batch["video"], batch["label"]  # (B, T, C, H, W), (B,)
        if self.kind == "frame":
            b, t = video.shape[:2]
            return video.flatten(0, 1), label.repeat_interleave(t)
        return video.permute(0, 2, 1, 3, 4), label

    def loss(self, model: nn.Module, batch: dict, device: torch.device, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(device) for t in self._inputs(batch))
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.train_cfg.label_smoothing)
        acc = (logits.argmax(-1) == y).float().mean()
        return loss, {"ce": float(loss.detach()), "acc": float(acc)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict[str, float]:
        """Summed counts (so shards can be all-reduced): correct, seen, loss_sum."""
        model.eval()
        correct = seen = loss_sum = 0.0
        for batch in loader:
            x, y = (t.to(device) for t in self._inputs(batch))
            logits = model(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(-1) == y).sum())
            seen += float(y.numel())
        return {"correct": correct, "seen": seen, "loss_sum": loss_sum}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        seen = max(sums["seen"], 1.0)
        return {"val_acc": sums["correct"] / seen, "val_loss": sums["loss_sum"] / seen}
