"""Sweep and ablation specs (``sweeps/*.yaml``, ``ablations/*.yaml``), validated before any trial starts.

A sweep spec names the task to train, a search space over config keys, the searcher, the
scheduler, the budget, the resources and the seeds. An ablation spec names a reference
override set and variants (each an override set with its rationale), crossed with datasets
and seeds. Every problem is reported at once, with the file and the key: an unknown key, a
range that is empty or inverted, a grid larger than the stated budget (with the count), an
override the config tree rejects.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args

import yaml

from usam.config import TRAIN_SECTIONS, compose
from usam.config.schema import SEED_MAX, TASK_NAMES, DatasetName
from usam.config.validate import build, knob
from usam.errors import ConfigError
from usam.eval.study import DIRECTIONS, GENERATOR_ONLY

STUDY_TAG, TRIAL_TAG = "usam.study", "usam.trial_id"  # the MLflow tags that tie a trial run to its study


@dataclass(frozen=True)
class Dimension:
    type: Literal["loguniform", "uniform", "int", "choice", "grid"] = knob(doc="how the key is searched")
    low: Optional[float] = knob(doc="lower bound (loguniform, uniform, int)")
    high: Optional[float] = knob(doc="upper bound (loguniform, uniform, int)")
    values: Optional[list[str]] = knob(doc="the options (choice, grid), as override strings")

    def check(self) -> list[str]:
        if self.type in ("choice", "grid"):
            if not self.values:
                return ["{path}.values: a " + self.type + " needs at least one value"]
            if self.low is not None or self.high is not None:
                return ["{path}: low/high belong to ranges; a " + self.type + " takes values"]
            return []
        if self.values:
            return ["{path}: values belong to choice/grid; a " + self.type + " takes low and high"]
        if self.low is None or self.high is None:
            return ["{path}: a " + self.type + " range needs both low and high"]
        if self.low >= self.high:
            return [f"{{path}}: the range [{self.low}, {self.high}] is empty or inverted: low must be < high"]
        if self.type == "loguniform" and self.low <= 0:
            return [f"{{path}}.low = {self.low}: a loguniform range must be > 0"]
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            return ["{path}: an int range needs whole-number bounds"]
        return []


@dataclass(frozen=True)
class Scheduler:
    name: Literal["none", "asha"] = knob(doc="none: every trial runs its budget; asha: stop weak trials early")
    grace_period: int = knob(ge=1, doc="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = knob(gt=1.0, le=100.0, doc="ASHA: keep 1/reduction_factor at each rung")


@dataclass(frozen=True)
class Resources:
    cpus: float = knob(gt=0.0, le=1024.0, doc="CPUs per trial")
    gpus: float = knob(ge=0.0, le=64.0, doc="GPUs per trial")


@dataclass(frozen=True)
class SweepSpec:
    task: Literal["evaluator_frame", "evaluator_clip", "tokenizer", "usam", "raster_ar", "maskgit", "gan",
                  "diffusion"] = knob(doc="what every trial trains")
    overrides: list[str] = knob(doc="config overrides shared by every trial")
    space: dict[str, Dimension] = knob(doc="config key -> how it is searched")
    searcher: Literal["grid", "random", "optuna", "cmaes"] = knob(doc="grid, random, Optuna TPE, or CMA-ES")
    scheduler: Scheduler = knob()
    trials: int = knob(ge=1, le=100000, doc="trials to run (grid: the grid size, checked against this)")
    max_concurrent_trials: int = knob(ge=1, le=10000, doc="1 gives an exactly repeatable sweep")
    resources: Resources = knob()
    metric: str = knob(doc="the reported metric to optimize, e.g. val_loss")
    mode: Literal["min", "max"] = knob(doc="minimize or maximize the metric")
    epochs: int = knob(ge=1, le=100000, doc="training epochs per trial (the budget ASHA cuts into)")
    searcher_seed: int = knob(ge=0, doc="seed of the searcher")
    seeds: list[int] = knob(min_len=1, doc="training seeds; each configuration runs once per seed")

    def check(self) -> list[str]:
        out = []
        if not self.space:
            out.append("space: empty; name at least one config key to search")
        grid = [k for k, d in self.space.items() if d.type == "grid"]
        others = [k for k, d in self.space.items() if d.type != "grid"]
        if self.searcher == "grid":
            if others:
                out.append(f"searcher 'grid' searches only grid dimensions; {', '.join(others)} are "
                           f"{'/'.join(sorted({self.space[k].type for k in others}))}: make them grids or pick random/optuna")
            size = grid_size(self) * len(self.seeds)
            if size > self.trials:
                out.append(f"the grid has {size} trials ({grid_size(self)} points x {len(self.seeds)} seeds), more than "
                           f"trials = {self.trials}: raise trials to {size} or shrink the grid")
        elif grid:
            out.append(f"grid dimensions ({', '.join(grid)}) need searcher 'grid'; use choice for {self.searcher}")
        if self.scheduler.name == "asha" and self.scheduler.grace_period >= self.epochs:
            out.append(f"scheduler.grace_period = {self.scheduler.grace_period} >= epochs = {self.epochs}: "
                       "ASHA could never stop a trial")
        if self.max_concurrent_trials > self.trials:
            out.append(f"max_concurrent_trials = {self.max_concurrent_trials} > trials = {self.trials}")
        return out


def grid_size(spec: SweepSpec) -> int:
    return math.prod(len(d.values or []) for d in spec.space.values() if d.type == "grid") if spec.space else 0


SWEEP_DEFAULTS: dict[str, Any] = {
    "overrides": [], "searcher": "random", "scheduler": {"name": "none", "grace_period": 1, "reduction_factor": 3.0},
    "max_concurrent_trials": 1, "resources": {"cpus": 2.0, "gpus": 0.0}, "metric": "val_loss", "mode": "min",
    "epochs": 3, "searcher_seed": 0, "seeds": [0],
}
DIMENSION_DEFAULTS = {"low": None, "high": None, "values": None}


def _read(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("spec not found", where=str(path), fix="pass a file in sweeps/ or ablations/")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}", where=str(path), fix="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError("a spec is a mapping of keys", where=str(path), fix="see sweeps/README.md for the format")
    return data


def _merge(defaults: dict, data: dict) -> dict:
    out = dict(defaults)
    for key, value in data.items():
        out[key] = _merge(defaults[key], value) if isinstance(defaults.get(key), dict) and isinstance(value, dict) else value
    return out


def load_sweep(path: Path) -> SweepSpec:
    """A validated sweep spec; every config key and override is checked against the config tree."""
    data = _merge(SWEEP_DEFAULTS, _read(path))
    if isinstance(data.get("space"), dict):
        data["space"] = {k: _merge(DIMENSION_DEFAULTS, v) if isinstance(v, dict) else v for k, v in data["space"].items()}
        for dim in data["space"].values():
            if isinstance(dim, dict) and isinstance(dim.get("values"), list):
                dim["values"] = [_as_override(v) for v in dim["values"]]
    spec = build(SweepSpec, data, source=str(path))
    _check_overrides(path, spec.overrides, {k: representative(d) for k, d in spec.space.items()})
    return spec


def _as_override(value: Any) -> str:
    """A YAML value as the text of a Hydra override (lists and booleans in override syntax)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_as_override(v) for v in value) + "]"
    return str(value)


def representative(dim: Dimension) -> str:
    """One value of the dimension, to check that the key exists and accepts its type."""
    if dim.values:
        return dim.values[0]
    value = dim.low if dim.type != "loguniform" else math.sqrt(dim.low * dim.high)
    return str(int(value)) if dim.type == "int" else repr(float(value))


def _check_overrides(path: Path, overrides: list[str], probes: dict[str, str]) -> None:

    trial = list(overrides) + [f"{k}={v}" for k, v in probes.items()]
    try:
        compose(trial)
    except ConfigError as exc:
        raise ConfigError(f"the spec's overrides do not compose: {exc.what}", where=str(path),
                          fix="use keys and values `usam config schema` lists (try them with `usam config show`)") from None


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: list[str]
    rationale: str


@dataclass(frozen=True)
class AblationSpec:
    task: str
    reference: Variant
    variants: list[Variant]
    datasets: list[str]
    seeds: list[int]
    metric: str
    mode: str
    secondary: list[str] = field(default_factory=list)  # judged too, each in its own direction (no verdict weight)

    def grid(self) -> list[tuple[Variant, str, int]]:
        """Every run of the study: (variant, dataset, seed), the reference first."""
        return list(itertools.product([self.reference, *self.variants], self.datasets, self.seeds))


def load_ablation(path: Path) -> AblationSpec:
    """A validated ablation spec: every variant composes (on every dataset) before anything runs."""
    data = _read(path)
    known = {"task", "reference", "variants", "datasets", "seeds", "metric", "mode", "secondary"}
    problems = [f"{k}: unknown key (known keys: {', '.join(sorted(known))})" for k in data if k not in known]
    variants = data.get("variants") or {}
    if not isinstance(variants, dict):
        problems.append("variants: a mapping name -> {overrides: [...], rationale: ...} (or none: the reference alone)")
        variants = {}
    parsed = []
    for name, body in variants.items():
        body = body or {}
        if not isinstance(body, dict) or not isinstance(body.get("overrides", []), list):
            problems.append(f"variants.{name}: expected {{overrides: [...], rationale: text}}")
            continue
        if not body.get("rationale"):
            problems.append(f"variants.{name}.rationale: say what the variant tests")
        extra = set(body) - {"overrides", "rationale"}
        if extra:
            problems.append(f"variants.{name}: unknown key(s) {', '.join(sorted(extra))} (known: overrides, rationale)")
        parsed.append(Variant(str(name), [_override_text(o) for o in body.get("overrides", [])], str(body.get("rationale", ""))))
    datasets = data.get("datasets", ["moving_digits"])
    known_data = get_args(DatasetName)
    if not isinstance(datasets, list) or not datasets or not all(d in known_data for d in datasets):
        problems.append(f"datasets = {datasets!r}: a non-empty list of {', '.join(known_data)}")
        datasets = []
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= SEED_MAX for s in seeds):
        problems.append(f"seeds = {seeds!r}: a non-empty list of integers in 0..{SEED_MAX}")
    if str(data.get("task", "usam")) not in TASK_NAMES:
        problems.append(f"task = {data.get('task')!r}: one of {', '.join(TASK_NAMES)}")
    if data.get("mode", "min") not in ("min", "max"):
        problems.append(f"mode = {data.get('mode')!r}: min or max")
    secondary = data.get("secondary", []) or []
    task = str(data.get("task", "usam"))
    if not isinstance(secondary, list) or not all(isinstance(m, str) for m in secondary):
        problems.append(f"secondary = {secondary!r}: a list of metric names")
        secondary = []
    for metric in secondary:
        if not (metric in DIRECTIONS or metric.startswith("val_")):
            problems.append(f"secondary: unknown metric {metric!r} (known: {', '.join(DIRECTIONS)}, or a val_* "
                            "metric the task reports)")
        elif task in TRAIN_SECTIONS or task == "tokenizer":
            if metric.startswith(GENERATOR_ONLY):
                problems.append(f"secondary: {metric!r} scores a generator's samples; task {task!r} samples none")
    if problems:
        raise ConfigError(f"invalid ablation spec ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n"
                          + "\n".join(f"  - {p}" for p in problems), where=str(path), fix="see ablations/README.md")
    reference = Variant("reference", [_override_text(o) for o in data.get("reference", []) or []], "the reference config")
    spec = AblationSpec(str(data.get("task", "usam")), reference, parsed, list(datasets), list(seeds),
                        str(data.get("metric", "val_loss")), str(data.get("mode", "min")), list(secondary))
    for variant in [reference, *parsed]:
        for dataset in spec.datasets:
            try:

                compose([*reference.overrides, *variant.overrides, f"data.name={dataset}"])
            except ConfigError as exc:
                raise ConfigError(f"variant {variant.name!r} on {dataset} does not compose: {exc.what}",
                                  where=str(path), fix="fix the variant's overrides (try them with `usam config show`)") from None
    return spec


def _override_text(value: Any) -> str:
    return str(value) if not isinstance(value, dict) else ",".join(f"{k}={_as_override(v)}" for k, v in value.items())
