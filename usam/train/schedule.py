"""Learning-rate schedules: linear warmup, then cosine, cosine with warm restarts, linear or constant."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from usam.config.schema import TrainConfig


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    t = step - cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine_restarts":
        phase = (t % cfg.restart_steps) / cfg.restart_steps
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * phase))
    progress = min(1.0, t / max(1, total_steps - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig, total_steps: int) -> LambdaLR:
    """A plain closure on purpose: LambdaLR's state_dict stores nothing for functions (only the step
    count), so checkpoints stay loadable with ``weights_only=True`` and the schedule comes from config."""

    def factor(step: int) -> float:
        return lr_factor(step, cfg, total_steps)

    return LambdaLR(optimizer, factor)
