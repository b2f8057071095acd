"""What the training loop does around each step, one small hook each: EMA, validation, MLflow logging,
fault injection, the non-finite guard and checkpoints.

The loop (``usam.train.loop.Trainer``) calls every hook in registration order at ``before_train``,
``after_forward`` (between a micro-batch's forward and backward), ``after_step`` (after an optimizer
step), ``after_epoch`` and ``after_train``; a hook reads what it needs from the trainer it is given.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from usam.models import parameter_count
from usam.seeding import dataloader_generator
from usam.track.run import TrackedRun
from usam.train import checkpoint as ckpt
from usam.train.sampler import ShardedEpochSampler


class StopTraining(Exception):
    """Raised by a hook to end training at once, saving nothing more (the last checkpoint stays the latest)."""


class HookBase:
    """A no-op at every point of the loop; ``trainer`` is set when the trainer registers the hook."""

    trainer = None

    def before_train(self) -> None:
        pass

    def after_forward(self, loss: torch.Tensor) -> torch.Tensor:
        """The micro-batch's loss, before backward (a hook may replace it, or stop training)."""
        return loss

    def after_step(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class EMA(HookBase):
    """An exponential moving average of the weights, in fp32, updated after every optimizer step: often the
    better weights to sample from, so it is checkpointed and exported alongside them."""

    def __init__(self, decay: float, parameters):
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in parameters]

    def after_step(self) -> None:
        with torch.no_grad():
            for e, p in zip(self.shadow, self.trainer.bare.parameters()):
                e.mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)


class Validation(HookBase):
    """The task's validation at the end of every epoch, sharded over the ranks; the checkpoint and the log of
    the epoch carry its metrics (``trainer.val``)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def after_epoch(self) -> None:
        t = self.trainer
        t.val = validate(t.task, t.bare, self.dataset, t.cfg.batch_size, t.session.rank, t.session.world,
                         t.session.device)


class MLflowLogging(HookBase):
    """Rank 0's record of the run in MLflow: the parameter count, per-step training metrics (every ``log_every``
    steps, with a compact progress line), per-epoch validation metrics and the task's visuals. Metrics are
    queued and sent by the run's background sender (``TrackedRun``), so no step waits on the store; a
    checkpoint waits for them (the record is complete up to every checkpoint), and so does the end of training,
    whether it ends well or with an error (``train_worker``)."""

    def __init__(self, tracking_uri: str, run_id: str, log_every: int, visuals_dataset, *, fresh: bool):
        from mlflow.tracking import MlflowClient

        self.run = TrackedRun(client=MlflowClient(tracking_uri), run_id=run_id)
        self.log_every, self.visuals_dataset, self.fresh = log_every, visuals_dataset, fresh
        self.t0 = self.t_last = time.perf_counter()
        self.samples = 0
        self.parts: dict[str, float] = {}
        self.count = 0

    def before_train(self) -> None:
        if self.fresh:  # a resumed run has its tag already
            self.run.set_tags({"model.parameters": parameter_count(self.trainer.bare)})
        else:  # the steps after its last checkpoint run again: what the store has of them is not logged twice
            self.run.skip_logged()

    def after_step(self) -> None:
        t = self.trainer
        progress, total, lr = t.progress, t.total_steps, t.scheduler.get_last_lr()[0]
        self.samples += t.cfg.batch_size * t.cfg.grad_accum * t.session.world
        self.count += 1
        memory_mb = _memory_mb(t.session.device)
        for k, v in t.parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v
        if progress.step % self.log_every and progress.step != total:
            return
        now = time.perf_counter()
        rate = self.samples / max(now - self.t_last, 1e-9)
        means = {f"train/{k}": v / self.count for k, v in self.parts.items()}
        self.run.log_metrics(
            {**means, "train/lr": lr, "train/grad_norm": t.grad_norm, "train/samples_per_s": rate,
             "train/memory_mb": memory_mb},
            step=progress.step,
        )
        eta = (total - progress.step) * (now - self.t0) / max(progress.step, 1)
        loss = means.get("train/loss", means.get("train/ce", float("nan")))
        print(f"step {progress.step}/{total} epoch {progress.epoch} loss {loss:.4f} lr {lr:.2e} "
              f"{rate:.0f} samples/s ETA {eta:.0f}s", flush=True)
        self.t_last, self.samples, self.parts, self.count = now, 0, {}, 0

    def after_epoch(self) -> None:
        t = self.trainer
        step, epoch = t.progress.step, t.progress.epoch
        self.run.log_metrics({f"val/{k[4:]}" if k.startswith("val_") else k: v for k, v in t.val.items()}, step=step)
        self.run.log_metrics({"epoch": epoch}, step=step)
        if epoch % t.cfg.runtime.visuals_every == 0 or epoch >= t.cfg.epochs or t.done:
            with tempfile.TemporaryDirectory() as folder:
                for path in t.task.visuals(t.bare, self.visuals_dataset, t.session.device, Path(folder)):
                    self.run.log_artifact(path, f"panels/step_{step:06d}")

    def flush(self) -> None:
        self.run.flush()


class FaultInjection(HookBase):
    """Chaos tests of recovery, on rank 0 at optimizer step ``step``: ``nan_loss`` turns that step's loss into
    NaN (the non-finite guard must stop the run), ``kill`` ends the worker process once after the step (Ray
    Train must restart the group from the last checkpoint; ``marker`` survives the restart)."""

    def __init__(self, kind: str, step: int, marker: Path):
        self.kind, self.step, self.marker = kind, step, marker

    def after_forward(self, loss: torch.Tensor) -> torch.Tensor:
        if self.kind == "nan_loss" and self.step == self.trainer.progress.step + 1:
            return loss * float("nan")
        return loss

    def after_step(self) -> None:
        if self.kind != "kill" or self.step != self.trainer.progress.step or self.marker.exists():
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text("failure injected\n")
        print(f"fault injection: killing rank 0 (pid {os.getpid()})", file=sys.stderr, flush=True)
        os._exit(1)


class NonFiniteGuard(HookBase):
    """A NaN/inf loss on any rank stops every rank before its backward, so no bad gradient reaches the
    weights and the last good checkpoint stays the latest. Ray Train surfaces only checkpointed metrics, so the
    logging rank tells the driver through ``marker`` (the failing step), and the driver raises the clear error."""

    def __init__(self, logging: MLflowLogging | None, marker: Path):
        self.logging, self.marker = logging, marker

    def after_forward(self, loss: torch.Tensor) -> torch.Tensor:
        if _all_true(bool(torch.isfinite(loss)), self.trainer.session.device):
            return loss
        if self.logging is not None:
            self.logging.flush()
            self.marker.write_text(json.dumps({"step": self.trainer.progress.step + 1}))
        raise StopTraining


class Checkpointer(HookBase):
    """A checkpoint every ``every`` optimizer steps within an epoch and at the end of every epoch, holding all a
    bit-exact resume needs: every rank writes its part (rank 0 the shared state, each rank its RNG states), then
    all report the same folder. Pending metrics are flushed first, so the record is complete up to it."""

    def __init__(self, every: int, ema: EMA | None, logging: MLflowLogging | None):
        self.every, self.ema, self.logging = every, ema, logging

    def after_step(self) -> None:
        t = self.trainer
        if t.progress.step % self.every == 0 and not t.done and t.progress.micro < t.micro_per_epoch:
            self.save({"loss": float(t.loss.detach())})

    def after_epoch(self) -> None:
        self.save(self.trainer.val)

    def save(self, metrics: dict) -> None:
        t = self.trainer
        with tempfile.TemporaryDirectory() as folder:
            shared = None
            if t.session.rank == 0:
                shared = {
                    "model": t.bare.state_dict(),
                    "optimizer": t.optimizer.state_dict(),
                    "scheduler": t.scheduler.state_dict(),
                    "scaler": t.scaler.state_dict(),
                    "ema": self.ema.shadow if self.ema is not None else None,
                    "progress": t.progress.__dict__.copy(),
                    # counted once, on the first micro-batch: a resumed run must not count (and so run) it again
                    "flops_per_micro": t.flops_per_micro,
                }
            local = {"rng": ckpt.rng_state(), "weights_sha256": ckpt.state_digest(t.bare.state_dict())}
            ckpt.write(Path(folder), t.session.rank, shared=shared, local=local)
            if self.logging is not None:
                self.logging.flush()
            # training compute so far: this rank's micro-batches x their FLOPs (counted once), x the ranks
            flops = t.flops_per_micro * t.progress.step * t.cfg.grad_accum * t.session.world
            t.session.report({**metrics, "step": t.progress.step, "epoch": t.progress.epoch, "train_flops": flops},
                             Path(folder))


def validate(task, model, dataset, batch_size: int, rank: int, world: int, device: torch.device) -> dict[str, float]:
    """The task's ``val_*`` metrics of ``model`` on ``dataset``, this rank's shard all-reduced with the others'."""
    sampler = ShardedEpochSampler(len(dataset), rank=rank, world=world, seed=0, shuffle=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=dataloader_generator(0, "val", rank))
    sums = _all_sum(task.evaluate(model, loader, device), device)
    model.train()
    return task.summarize(sums)


def _all_true(flag: bool, device: torch.device) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return float(t) == 0.0


def _all_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
