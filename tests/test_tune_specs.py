"""Sweep and ablation specs are validated before anything runs; the ablation statistics on hand-made numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from usam.config import compose
from usam.errors import ConfigError
from usam.eval.stats import mean_std, verdict, welch
from usam.tune.spec import grid_size, load_ablation, load_sweep


@pytest.mark.parametrize("name", ["lr_wd", "smoke"])
def test_the_shipped_sweeps_are_valid(name):
    spec = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    assert spec.trials >= 1 and spec.space


def test_the_lr_wd_sweep_covers_the_seed_ranges():
    spec = load_sweep(REPO / "sweeps" / "lr_wd.yaml")
    lr, wd, clip = spec.space["train.lr"], spec.space["train.weight_decay"], spec.space["train.grad_clip"]
    assert (lr.type, lr.low, lr.high) == ("loguniform", 1e-4, 3e-4)
    assert (wd.low, wd.high) == (1e-3, 1e-2) and (clip.low, clip.high) == (1.0, 5.0)
    assert "train.warmup_steps" in spec.space and spec.searcher == "optuna" and spec.scheduler.name == "asha"


def test_the_shipped_ablations_compose_every_variant_on_every_dataset():
    components = load_ablation(REPO / "ablations" / "components.yaml")
    names = {v.name for v in components.variants}
    assert {"no_temporal_fusion", "single_scale", "sparse_attention", "factorized_attention", "learned_positions",
            "no_perceptual", "adversarial", "no_temporal_loss", "no_self_correction", "no_residual"} <= names
    assert all(v.rationale for v in components.variants)
    assert len(components.grid()) == (1 + len(components.variants)) * 2 * 3
    assert components.grid()[0][0].name == "reference"
    datasets = load_ablation(REPO / "ablations" / "datasets.yaml")
    assert datasets.datasets == ["moving_digits", "bouncing_shapes"] and len(datasets.grid()) == 6


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"task": "usam", "space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-4}}, "trials": 4}


@pytest.mark.parametrize("change, message", [
    ({"trails": 3}, "trails: unknown key; did you mean 'trials'"),
    ({"space": {"train.lr": {"type": "uniform", "low": 3e-4, "high": 1e-4}}}, "empty or inverted"),
    ({"space": {"train.lr": {"type": "loguniform", "low": 0.0, "high": 1e-4}}}, "must be > 0"),
    ({"space": {"train.lr": {"type": "uniform", "low": 1e-4}}}, "needs both low and high"),
    ({"space": {"train.lrr": {"type": "uniform", "low": 1e-4, "high": 1e-3}}}, "(?s)do not compose.*train.lrr"),
    ({"space": {"train.lr": {"type": "uniform", "low": 2.0, "high": 3.0}}}, "(?s)do not compose.*train.lr = 2.0"),
    ({"searcher": "bayes"}, "searcher"),
    ({"searcher": "grid", "trials": 5, "seeds": [0, 1],
      "space": {"train.lr": {"type": "grid", "values": [1e-4, 2e-4, 3e-4]}}}, "grid has 6 trials .3 points x 2 seeds."),
    ({"scheduler": {"name": "asha", "grace_period": 5}, "epochs": 3}, "ASHA could never stop"),
    ({"space": {}}, "space: empty"),
])
def test_a_bad_sweep_spec_is_one_clear_error_before_any_trial(tmp_path, change, message):
    path = _write(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigError, match=message) as err:
        load_sweep(path)
    assert str(path) in str(err.value)


def test_grid_size_counts_every_point(tmp_path):
    spec = load_sweep(_write(tmp_path, {
        **BASE, "searcher": "grid", "trials": 12,
        "space": {"train.lr": {"type": "grid", "values": [1e-4, 2e-4, 3e-4]},
                  "model.attention": {"type": "grid", "values": ["block_causal", "sparse"]},
                  "train.grad_clip": {"type": "grid", "values": [1, 5]}}}))
    assert grid_size(spec) == 12


def test_a_bad_ablation_variant_is_refused_naming_it(tmp_path):
    path = _write(tmp_path, {"task": "usam", "reference": [], "datasets": ["moving_digits"],
                             "variants": {"typo": {"overrides": ["model.atention=sparse"], "rationale": "x"}}})
    with pytest.raises(ConfigError, match="variant 'typo' on moving_digits does not compose"):
        load_ablation(path)
    path = _write(tmp_path, {"variants": {"quiet": {"overrides": []}}, "colour": 1})
    with pytest.raises(ConfigError, match="colour: unknown key") as err:
        load_ablation(path)
    assert "quiet.rationale" in str(err.value)


# ---- statistics ---------------------------------------------------------------------------------------------------

def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    mean, std = mean_std([7.0])
    assert mean == 7.0 and math.isnan(std)


def test_welch_matches_the_hand_computation():
    a, b = [10.0, 12.0, 14.0], [5.0, 6.0, 7.0, 8.0]
    c = welch(a, b, higher_is_better=True)
    # by hand: means 12 and 6.5; variances 4 and 5/3; se = sqrt(4/3 + 5/12) = sqrt(1.75)
    se = math.sqrt(1.75)
    dof = 1.75**2 / ((4 / 3) ** 2 / 2 + (5 / 12) ** 2 / 3)
    assert c.delta == pytest.approx(5.5) and c.t == pytest.approx(5.5 / se)
    assert dof == pytest.approx(3.2347, abs=1e-3)
    assert c.t == pytest.approx(4.1576, abs=1e-3)  # scipy.stats.ttest_ind(a, b, equal_var=False): t 4.1576,
    assert c.p_value == pytest.approx(0.02182, abs=1e-4)  # p 0.02182, dof 3.2347
    half = c.ci_high - c.delta
    assert c.ci_low == pytest.approx(c.delta - half) and 3.0 < half < 4.5
    assert c.better is True and welch(a, b, higher_is_better=False).better is False


def test_verdicts_across_datasets():
    up = welch([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])
    down = welch([1.0, 2.0, 3.0], [10.0, 11.0, 12.0])
    flat = welch([1.0, 2.0, 3.0], [1.5, 2.0, 2.5])
    assert verdict({"digits": up, "shapes": up}) == "robust"
    assert verdict({"digits": up, "shapes": down}) == "fragile"
    assert verdict({"digits": up, "shapes": flat}) == "fragile"
    assert verdict({"digits": flat, "shapes": flat}) == "no effect"
    assert verdict({"digits": welch([1.0], [2.0, 3.0])}) == "too few seeds"


def test_each_searcher_and_dimension_becomes_its_tune_counterpart(tmp_path):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from usam.tune.runner import (
        _budget,
        _repeatable,
        _tune_config,
        param_space,
        recipe,
        trial_overrides,
        trial_resources,
    )

    space = {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-4},
             "train.grad_clip": {"type": "uniform", "low": 1.0, "high": 5.0},
             "train.warmup_steps": {"type": "int", "low": 10, "high": 20},
             "model.attention": {"type": "choice", "values": ["block_causal", "sparse"]}}
    spec = load_sweep(_write(tmp_path, {**BASE, "space": space, "searcher": "optuna", "epochs": 6, "seeds": [3, 4],
                                        "scheduler": {"name": "asha", "grace_period": 2}, "resources": {"cpus": 2}}))
    tune_space = param_space("sweep", spec)
    assert set(tune_space) == set(space)  # adaptive searchers do not search the seed
    assert (tune_space["train.lr"].lower, tune_space["train.lr"].upper) == (1e-4, 3e-4)
    assert (tune_space["train.warmup_steps"].lower, tune_space["train.warmup_steps"].upper) == (10, 21)
    assert tune_space["model.attention"].categories == ["block_causal", "sparse"]
    config = _tune_config("sweep", spec)
    assert isinstance(config.search_alg, OptunaSearch) and isinstance(config.scheduler, ASHAScheduler)
    assert config.num_samples == 4 and config.metric == "val_loss" and config.mode == "min"
    # one worker: it trains in the trial, on all of the trial's CPUs; two: each gets half of what the waiting
    # trial (0.25 CPU) leaves
    assert _budget("sweep", spec) == ["train.epochs=6", "train.runtime.cpus_per_worker=2", "train.runtime.use_gpu=false"]
    assert trial_resources(recipe(compose([*spec.overrides, *_budget("sweep", spec)]), spec.task)) == {"CPU": 2.0}
    ddp = load_sweep(_write(tmp_path, {**BASE, "overrides": [*BASE.get("overrides", []), "train.runtime.workers=2"],
                                       "resources": {"cpus": 2}}))
    assert _budget("sweep", ddp)[1] == "train.runtime.cpus_per_worker=0.875"
    assert trial_resources(recipe(compose([*ddp.overrides, *_budget("sweep", ddp)]), ddp.task)) == {"CPU": 0.25}
    assert trial_overrides("sweep", 4, point={"train.lr": 2e-4, "seed": 9}) == ["train.lr=0.0002", "seed=4"]
    assert _repeatable("sweep", spec)[0]
    grid = load_sweep(_write(tmp_path, {**BASE, "space": {"train.lr": {"type": "grid", "values": [1e-4, 2e-4]}},
                                        "searcher": "grid", "seeds": [0, 1], "max_concurrent_trials": 2}))
    assert param_space("sweep", grid)["seed"] == {"grid_search": [0, 1]} and _tune_config("sweep", grid).num_samples == 1
    rand = load_sweep(_write(tmp_path, {**BASE, "searcher": "random", "max_concurrent_trials": 2}))
    assert isinstance(_tune_config("sweep", rand).search_alg, BasicVariantGenerator)
    tpe = load_sweep(_write(tmp_path, {**BASE, "searcher": "optuna", "max_concurrent_trials": 2}))
    repeatable, why = _repeatable("sweep", tpe)
    assert not repeatable and "2 concurrent trials" in why


def test_the_shipped_ablations_judge_the_suites_metrics_too():
    components = load_ablation(REPO / "ablations" / "components.yaml")
    assert components.secondary == ["eval_fid_domain", "eval_fvd_domain", "eval_class_acc", "eval_warping_error",
                                    "val_loss"]
    assert set(load_ablation(REPO / "ablations" / "datasets.yaml").secondary) >= {"eval_fid_domain", "eval_class_acc"}


@pytest.mark.parametrize("change, message", [
    ({"secondary": ["eval_fid"]}, "secondary: unknown metric 'eval_fid'"),
    ({"secondary": "eval_fid_domain"}, "a list of metric names"),
    ({"task": "evaluator_frame", "reference": [], "secondary": ["eval_class_acc"]},
     "scores a generator's samples; task 'evaluator_frame' samples none"),
])
def test_a_bad_secondary_metric_is_refused_before_any_trial(tmp_path, change, message):
    body = {"task": "usam", "reference": [], "variants": {}, "metric": "val_loss", **change}
    with pytest.raises(ConfigError, match=message):
        load_ablation(_write(tmp_path, body))


def test_every_metric_is_judged_in_its_own_direction_and_a_missing_one_is_an_empty_cell():
    import pandas as pd

    from usam.tune.results import ablation_summaries
    from usam.tune.spec import AblationSpec, Variant

    rows = []
    for seed in range(3):
        rows.append({"variant": "reference", "dataset": "a", "seed": seed, "eval_class_acc": 0.5 + 0.01 * seed,
                     "eval_warping_error": 0.02 + 0.001 * seed})
        rows.append({"variant": "x", "dataset": "a", "seed": seed, "eval_class_acc": 0.8 + 0.01 * seed,  # higher
                     "eval_warping_error": 0.04 + 0.001 * seed})  # higher error: worse
    table = pd.DataFrame(rows).assign(status="completed")
    ref = Variant("reference", [], "")
    spec = AblationSpec("usam", ref, [Variant("x", [], "r")], ["a"], [0, 1, 2], "eval_class_acc", "max",
                        ["eval_warping_error", "eval_fvd_domain"])
    stacked, verdicts = ablation_summaries(table, spec)
    cell = stacked.set_index(["metric", "variant"])
    assert cell.loc[("eval_class_acc", "x"), "effect"] == "better"
    assert cell.loc[("eval_class_acc", "x"), "better"] == "higher"
    assert cell.loc[("eval_warping_error", "x"), "effect"] == "worse"
    assert cell.loc[("eval_warping_error", "x"), "delta"] == pytest.approx(0.02)
    assert cell.loc[("eval_warping_error", "x"), "better"] == "lower"
    assert cell.loc[("eval_fvd_domain", "x"), "seeds"] == 0  # no trial reported it: a missing cell
    assert verdicts["eval_class_acc"]["x"] == verdicts["eval_warping_error"]["x"] == "robust"
    assert set(stacked["metric"]) == {"eval_class_acc", "eval_warping_error", "eval_fvd_domain"}


@pytest.mark.parametrize("change, message", [
    ({"datasets": "moving_digits"}, "datasets = 'moving_digits': a non-empty list of"),  # not split into letters
    ({"datasets": ["moving_digit"]}, "datasets = \\['moving_digit'\\]"),
    ({"task": "usamm"}, "task = 'usamm': one of evaluator_frame"),
    ({"seeds": [0, 2**40]}, "a non-empty list of integers in 0..4294967295"),
    ({"seeds": [True]}, "a non-empty list of integers"),
])
def test_a_bad_ablation_field_is_one_clear_error(tmp_path, change, message):
    body = {"task": "usam", "reference": [], "variants": {}, "datasets": ["moving_digits"], **change}
    with pytest.raises(ConfigError, match=message) as err:
        load_ablation(_write(tmp_path, body))
    assert err.value.where == str(tmp_path / "spec.yaml")


def test_a_seed_beyond_32_bits_is_refused_by_the_schema():
    with pytest.raises(ConfigError, match="seed = 4294967296: expected a value >= 0 and <= 4294967295"):
        compose(["seed=4294967296"])
    assert compose(["seed=4294967295"]).seed == 2**32 - 1
