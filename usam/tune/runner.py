"""Sweeps and ablation grids on Ray Tune: every trial is the real training path.

A trial is a function trainable that composes its config (the spec's overrides plus the
trial's point), then calls :func:`usam.train.fit` with ``in_trial="report"``: every epoch's
validation metrics and checkpoint go to Tune (so ASHA can stop weak trials). A one-worker
recipe trains in the trial's own process on the resources Tune gave it, and trials re-use
their actors, so a trial costs little more than its training; a multi-worker recipe runs on
a Ray Train ``TorchTrainer`` worker group started by the trial. Each trial is an MLflow run
nested under one parent run per study; the parent holds the spec, the trial table, the best
config and the report.

Resuming: the Tune experiment lives in ``ray.storage_path/<study name>``. ``resume`` restores
it (the searcher's state and every trial's status); an unfinished trial finds its own MLflow
run by its Tune trial id and continues it from its last checkpoint: no trial is lost or run
twice.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from usam.artifacts.layout import Inputs, Layout
from usam.config import TRAIN_SECTIONS, Config, compose, train_section
from usam.errors import UsamError
from usam.eval.class_grid import class_grid
from usam.eval.generators import load_generator
from usam.eval.quality import quality_hooks
from usam.eval.study import study_cfg, study_scores
from usam.paths import find_project_root, resolve
from usam.track import client_for, tracked_run, tracking_uri
from usam.track.run import artifact_root
from usam.train import fit
from usam.train.tasks import make_task
from usam.train.trainer import check_resources, ensure_ray, ray_address, storage_path
from usam.tune.results import write_study
from usam.tune.spec import STUDY_TAG, TRIAL_TAG, AblationSpec, load_ablation, load_sweep

TRIAL_CPU = 0.25  # a trial that starts a Ray Train worker group only waits on it


@dataclass
class Study:
    """What the driver hands every trial (plain data: it travels to Ray workers)."""

    kind: str  # sweep | ablation
    name: str  # the Tune experiment name, unique per launch
    spec_path: str
    task: str
    root: str
    parent_run_id: str
    shared: list[str]  # overrides every trial gets (paths made absolute, the spec's overrides, epochs)
    metric: str
    mode: str
    cells: list[dict] = field(default_factory=list)  # ablations: one per grid cell
    seeds: list[int] = field(default_factory=list)


# ---- the driver ------------------------------------------------------------------------------------------------


def sweep(spec_path: Path, *, overrides: list[str] = (), address: str | None = None, resume: str | None = None,
          root: Path | None = None, progress: bool = True):
    """Run (or resume) a hyperparameter sweep; returns the trial table (a pandas DataFrame)."""
    return _run("sweep", Path(spec_path), load_sweep(spec_path), list(overrides), address, resume, root, progress)


def ablate(spec_path: Path, *, overrides: list[str] = (), address: str | None = None, resume: str | None = None,
           root: Path | None = None, progress: bool = True):
    """Run (or resume) an ablation grid; returns the trial table (a pandas DataFrame)."""
    return _run("ablation", Path(spec_path), load_ablation(spec_path), list(overrides), address, resume, root, progress)


def _run(kind: str, spec_path: Path, spec, extra: list[str], address: str | None, resume: str | None,
         root: Path | None, progress: bool):
    import dataclasses

    import ray
    from ray import tune


    root = (root or find_project_root()).resolve()
    base_overrides = [*spec_overrides(spec), *extra]
    base = compose(base_overrides)
    client = client_for(base, root)
    name, parent_id = _find_study(client, base, kind, _label(spec_path, root), resume) if resume else (
        f"{kind}-{spec_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}", None)
    storage = Path(storage_path(base, root))
    if resume and not tune.Tuner.can_restore(str(storage / name)):
        raise UsamError(f"study {name} left no Tune state to resume from", where=str(storage / name),
                        fix="start it again without --resume")
    _check_prerequisites(kind, spec, base, root)
    shared = [*base_overrides, *_pinned(base, root), *_budget(kind, spec)]
    cells = _cells(spec) if kind == "ablation" else []
    probe = compose([*shared, *(trial_overrides(kind, spec.seeds[0], cells[0]) if cells else [])])

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # mid-epoch checkpoints carry no val metric
    _start_ray(dataclasses.replace(base, ray=dataclasses.replace(base.ray, address=address)) if address else base)
    train = recipe(probe, spec.task)
    resources = trial_resources(train)
    free = {k: v - TRIAL_CPU if k == "CPU" and train.runtime.workers > 1 else v for k, v in ray.cluster_resources().items()}
    check_resources(train, free)

    repeatable, why_not = _repeatable(kind, spec)
    with tracked_run(base, stage=f"{kind}/{spec_path.stem}", run_name=name, root=root, resume_run_id=parent_id,
                     tags={STUDY_TAG: name, "usam.study.kind": kind, "usam.study.spec": _label(spec_path, root),
                           "usam.study.repeatable": str(repeatable).lower(),
                           "usam.study.not_repeatable_because": why_not}) as parent:
        if not resume:
            parent.log_artifact(spec_path, "spec")
            parent.log_dict(asdict(spec), "spec/resolved.json")
        study = Study(kind, name, _label(spec_path, root), spec.task, str(root), parent.run_id, shared, spec.metric, spec.mode,
                      cells=cells, seeds=list(spec.seeds))
        verb = "sweep" if kind == "sweep" else "ablate"
        print(f"{kind} {name}: MLflow parent run {parent.run_id}; if interrupted, continue with "
              f"`usam {verb} {spec_path} --resume {parent.run_id}`", flush=True)
        trainable = tune.with_resources(tune.with_parameters(run_trial, study=asdict(study)), resources)
        if resume:
            tuner = tune.Tuner.restore(str(storage / name), trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = tune.Tuner(trainable, param_space=param_space(kind, spec), tune_config=_tune_config(kind, spec),
                               run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                                         verbose=1 if progress else 0,
                                                         failure_config=tune.FailureConfig(max_failures=0),
                                                         checkpoint_config=tune.CheckpointConfig(
                                                             num_to_keep=train.runtime.keep_checkpoints)))
        grid = tuner.fit()

        return write_study(study, spec, grid, parent, client, Layout.of(base, root).outputs("studies", name))


def _start_ray(cfg: Config) -> None:
    """Join ``ray.address`` (or ``RAY_ADDRESS``), or start a local instance with the dashboard: a trial that ASHA stops is killed,
    and Ray Train's placement-group cleaner learns of its dead controller through the dashboard's state API
    (without it the stopped trial's CPUs stay reserved and the next trial waits forever)."""
    import ray

    if not ray.is_initialized() and ray_address(cfg):
        _answers(ray_address(cfg))
    ensure_ray(cfg, dashboard=True)


def _answers(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at a ``host:port`` cluster address (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # `auto` and other forms are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsamError(f"cannot join the Ray cluster at {address!r}: nothing answers ({exc.strerror or exc})",
                        where="--address / ray.address",
                        fix="start the cluster (`ray start --head`) or fix the address; leave it out for a local Ray") from None


def _label(spec_path: Path, root: Path) -> str:
    """The spec as the study records it: project-relative when it lives in the project."""
    path = spec_path.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _pinned(cfg: Config, root: Path) -> list[str]:
    """Overrides that make every location absolute: trials may run in another directory or on another node."""

    return [f"tracking.uri={tracking_uri(cfg, root)}", f"tracking.artifact_root={artifact_root(cfg, root)}",
            f"data.root={resolve(cfg.data.root, root)}", f"ray.storage_path={storage_path(cfg, root)}"]


def spec_overrides(spec) -> list[str]:
    """Overrides every trial shares: a sweep's ``overrides``, an ablation's reference."""
    return list(spec.reference.overrides if isinstance(spec, AblationSpec) else spec.overrides)


def recipe(cfg: Config, task: str):
    """The ``TrainConfig`` ``task`` trains with."""
    node = cfg
    for part in train_section(task).split("."):
        node = getattr(node, part)
    return node


def trial_resources(train) -> dict[str, float]:
    """What Tune reserves for a trial: a one-worker recipe trains in the trial itself, so the trial holds the
    worker's CPUs (and GPU); a larger recipe's trial only waits on the worker group it starts."""
    if train.runtime.workers > 1:
        return {"CPU": TRIAL_CPU}
    return {"CPU": train.runtime.cpus_per_worker, **({"GPU": 1} if train.runtime.use_gpu else {})}


def _budget(kind: str, spec) -> list[str]:
    """Per-trial resources on the task's recipe (a trial that waits on a worker group keeps TRIAL_CPU of
    them), and a sweep's epochs."""
    section = train_section(spec.task)
    train = recipe(compose(spec_overrides(spec)), spec.task)
    waits = TRIAL_CPU if train.runtime.workers > 1 else 0.0
    if kind != "sweep":  # an ablation keeps its recipe; the waiting trial's share comes out of the first worker
        return [f"{section}.runtime.cpus_per_worker={max(train.runtime.cpus_per_worker - waits / train.runtime.workers, 0.05):g}"]
    cpus = max(spec.resources.cpus - waits, 0.05) / train.runtime.workers
    return [f"{section}.epochs={spec.epochs}", f"{section}.runtime.cpus_per_worker={cpus:g}",
            f"{section}.runtime.use_gpu={'true' if spec.resources.gpus > 0 else 'false'}"]


def _check_prerequisites(kind: str, spec, base: Config, root: Path) -> None:
    """What every trial needs (prepared data; a generator's tokenizer), checked once before any trial starts."""

    for name in spec.datasets if kind == "ablation" else [base.data.name]:
        cfg = compose([*spec_overrides(spec), f"data.name={name}"])
        make_task(spec.task, cfg, Layout.of(cfg, root)).check_data()


def _repeatable(kind: str, spec) -> tuple[bool, str]:
    """Whether re-running the study gives the same trials, and why not when it cannot."""
    reasons = []
    if kind == "sweep":
        if spec.max_concurrent_trials > 1 and spec.searcher in ("optuna", "cmaes"):
            reasons.append(f"{spec.searcher} with {spec.max_concurrent_trials} concurrent trials: the points it proposes "
                           "depend on which trials finish first")
        if spec.max_concurrent_trials > 1 and spec.scheduler.name == "asha":
            reasons.append("ASHA with concurrent trials: which trials it stops depends on finishing order")
    return (not reasons, "; ".join(reasons) or "none: seeded searcher, one trial at a time, deterministic training")


def _tune_config(kind: str, spec):
    from ray import tune

    if kind == "ablation":
        return tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=1, max_concurrent_trials=1,
                               reuse_actors=True)
    search_alg = None
    if spec.searcher == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=spec.searcher_seed)
    elif spec.searcher in ("optuna", "cmaes"):
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler = (optuna.samplers.TPESampler(seed=spec.searcher_seed) if spec.searcher == "optuna"
                   else optuna.samplers.CmaEsSampler(seed=spec.searcher_seed))
        search_alg = OptunaSearch(metric=spec.metric, mode=spec.mode, sampler=sampler)
    scheduler = None
    if spec.scheduler.name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # stop_last_trials=False: a trial that reaches the budget ends on its own and sends its closing report
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.epochs, grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor, stop_last_trials=False)
    return tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=search_alg, scheduler=scheduler,
                           num_samples=1 if spec.searcher == "grid" else spec.trials,
                           max_concurrent_trials=spec.max_concurrent_trials, reuse_actors=True)


def param_space(kind: str, spec) -> dict:
    """Tune's search space: the spec's dimensions (values as override strings) and the seed."""
    from ray import tune

    if kind == "ablation":
        return {"cell": tune.grid_search(list(range(len(_cells(spec)))))}
    space: dict[str, Any] = {}
    for key, dim in spec.space.items():
        if dim.type == "loguniform":
            space[key] = tune.loguniform(dim.low, dim.high)
        elif dim.type == "uniform":
            space[key] = tune.uniform(dim.low, dim.high)
        elif dim.type == "int":
            space[key] = tune.randint(int(dim.low), int(dim.high) + 1)
        elif dim.type == "choice":
            space[key] = tune.choice(list(dim.values))
        else:
            space[key] = tune.grid_search(list(dim.values))
    if spec.searcher == "grid":
        space["seed"] = tune.grid_search(list(spec.seeds))
    return space


def _cells(spec: AblationSpec) -> list[dict]:
    return [{"variant": v.name, "overrides": [] if v is spec.reference else list(v.overrides), "dataset": d, "seed": s}
            for v, d, s in spec.grid()]


def trial_overrides(kind: str, seed: int, cell: dict | None = None, point: dict | None = None) -> list[str]:
    """What one trial adds to the shared overrides: its grid cell (ablations) or its point and seed (sweeps)."""
    if kind == "ablation":
        return [*cell["overrides"], f"data.name={cell['dataset']}", f"seed={cell['seed']}"]
    return [*(f"{key}={value}" for key, value in (point or {}).items() if key != "seed"), f"seed={seed}"]


def _find_study(client, cfg: Config, kind: str, spec_path: Path, which: str) -> tuple[str, str]:
    """(study name, parent run id) of the study to resume: by parent run id, by study name, or ``latest``: the
    newest study of ``spec_path`` (a study's parent run; training runs are found by usam.track.runs.find_run)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if which != "latest":
        try:
            run = client.get_run(which)
        except MlflowException:
            runs = client.search_runs([experiment.experiment_id], f"tags.`{STUDY_TAG}` = '{which}' "
                                      f"and tags.`usam.study.kind` = '{kind}'") if experiment else []
            run = runs[0] if runs else None
        if run is None or run.data.tags.get("usam.study.kind") != kind:
            raise UsamError(f"no {kind} {which!r} in the tracking store", where=client.tracking_uri,
                            fix="pass the parent run id (or study name) printed when the study started, or `latest`")
        return run.data.tags[STUDY_TAG], run.info.run_id
    runs = client.search_runs([experiment.experiment_id], f"tags.`usam.study.spec` = '{spec_path}' and "
                              f"tags.`usam.study.kind` = '{kind}'", order_by=["attributes.start_time DESC"],
                              max_results=1) if experiment else []
    if not runs:
        raise UsamError(f"no earlier {kind} of {spec_path} to resume", where=client.tracking_uri,
                        fix="start it without --resume")
    return runs[0].data.tags[STUDY_TAG], runs[0].info.run_id


# ---- one trial (runs in a Ray worker) -------------------------------------------------------------------------------


def run_trial(config: dict, study: dict) -> None:
    """Train one trial and report to Tune: every epoch as it ends, then the final (and sample) scores."""
    from ray import tune


    s = Study(**study)
    root = Path(s.root)
    trial_id = tune.get_context().get_trial_id()
    if s.kind == "ablation":
        cell = s.cells[int(config["cell"])]
        extra = trial_overrides("ablation", cell["seed"], cell)
        run_name = f"{s.name}/{cell['variant']}/{cell['dataset']}/seed{cell['seed']}"
    else:  # grid sweeps search the seed; otherwise trial k (its Tune index) trains with seeds[k mod n]
        seed = int(config["seed"]) if "seed" in config else s.seeds[trial_index(trial_id) % len(s.seeds)]
        extra, cell = trial_overrides("sweep", seed, point=config), None
        run_name = f"{s.name}/{trial_id}"
    cfg = compose([*s.shared, *extra])
    client = client_for(cfg, root)
    previous = client.search_runs([client.get_run(s.parent_run_id).info.experiment_id],
                                  f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{STUDY_TAG}` = '{s.name}'")
    finished = [r for r in previous if r.info.status == "FINISHED"]
    if finished:  # restored after its training ended but before Tune recorded it: report what it measured
        tune.report({**{k: v for k, v in finished[0].data.metrics.items()}, "mlflow_run_id": finished[0].info.run_id})
        return
    resume = previous[0].info.run_id if previous else None
    tags = {STUDY_TAG: s.name, TRIAL_TAG: trial_id, "usam.study.kind": s.kind}
    generator, inputs = s.task not in (*TRAIN_SECTIONS, "tokenizer"), None
    if cell is not None:
        tags.update({"usam.ablation.variant": cell["variant"], "usam.ablation.dataset": cell["dataset"]})
        if generator:
            inputs = _trial_inputs(s, cfg, cell, Layout.of(cfg, root).outputs("studies", s.name, trial_id), root)
    hooks = quality_hooks(cfg, Layout.of(cfg, root), s.task) if generator else ()  # val FID-domain, class accuracy
    result = fit(cfg, s.task, root=root, run_name=run_name, parent_run_id=s.parent_run_id, resume_run_id=resume,
                 tags=tags, in_trial="report", inputs=inputs, hooks=hooks)
    final = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    if cell is not None and generator:
        final.update(_sample_scores(s, cfg, result, Layout.of(cfg, root), inputs, client))
    tune.report({**final, "train_seconds": result.train_seconds, "mlflow_run_id": result.run_id})


def trial_index(trial_id: str) -> int:
    """The trial's launch index, from its Tune folder (``<trainable>_<trial id>_<index>_<params>...``)."""
    import re

    from ray import tune

    found = re.search(rf"{re.escape(trial_id)}_(\d+)", Path(tune.get_context().get_trial_dir()).name)
    return int(found.group(1)) if found else 0


def _trial_inputs(s: Study, cfg: Config, cell: dict, folder: Path, root: Path) -> Inputs | None:
    """None when the variant keeps the reference tokenizer (the trial trains on the project's); else the
    project's evaluators with the trial's own tokenizer, trained first in ``folder`` (same seed, nested in
    the study) or found there when the trial resumes."""
    reference = compose([*s.shared, f"data.name={cell['dataset']}", f"seed={cell['seed']}"])
    if cfg.tokenizer == reference.tokenizer:
        return None
    layout = Layout.of(cfg, root)
    weights, record = folder / "tokenizer.pt", folder / "tokenizer.json"
    if not (weights.is_file() and record.is_file()):
        result = fit(cfg, "tokenizer", root=root, out_dir=folder / ".tokenizer", parent_run_id=s.parent_run_id,
                     in_trial="silent",
                     run_name=f"{s.name}/{cell['variant']}/{cell['dataset']}/seed{cell['seed']}/tokenizer",
                     tags={STUDY_TAG: s.name, "usam.study.kind": s.kind, "usam.ablation.variant": cell["variant"]})
        shutil.move(result.weights_path, weights)
        record.write_text(json.dumps({"weights_sha256": result.weights_sha256, "mlflow_run_id": result.run_id}))
    return replace(layout.inputs(cfg), tokenizer=layout.weights(weights, record))


def _sample_scores(s: Study, cfg: Config, result, layout: Layout, inputs: Inputs | None, client) -> dict[str, float]:
    """The trial's sample grid (logged to its run) with, for a class-conditional model, the share of samples the
    dataset's frame evaluator assigns to the class they were generated for; then the evaluation suite's numbers
    on a val sample at the sampling settings the comparison chose for the reference (``usam.eval.study``)."""
    import tempfile

    from mlflow.entities import Metric

    name = cfg.data.name
    generator = load_generator(s.task, cfg, layout, result.weights_path, result.weights_sha256, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        scores = class_grid(generator, cfg, Path(tmp), client, result.run_id,
                            lambda: layout.evaluator_weights(name, "frame"), mp4=False)
    scores = {key: value for key, value in scores.items() if key == "sample_class_acc"}  # chance: the same everywhere
    at, settings = study_cfg(cfg, layout, s.task)
    if settings:
        generator = load_generator(s.task, at, layout, result.weights_path, result.weights_sha256, inputs)
    scores.update(study_scores(generator, layout, name, cfg.eval.quality_samples))
    client.log_batch(result.run_id, metrics=[Metric(f"eval/{k[5:]}", v, int(time.time() * 1000), 0)
                                             for k, v in scores.items() if k.startswith("eval_")])
    client.set_tag(result.run_id, "usam.study.eval_settings",
                   json.dumps(settings) if settings else "the configured ones (no choice on val yet)")
    return scores
