"""The driver side of training: one `fit` for `dvc repro`, `usam train` and Tune trials alike.

It validates everything that can fail before Ray starts (config, data, resources), opens
the MLflow run, runs the workers (``usam.train.launch``: in this process for a one-worker run
with no cluster to join, as in a Tune trial or a pipeline stage; else a Ray Train worker group), checks that the loss stayed finite, and writes the final
weights atomically with their sha256.
Each run gets a unique Ray run name: Train V2 silently resumes a re-used name, so only
``resume_run_id`` (``usam train --resume``) re-uses one, on purpose.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from usam.artifacts.layout import Inputs, Layout
from usam.config import Config, to_dict
from usam.data import dataset_hashes
from usam.errors import DataError, Interrupted, UsamError, first_line
from usam.models import parameter_count
from usam.paths import find_project_root, resolve
from usam.track import client_for, resumable_run, tracked_run, tracking_uri
from usam.train import checkpoint as ckpt
from usam.train.launch import InProcess, Launcher, RayTrainGroup
from usam.train.loop import WorkerSpec
from usam.train.task import Task
from usam.train.tasks import TASKS, make_task


@dataclass(frozen=True)
class FitResult:
    run_id: str
    ray_run_name: str
    weights_path: Path
    weights_sha256: str
    metrics: dict
    train_seconds: float
    checkpoint_path: str  # the last checkpoint kept (every rank's part, with checksums)


def ensure_ray(cfg: Config, *, dashboard: bool = False) -> None:
    """Join ``ray.address`` (or ``RAY_ADDRESS``, which `ray job submit` sets), or start a local instance sized
    by ``ray.num_cpus``, once per process; never join a cluster that `ray start` merely left on this machine.
    ``dashboard``: the local instance runs the dashboard, whose state API a sweep needs (see ``usam.tune``)."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address(cfg)
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except Exception as exc:
            raise UsamError(
                f"cannot join the Ray cluster at {address!r}: {str(exc).splitlines()[0] if str(exc) else exc}",
                where="ray.address / RAY_ADDRESS",
                fix="start the cluster (`ray start --head`) or set ray.address=null (and unset RAY_ADDRESS) for a local one",
            ) from None
    else:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=dashboard,
                 **({"dashboard_host": "127.0.0.1"} if dashboard else {}),
                 object_store_memory=cfg.ray.object_store_mb * 2**20, log_to_driver=True)


def ray_address(cfg: Config) -> str | None:
    """The cluster to join: ``ray.address``, else ``RAY_ADDRESS`` (which `ray job submit` sets) unless it is
    ``local``; None: start a local instance."""
    import os

    env = os.environ.get("RAY_ADDRESS")
    return cfg.ray.address or (env if env and env != "local" else None)


def in_process(cfg: Config, tcfg) -> bool:
    """Train in this process, with no Ray at all: ``runtime.launcher=local``, or ``auto`` with one worker, no
    cluster to join and no fault injection (whose kill needs Ray Train to restart the group). A failure then
    ends the run; ``usam train --resume`` continues from its last checkpoint."""
    rt = tcfg.runtime
    if rt.launcher != "auto":
        return rt.launcher == "local"
    return rt.workers == 1 and not ray_address(cfg) and cfg.debug.fault_injection_step is None


def check_resources(task_cfg, cluster: dict) -> None:
    """A worker group the cluster cannot place would wait forever: say so before starting."""
    need_cpu = task_cfg.runtime.workers * task_cfg.runtime.cpus_per_worker
    need_gpu = task_cfg.runtime.workers if task_cfg.runtime.use_gpu else 0
    have_cpu, have_gpu = cluster.get("CPU", 0), cluster.get("GPU", 0)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise UsamError(
            f"{task_cfg.runtime.workers} worker(s) need {need_cpu:g} CPU and {need_gpu} GPU; the Ray cluster has "
            f"{have_cpu:g} CPU and {have_gpu:g} GPU",
            where="train.runtime.workers / train.runtime.cpus_per_worker / train.runtime.use_gpu",
            fix="lower the worker count or cpus_per_worker, or join a larger cluster with ray.address",
        )


def storage_path(cfg: Config, root: Path) -> str:
    """Ray's storage for checkpoints and Tune state: ``ray.storage_path`` as given when it is a URI, else resolved
    against the project ``root``."""
    path = cfg.ray.storage_path
    return path if "://" in path else str(resolve(path, root))


def fit(
    cfg: Config,
    task_name: str,
    *,
    out_dir: Path | None = None,
    root: Path | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    tags: dict | None = None,
    callbacks: list | None = None,
    in_trial: str | None = None,
    inputs: Inputs | None = None,
    hooks: tuple = (),
) -> FitResult:
    """Train ``task_name`` on ``cfg``; returns where the final weights are and what was measured.

    ``tags`` go on the MLflow run; ``callbacks`` are Ray Train callbacks. Inside a Tune trial,
    ``in_trial="report"`` hands every epoch's metrics and checkpoint to Tune (so a scheduler can stop
    the trial and a resumed study restores it) and ``in_trial="silent"`` keeps them from Tune (a
    prerequisite trained by the trial). A one-worker recipe then trains in the trial's own process,
    on the resources Tune gave the trial: no worker group to start. A larger one runs on Ray Train
    as usual, reporting through ``TuneReportCallback``. ``inputs``: the artifacts the task trains on, when not
    the ones the project's layout keeps (a trial's own tokenizer). ``hooks``: more training hooks (picklable), run
after each epoch's validation (a generator stage's quality check).

    A one-worker run with no cluster to join (every pipeline stage) neither starts nor imports Ray."""
    if task_name not in TASKS:
        raise UsamError(f"unknown task {task_name!r}", where="usam train TASK", fix=f"use one of {', '.join(TASKS)}")
    root = (root or find_project_root()).resolve()
    # the run to continue is checked first: a wrong id, task or finished run starts nothing and changes nothing
    resumed = resumable_run(client_for(cfg, root), resume_run_id, cfg, task_name) if resume_run_id else None
    layout = Layout.of(cfg, root)
    task = make_task(task_name, cfg, layout, inputs)
    tcfg = task.train_cfg
    _check_inputs(task, cfg)
    launcher: Launcher
    stops: tuple = (SystemExit, KeyboardInterrupt)  # how an interrupted (or, in a trial, stopped) run ends
    if in_trial is not None and tcfg.runtime.workers == 1:
        launcher = InProcess(tcfg, report=in_trial == "report", trial=True)
    elif in_process(cfg, tcfg):
        launcher = InProcess(tcfg, report=False, trial=False)
    else:
        import ray

        ensure_ray(cfg)
        check_resources(tcfg, ray.cluster_resources())
        launcher = RayTrainGroup(tcfg, callbacks or [], report=in_trial == "report")
        stops = (*stops, ray.exceptions.RayActorError)

    storage = storage_path(cfg, root)
    if resumed is not None:
        ray_name = resumed.data.tags["ray.run_name"]
    else:
        ray_name = f"{task_name}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    out_dir = Path(out_dir) if out_dir else Path(storage) / ray_name / "final"

    with tracked_run(cfg, stage=f"train/{task_name}", run_name=run_name or ray_name, root=root,
                     parent_run_id=parent_run_id, resume_run_id=resume_run_id,
                     tags={"ray.run_name": ray_name, "ray.storage_path": storage, "usam.task": task_name,
                           "usam.train.where": launcher.where, **(tags or {})}) as run:
        print(f"MLflow run {run.run_id} (Ray run {ray_name}); if interrupted, continue with "
              f"`usam train {task_name} <same overrides> --resume {run.run_id}`", flush=True)
        if not resume_run_id:  # what it trains on, as MLflow dataset inputs (a resumed run has them)
            prepared = layout.prepared(cfg.data.name)
            try:
                hashes = dataset_hashes(prepared)
            except DataError:  # a folder of videos with no manifest: nothing recorded to attach
                hashes = {}
            for split, sha in hashes.items():
                run.log_dataset(cfg.data.name, split, sha, prepared / split)
        spec = WorkerSpec(
            config=to_dict(cfg), task=task_name, layout=layout, inputs=inputs, log_every=tcfg.runtime.log_every,
            fault_marker=str(Path(storage) / ray_name / ".fault-injected"),
            nonfinite_marker=str(Path(storage) / ray_name / "nonfinite.json"),
            tracking_uri=tracking_uri(cfg, root), run_id=run.run_id, hooks=tuple(hooks),
        )
        nonfinite = Path(spec.nonfinite_marker)
        nonfinite.parent.mkdir(parents=True, exist_ok=True)
        nonfinite.unlink(missing_ok=True)  # a resumed run starts with a clean slate
        resume_hint = f"`usam train {task_name} <same overrides> --resume {run.run_id}`"
        where = f"Ray run {ray_name} under {storage}"
        start = time.perf_counter()
        try:
            metrics, checkpoint = launcher.run(spec, ray_name, storage)
        except stops:
            if in_trial is not None:  # Tune stops a trial (ASHA) by exiting it from inside its report: let Tune see that
                raise
            # Ray answers Ctrl-C by aborting its train controller, then calls sys.exit(0) (a success code!)
            raise Interrupted(
                "training was interrupted (Ctrl-C, or its Ray controller died)", where=where,
                fix=f"continue from the last checkpoint with {resume_hint}",
            ) from None
        except UsamError:
            raise
        except Exception as exc:
            if launcher.in_process:  # no worker log to read: the traceback goes to this process's log (the trial's error file)
                traceback.print_exc()
            raise UsamError(
                f"training failed after {launcher.restarts} restart(s): {first_line(exc)}", where=where,
                fix=f"read the worker log above; continue from the last checkpoint with {resume_hint}",
            ) from None
        seconds = time.perf_counter() - start
        if nonfinite.is_file():
            last = getattr(checkpoint, "path", checkpoint) or "none"
            raise UsamError(
                f"the loss became NaN/inf at step {json.loads(nonfinite.read_text())['step']}; training stopped",
                where=f"run {run.run_id}; last good checkpoint: {last}",
                fix="lower train.lr, raise train.warmup_steps, set train.grad_clip, or use precision=fp32",
            )
        weights, sha, count = _export_final(checkpoint, out_dir, task)
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        run.log_metrics({"train_seconds": seconds}, step=int(metrics.get("step", 0)))
        run.set_tags({"checkpoint.sha256": sha, "checkpoint.path": str(weights), "model.parameters": count})
        run.log_artifact(weights, "checkpoints")
        return FitResult(run.run_id, ray_name, weights, sha, metrics, seconds, str(getattr(checkpoint, "path", checkpoint)))


def _check_inputs(task: Task, cfg: Config) -> None:
    """Fail before Ray starts when the data is missing or too small for one optimizer step."""
    tcfg = task.train_cfg
    task.check_data()
    videos = len(task.dataset("train", train=False))
    if videos // tcfg.runtime.workers < tcfg.batch_size * tcfg.grad_accum:
        raise UsamError(
            f"the train split has {videos} videos: too few for one step of {tcfg.runtime.workers} worker(s) x batch_size "
            f"{tcfg.batch_size} x grad_accum {tcfg.grad_accum}",
            where=f"{task.name} on {cfg.data.name}",
            fix="lower the batch size, accumulation or worker count, or build more videos (data.num_videos.train)",
        )


def _export_final(checkpoint, out_dir: Path, task: Task) -> tuple[Path, str, int]:
    """The final weights (and EMA, when kept) as one file, written atomically; returns path, sha256, parameter count."""
    if checkpoint is None:
        raise UsamError("training reported no checkpoint", where="Ray result", fix="check train.epochs / max_steps")
    with nullcontext(checkpoint) if isinstance(checkpoint, Path) else checkpoint.as_directory() as folder:
        shared, _ = ckpt.read(Path(folder), 0)  # a Ray checkpoint may live in remote storage
    out_dir.mkdir(parents=True, exist_ok=True)
    model = task.build_model()
    model.load_state_dict(shared["model"])
    payload = {"model": shared["model"], "progress": shared["progress"], "task": task.name,
               "num_classes": task.head_width(model), **task.export_meta()}
    if shared.get("ema") is not None:
        payload["ema"] = {name: t for (name, _), t in zip(model.named_parameters(), shared["ema"])}
    path = out_dir / "weights.pt"
    sha = ckpt.atomic_torch_save(payload, path)
    return path, sha, parameter_count(model)


def with_dataset(cfg: Config, name: str) -> Config:
    """``cfg`` with ``data.name`` set (the DVC stages loop over datasets)."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=name))
