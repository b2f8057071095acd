"""The training loop every model runs, on each Ray Train worker (or in this process, for one worker).

``Trainer.train`` calls its hooks (``usam.train.hooks``) around ``run_step``: forward under autocast
(bf16 on CPU too), backward with gradient accumulation and the fp16 scaler, then the optimizer step
(AdamW with decoupled weight decay, clipping, warmup then decay; over the task's ``optimizer_groups(model)``
when it has them, e.g. one learning rate per GAN player). ``train_worker`` builds one for a
task from a ``WorkerSpec``: seeded model, data, the checkpoint to resume from (model, optimizer,
scheduler, scaler, EMA, progress and every rank's RNG states, for a bit-exact resume) and the hooks.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from usam.artifacts.layout import Inputs, Layout
from usam.config.schema import Config
from usam.config.validate import build
from usam.seeding import dataloader_generator, derive_seed, seed_everything, worker_init_fn
from usam.train import checkpoint as ckpt
from usam.train.hooks import (
    EMA,
    Checkpointer,
    FaultInjection,
    HookBase,
    MLflowLogging,
    NonFiniteGuard,
    StopTraining,
    Validation,
)
from usam.train.sampler import ShardedEpochSampler
from usam.train.schedule import build_scheduler
from usam.train.session import RayTrainSession, Session
from usam.train.task import Task
from usam.train.tasks import make_task


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to train: plain values only, so it pickles to every Ray Train worker.
    ``run_id`` None: nothing is logged."""

    config: dict
    task: str
    layout: Layout  # where the data and the artifacts the task trains on live
    inputs: Inputs | None  # the artifacts the task trains on (None: where the layout keeps them)
    log_every: int
    fault_marker: str  # the kill fault fires once: it survives the restart it causes
    nonfinite_marker: str  # where the logging rank records the step whose loss was NaN/inf
    tracking_uri: str | None = None
    run_id: str | None = None
    hooks: tuple = ()  # more hooks from the caller (a generator stage's quality check), after validation


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


def build_optimizer(task: Task, model: torch.nn.Module, tcfg) -> torch.optim.AdamW:
    """AdamW over the task's own parameter groups (their lr, betas and weight decay override the defaults) or
    :func:`param_groups`, with the implementation ``train.runtime.optimizer_impl`` names: ``auto`` is torch's
    choice (a per-tensor loop on CPU), ``foreach`` and ``fused`` batch the update over tensors. The three
    round differently, so only ``auto`` reproduces weights trained before the switch existed."""
    groups = task.optimizer_groups(model) if hasattr(task, "optimizer_groups") else param_groups(model, tcfg.weight_decay)
    impl = tcfg.runtime.optimizer_impl
    kwargs = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(impl, {})
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(0.9, 0.95), **kwargs)


def apply_memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """With ``channels_last``, every convolution kernel in channels-last layout (``channels_last`` for 2D,
    ``channels_last_3d`` for 3D), which steers oneDNN to its NHWC / NDHWC kernels; the inputs may stay as they
    are. Off, the model is returned untouched."""
    if not channels_last:
        return model
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            for p in module.parameters(recurse=False):
                if p.ndim in formats:
                    p.data = p.data.contiguous(memory_format=formats[p.ndim])
    return model


class Trainer:
    """Epochs of ``run_step`` over the train split, with the hooks called around them.

    ``model`` is what trains (DDP-wrapped on a worker group), ``bare`` the model itself; after each
    optimizer step ``loss``, ``parts`` and ``grad_norm`` hold the last micro-batch's loss and the step's
    gradient norm, after each epoch ``val`` the validation metrics."""

    def __init__(self, task: Task, model: torch.nn.Module, optimizer, scheduler, scaler, train_ds,
                 sampler: ShardedEpochSampler, session: Session, progress: Progress, total_steps: int,
                 seed: int, hooks: list[HookBase]):
        self.task, self.cfg, self.model, self.session = task, task.train_cfg, model, session
        self.bare = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.train_ds, self.sampler, self.seed = train_ds, sampler, seed
        self.progress, self.total_steps = progress, total_steps
        self.micro_per_epoch = sampler.per_rank // self.cfg.batch_size
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        self.loss: torch.Tensor | None = None
        self.parts: dict[str, float] = {}
        self.grad_norm = 0.0
        self.flops_per_micro = 0  # forward + backward FLOPs of one micro-batch (FlopCounterMode, first micro-batch)
        self.val: dict[str, float] = {}
        self.hooks = hooks
        for hook in hooks:
            hook.trainer = self

    @property
    def done(self) -> bool:
        return self.progress.step >= self.total_steps

    def train(self) -> None:
        p = self.progress
        for hook in self.hooks:
            hook.before_train()
        try:
            while not self.done and p.epoch < self.cfg.epochs:
                self.model.train()
                for batch in self._loader():
                    if not self.run_step(batch):
                        continue
                    for hook in self.hooks:
                        hook.after_step()
                    if self.done:
                        break
                if p.micro >= self.micro_per_epoch or self.done:
                    self.optimizer.zero_grad(set_to_none=True)  # an unfinished accumulation never crosses an epoch
                    p.epoch += 1
                    p.micro = 0
                    for hook in self.hooks:
                        hook.after_epoch()
        except StopTraining:
            return
        for hook in self.hooks:
            hook.after_train()

    def run_step(self, batch: dict) -> bool:
        """One micro-batch forward and backward; True when it completed an accumulation and the optimizer stepped."""
        p, cfg = self.progress, self.cfg
        last_micro = (p.micro + 1) % cfg.grad_accum == 0
        # DDP all-reduces gradients only on the micro-batch that ends an accumulation
        counting = self.flops_per_micro == 0
        with FlopCounterMode(display=False) if counting else nullcontext() as counter, \
                self.model.no_sync() if (self.session.world > 1 and not last_micro) else nullcontext():
            with torch.autocast(self.session.device.type, dtype=self.autocast) if self.autocast else nullcontext():
                loss, parts = self.task.loss(self.model, batch, self.session.device, p.step)
            for hook in self.hooks:
                loss = hook.after_forward(loss)
            self.scaler.scale(loss / cfg.grad_accum).backward()
        if counting:
            self.flops_per_micro = max(int(counter.get_total_flops()), 1)
        p.micro += 1
        if not last_micro:
            return False
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        p.step += 1
        self.loss, self.parts = loss, parts
        return True

    def _loader(self) -> DataLoader:
        """This epoch's batches of this rank's shard, from where a resumed epoch left off."""
        p = self.progress
        self.sampler.set_epoch(p.epoch, start=p.micro * self.cfg.batch_size)
        self.train_ds.set_epoch(p.epoch)
        # An explicit generator: a DataLoader iterator otherwise draws its base seed from the global RNG,
        # and a run resumed mid-epoch would draw once more than the uninterrupted one (other dropout masks).
        return DataLoader(
            self.train_ds, batch_size=self.cfg.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=self.cfg.runtime.dataloader_workers, worker_init_fn=worker_init_fn,
            generator=dataloader_generator(self.seed, "train", p.epoch, self.session.rank),
        )


def train_worker(spec: WorkerSpec, session: Session | None = None) -> None:
    """Train ``spec.task`` on this worker (a Ray Train worker by default), resuming from the session's
    checkpoint when it has one."""
    cfg: Config = build(Config, spec.config, source="training payload")
    task = make_task(spec.task, cfg, spec.layout, spec.inputs)
    tcfg = task.train_cfg
    session = session or RayTrainSession()
    rank, world, device = session.rank, session.world, session.device
    torch.set_num_threads(tcfg.runtime.threads_per_worker)

    seed_everything(cfg.seed, deterministic=tcfg.runtime.deterministic)  # same initial weights on every rank
    model = task.build_model()
    seed_everything(derive_seed(cfg.seed, "rank", rank), deterministic=tcfg.runtime.deterministic)
    model = apply_memory_format(model, tcfg.runtime.channels_last)
    optimizer = build_optimizer(task, model, tcfg)

    train_ds, val_ds = task.datasets(device)
    sampler = ShardedEpochSampler(len(train_ds), rank=rank, world=world, seed=cfg.seed)
    total_steps = sampler.per_rank // tcfg.batch_size // tcfg.grad_accum * tcfg.epochs
    if tcfg.max_steps is not None:
        total_steps = min(total_steps, tcfg.max_steps)
    scheduler = build_scheduler(optimizer, tcfg, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.precision == "fp16")
    ema = EMA(tcfg.ema_decay, model.parameters()) if tcfg.ema_decay > 0 else None
    progress = Progress()

    with session.restored() as restored:
        shared, local = ckpt.read(restored, rank) if restored is not None else (None, None)
    if shared is not None:
        model.load_state_dict(shared["model"])
        optimizer.load_state_dict(shared["optimizer"])
        scheduler.load_state_dict(shared["scheduler"])
        scaler.load_state_dict(shared["scaler"])
        if ema is not None and shared.get("ema") is not None:
            ema.shadow = [t.clone() for t in shared["ema"]]
        progress = Progress(**shared["progress"])
        if local is not None:
            ckpt.set_rng_state(local["rng"])

    model = session.prepare(model)
    logging = (MLflowLogging(spec.tracking_uri, spec.run_id, spec.log_every, val_ds, fresh=shared is None)
               if rank == 0 and spec.run_id else None)
    fault = (FaultInjection(cfg.debug.fault_injection_kind, cfg.debug.fault_injection_step, Path(spec.fault_marker))
             if rank == 0 and cfg.debug.fault_injection_step is not None else None)
    hooks = [ema, Validation(val_ds), *spec.hooks, logging, fault, NonFiniteGuard(logging, Path(spec.nonfinite_marker)),
             Checkpointer(tcfg.runtime.checkpoint_every, ema, logging)]
    trainer = Trainer(task, model, optimizer, scheduler, scaler, train_ds, sampler, session, progress, total_steps,
                      cfg.seed, [h for h in hooks if h is not None])
    if shared is not None:  # FlopCounterMode's dispatch changes a step's float rounding: count only on a fresh run
        trainer.flops_per_micro = int(shared.get("flops_per_micro", 0))
    try:
        trainer.train()
    except BaseException:
        if logging is not None:  # what was logged before the error reaches the store; the error is what is raised
            try:
                logging.flush()
            except Exception as exc:
                print(f"warning: {exc}", file=sys.stderr, flush=True)
        raise
    if logging is not None:  # every metric is stored before the worker returns (and the run is marked finished)
        logging.flush()
