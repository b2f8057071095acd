"""The training loop every model runs, on each Ray Train worker (or in this process, for one worker).

One function, ``train_worker``, for every task: AdamW with decoupled weight decay, warmup
then decay, gradient accumulation and clipping, autocast (bf16 on CPU too), EMA, and
checkpoints holding everything needed for a bit-exact resume: model, optimizer,
scheduler, scaler, EMA, progress (epoch, micro-batch, step) and every rank's RNG states.
Rank 0 logs metrics to the run's MLflow record in batches.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from usam.config.schema import Config
from usam.config.validate import build
from usam.models import parameter_count
from usam.seeding import dataloader_generator, derive_seed, seed_everything, worker_init_fn
from usam.track.run import TrackedRun
from usam.train import checkpoint as ckpt
from usam.train.sampler import ShardedEpochSampler
from usam.train.schedule import build_scheduler
from usam.train.tasks import make_task


@dataclass
class Progress:
    epoch: int = 0
    micro: int = 0  # micro-batches consumed in the current epoch (on each rank)
    step: int = 0  # optimizer steps taken


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and kernels, not biases or norm gains (the usual AdamW practice)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


class RayTrainSession:
    """One worker of a Ray Train worker group: its rank, device, restored checkpoint and reports."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        """The checkpoint to resume from, as a local folder (downloaded from remote storage if need be)."""
        import ray.train

        found = ray.train.get_checkpoint()
        if found is None:
            yield None
            return
        with found.as_directory() as folder:
            yield Path(folder)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # moves to the device; DDP when world > 1

    def report(self, metrics: dict, folder: Path) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))


class LocalSession:
    """The only worker, in this process: a Tune trial that needs no worker group (``tune=True``: every
    report and checkpoint goes to Tune, which restores the last one when the study resumes), or a short
    re-run with no Ray at all. Checkpoints are kept under ``folder`` (the last ``keep``); ``last`` is the
    latest report and its checkpoint folder."""

    rank, world = 0, 1

    def __init__(self, device: torch.device, folder: Path, keep: int = 1, *, tune: bool = False):
        self.device, self.folder, self.keep, self.tune = device, Path(folder), max(keep, 1), tune
        self.last: tuple[dict, Path] | None = None
        # a resumed trial numbers on from the checkpoints its earlier attempt kept (the newest are kept)
        self._count = max((int(p.name[11:]) for p in self.folder.glob("checkpoint_*") if p.name[11:].isdigit()),
                          default=0)

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        found = None
        if self.tune:
            from ray import tune

            found = tune.get_checkpoint()
        if found is None:
            yield None
            return
        with found.as_directory() as folder:
            self.report({}, Path(folder), to_tune=False)  # kept: a trial restored after its last epoch saves no more
            yield Path(folder)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, folder: Path, to_tune: bool = True) -> None:
        import shutil

        self._count += 1
        kept = self.folder / f"checkpoint_{self._count:06d}"
        shutil.copytree(folder, kept, dirs_exist_ok=True)
        for old in sorted(self.folder.glob("checkpoint_*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        self.last = (metrics, kept)
        if self.tune and to_tune:
            from ray import tune

            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(kept)))


def train_worker(payload: dict, session: RayTrainSession | LocalSession | None = None) -> None:
    """Ray Train entry point (or, with a ``LocalSession``, the one worker in this process). ``payload``:
    config dict, task name, paths and the MLflow run to log to (none: nothing is logged)."""
    cfg: Config = build(Config, payload["config"], source="training payload")
    task = make_task(payload["task"], cfg, payload["layout"], payload["inputs"])
    tcfg = task.train_cfg
    session = session or RayTrainSession()
    rank, world, device = session.rank, session.world, session.device
    torch.set_num_threads(tcfg.runtime.threads_per_worker)

    seed_everything(cfg.seed, deterministic=tcfg.runtime.deterministic)  # same initial weights on every rank
    model = task.build_model()
    seed_everything(derive_seed(cfg.seed, "rank", rank), deterministic=tcfg.runtime.deterministic)
    optimizer = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=(0.9, 0.95))

    train_ds, val_ds = _datasets(task, device)
    sampler = ShardedEpochSampler(len(train_ds), rank=rank, world=world, seed=cfg.seed)
    micro_per_epoch = sampler.per_rank // tcfg.batch_size
    steps_per_epoch = micro_per_epoch // tcfg.grad_accum
    total_steps = steps_per_epoch * tcfg.epochs
    if tcfg.max_steps is not None:
        total_steps = min(total_steps, tcfg.max_steps)
    scheduler = build_scheduler(optimizer, tcfg, total_steps)
    use_scaler = tcfg.precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    ema = [p.detach().clone().float() for p in model.parameters()] if tcfg.ema_decay > 0 else None
    progress = Progress()

    with session.restored() as restored:
        shared, local = ckpt.read(restored, rank) if restored is not None else (None, None)
    if shared is not None:
        model.load_state_dict(shared["model"])
        optimizer.load_state_dict(shared["optimizer"])
        scheduler.load_state_dict(shared["scheduler"])
        scaler.load_state_dict(shared["scaler"])
        if ema is not None and shared.get("ema") is not None:
            ema = [t.clone() for t in shared["ema"]]
        progress = Progress(**shared["progress"])
        if local is not None:
            ckpt.set_rng_state(local["rng"])

    model = session.prepare(model)
    bare = model.module if hasattr(model, "module") else model
    logger = _RankZeroLogger(payload, total_steps) if rank == 0 and payload.get("run_id") else None
    if logger is not None and shared is None:

        logger.run.set_tags({"model.parameters": parameter_count(bare)})

    def save(metrics: dict) -> None:
        """Every rank writes its part, then all report the same checkpoint folder."""
        with tempfile.TemporaryDirectory() as folder:
            shared = None
            if rank == 0:
                shared = {
                    "model": bare.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": ema,
                    "progress": progress.__dict__.copy(),
                }
            local = {"rng": ckpt.rng_state(), "weights_sha256": ckpt.state_digest(bare.state_dict())}
            ckpt.write(Path(folder), rank, shared=shared, local=local)
            if logger is not None:
                logger.flush()
            session.report({**metrics, "step": progress.step, "epoch": progress.epoch}, Path(folder))

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tcfg.precision)
    done = progress.step >= total_steps
    while not done and progress.epoch < tcfg.epochs:
        sampler.set_epoch(progress.epoch, start=progress.micro * tcfg.batch_size)
        train_ds.set_epoch(progress.epoch)
        # An explicit generator: a DataLoader iterator otherwise draws its base seed from the global RNG,
        # and a run resumed mid-epoch would draw once more than the uninterrupted one (other dropout masks).
        loader = DataLoader(
            train_ds, batch_size=tcfg.batch_size, sampler=sampler, drop_last=True,
            num_workers=tcfg.runtime.dataloader_workers, worker_init_fn=worker_init_fn,
            generator=dataloader_generator(cfg.seed, "train", progress.epoch, rank),
        )
        model.train()
        for batch in loader:
            last_micro = (progress.micro + 1) % tcfg.grad_accum == 0
            # DDP all-reduces gradients only on the micro-batch that ends an accumulation
            with model.no_sync() if (world > 1 and not last_micro) else _null():
                with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else _null():
                    loss, parts = task.loss(model, batch, device, progress.step)
                if rank == 0 and cfg.debug.fault_injection_kind == "nan_loss" and cfg.debug.fault_injection_step == progress.step + 1:
                    loss = loss * float("nan")
                finite = _all_true(bool(torch.isfinite(loss)), device)
                if finite:
                    scaler.scale(loss / tcfg.grad_accum).backward()
            if not finite:
                if logger is not None:
                    logger.flush()
                    # Train V2 surfaces only checkpointed metrics, so the driver learns of the stop from a file
                    Path(payload["nonfinite_marker"]).write_text(json.dumps({"step": progress.step + 1}))
                return  # the last good checkpoint stays the latest; the driver raises a clear error
            progress.micro += 1
            if not last_micro:
                continue
            scaler.unscale_(optimizer)
            max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                with torch.no_grad():
                    for e, p in zip(ema, bare.parameters()):
                        e.mul_(tcfg.ema_decay).add_(p.detach().float(), alpha=1 - tcfg.ema_decay)
            progress.step += 1
            if logger is not None:
                logger.step(progress, parts, scheduler.get_last_lr()[0], grad_norm,
                            samples=tcfg.batch_size * tcfg.grad_accum * world, memory_mb=_memory_mb(device))
            if cfg.debug.fault_injection_kind == "kill" and cfg.debug.fault_injection_step == progress.step and rank == 0:
                _inject_failure_once(Path(payload["fault_marker"]))
            done = progress.step >= total_steps
            if progress.step % tcfg.runtime.checkpoint_every == 0 and not done and progress.micro < micro_per_epoch:
                save({"loss": float(loss.detach())})
            if done:
                break
        if progress.micro >= micro_per_epoch or done:
            optimizer.zero_grad(set_to_none=True)  # an unfinished accumulation never crosses an epoch
            val = _validate(task, model, val_ds, tcfg.batch_size, rank, world, device)
            progress.epoch += 1
            progress.micro = 0
            if logger is not None:
                logger.epoch(progress, val)
                if progress.epoch % tcfg.runtime.visuals_every == 0 or progress.epoch >= tcfg.epochs or done:
                    logger.visuals(task, bare, val_ds, device, progress.step)
            save(val)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _inject_failure_once(marker: Path) -> None:
    """Chaos test: kill this worker process the first time only (the marker survives the restart)."""
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("failure injected\n")
    print(f"fault injection: killing rank 0 (pid {os.getpid()})", file=sys.stderr, flush=True)
    os._exit(1)


def _datasets(task, device: torch.device):
    """The train and val splits; a task may prepare them on the device itself (``datasets(device)``)."""
    if hasattr(task, "datasets"):
        return task.datasets(device)
    return task.dataset("train", train=True), task.dataset("val", train=False)


def _validate(task, model, dataset, batch_size, rank, world, device) -> dict[str, float]:
    sampler = ShardedEpochSampler(len(dataset), rank=rank, world=world, seed=0, shuffle=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=dataloader_generator(0, "val", rank))
    sums = _all_sum(task.evaluate(model, loader, device), device)
    model.train()
    return task.summarize(sums)


class _RankZeroLogger:
    """Buffers per-step metrics for MLflow and prints a compact progress line."""

    def __init__(self, payload: dict, total_steps: int):
        from mlflow.tracking import MlflowClient


        self.run = TrackedRun(client=MlflowClient(payload["tracking_uri"]), run_id=payload["run_id"])
        self.log_every, self.total = payload["log_every"], total_steps
        self.t0 = self.t_last = time.perf_counter()
        self.samples = 0
        self.parts: dict[str, float] = {}
        self.count = 0

    def step(self, progress: Progress, parts: dict, lr: float, grad_norm: float, samples: int, memory_mb: float) -> None:
        self.samples += samples
        self.count += 1
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v
        if progress.step % self.log_every and progress.step != self.total:
            return
        now = time.perf_counter()
        rate = self.samples / max(now - self.t_last, 1e-9)
        means = {f"train/{k}": v / self.count for k, v in self.parts.items()}
        self.run.log_metrics(
            {**means, "train/lr": lr, "train/grad_norm": grad_norm, "train/samples_per_s": rate,
             "train/memory_mb": memory_mb},
            step=progress.step,
        )
        eta = (self.total - progress.step) * (now - self.t0) / max(progress.step, 1)
        loss = means.get("train/loss", means.get("train/ce", float("nan")))
        print(f"step {progress.step}/{self.total} epoch {progress.epoch} loss {loss:.4f} lr {lr:.2e} "
              f"{rate:.0f} samples/s ETA {eta:.0f}s", flush=True)
        self.t_last, self.samples, self.parts, self.count = now, 0, {}, 0

    def epoch(self, progress: Progress, val: dict) -> None:
        self.run.log_metrics({f"val/{k[4:]}" if k.startswith("val_") else k: v for k, v in val.items()},
                             step=progress.step)
        self.run.log_metrics({"epoch": progress.epoch}, step=progress.step)

    def visuals(self, task, model, dataset, device, step: int) -> None:
        """The task's pictures of this validation (e.g. reconstruction panels) as run artifacts."""
        if not hasattr(task, "visuals"):
            return
        with tempfile.TemporaryDirectory() as folder:
            for path in task.visuals(model, dataset, device, Path(folder)):
                self.run.log_artifact(path, f"panels/step_{step:06d}")

    def flush(self) -> None:
        self.run.flush()
