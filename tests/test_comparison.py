"""The comparison's machinery: sampling settings chosen on val, guidance for every token model, the seeds'
intervals and USAM's tests of difference in the table."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from usam.config import compose
from usam.errors import UsamError
from usam.eval.select import (
    Scored,
    check_grids,
    choose,
    grid_points,
    guidance_key,
    split_values,
    tradeoff,
    with_settings,
)
from usam.eval.stats import t_interval
from usam.models.baselines import MaskGIT
from usam.models.raster_ar import RasterAR
from usam.report.table import build_table, differences, to_markdown

# ---- the grid ------------------------------------------------------------------------------------------------------


def test_the_shipped_grids_cover_every_generator_and_build_valid_configs():
    cfg = compose()
    check_grids(cfg, ["usam", "raster_ar", "maskgit", "gan", "diffusion"])
    points = grid_points(cfg, "usam")
    assert len(points) == 16
    assert split_values("1,[0.7, 1.0],x") == ["1", "[0.7, 1.0]", "x"]
    with pytest.raises(UsamError, match="not an axis"):
        grid_points(compose(["eval.select.grids.usam=[model.sampling.cfg]"]), "usam")
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert grid_points(cfg, "gan") == [{}]  # no sampling knob: one setting, the model's own
    point = next(p for p in points if p["model.sampling.cfg"] == "4.5" and p["model.sampling.cfg_ramp"] == "constant")
    variant = with_settings(cfg, point)
    assert variant.model.sampling.cfg == 4.5 and variant.model.sampling.cfg_ramp == "constant"
    assert variant.model.sampling.temperature == [float(point["model.sampling.temperature"][1:-1])]
    assert variant.train == cfg.train and cfg.model.sampling.cfg == 3.0  # only the point's keys change
    diffusion = with_settings(cfg, grid_points(cfg, "diffusion")[-1])
    assert (diffusion.baselines.diffusion.cfg, diffusion.baselines.diffusion.sample_steps,
            diffusion.baselines.diffusion.eta) == (4.5, 25, 1.0)


def test_a_grid_naming_a_missing_key_or_a_bad_value_fails_before_sampling():
    cfg = compose()
    with pytest.raises(UsamError, match=r"'model\.sampling\.guidance', which is not a config key"):
        with_settings(cfg, {"model.sampling.guidance": "2.0"})
    with pytest.raises(UsamError, match=r"model\.sampling\.cfg"):
        with_settings(cfg, {"model.sampling.cfg": "-1"})  # below its range


def _scored(cfgs, ramps, table):
    return [Scored({"m.cfg": c, "m.cfg_ramp": r}, *table[(c, r)]) for c in cfgs for r in ramps]


def test_the_choice_is_the_lowest_fid_within_the_class_accuracy_floor_and_the_curve_is_its_guidance_slice():
    table = {("1", "a"): (20.0, 0.30), ("1", "b"): (25.0, 0.35), ("2", "a"): (30.0, 0.80),
             ("2", "b"): (40.0, 0.90), ("3", "a"): (35.0, 0.95), ("3", "b"): (50.0, 1.00)}
    scored = _scored(["1", "2", "3"], ["a", "b"], table)
    chosen = choose(scored, 0.9)  # floor 0.9 x 1.00: (2,b) 40, (3,a) 35, (3,b) 50 qualify
    assert chosen.settings == {"m.cfg": "3", "m.cfg_ramp": "a"} and chosen.fid_domain == 35.0
    assert choose(scored, 0.0).settings == {"m.cfg": "1", "m.cfg_ramp": "a"}  # no floor: the lowest FID
    assert guidance_key(chosen.settings) == "m.cfg"
    assert tradeoff(scored, chosen) == [{"guidance": 1.0, "fid_domain": 20.0, "class_acc": 0.30},
                                        {"guidance": 2.0, "fid_domain": 30.0, "class_acc": 0.80},
                                        {"guidance": 3.0, "fid_domain": 35.0, "class_acc": 0.95}]
    nan = [Scored({"m.cfg": "1"}, float("nan"), 0.5), Scored({"m.cfg": "2"}, 9.0, 0.1)]
    assert choose(nan, 0.9).settings == {"m.cfg": "2"}  # a NaN score never wins
    with pytest.raises(UsamError, match="no grid point scored"):
        choose([Scored({}, float("nan"), float("nan"))], 0.9)


# ---- guidance ------------------------------------------------------------------------------------------------------


def test_raster_guidance_at_scale_one_is_the_conditional_model_and_a_scale_changes_the_samples():
    torch.manual_seed(0)
    model = RasterAR(bits=4, tokens=10, width=16, depth=1, heads=2, num_classes=3).eval()
    classes = torch.tensor([0, 2])
    sample = lambda **kw: model.generate(2, classes, generator=torch.Generator().manual_seed(5), **kw)  # noqa: E731
    assert torch.equal(sample(), sample(cfg=1.0, cfg_ramp="linear"))
    assert not torch.equal(sample(), sample(cfg=6.0))
    assert torch.equal(sample(cfg=6.0, use_cache=False), sample(cfg=6.0))  # the doubled batch keeps the cache exact
    assert model.guidance(3.0, "constant") == [3.0] * 10
    ramp = model.guidance(3.0, "linear")
    assert ramp[0] == 1.0 and ramp[-1] == pytest.approx(3.0) and all(b > a for a, b in zip(ramp, ramp[1:]))
    with pytest.raises(ValueError, match="unknown guidance ramp"):
        model.guidance(2.0, "cosine")


def test_raster_training_drops_the_class_for_its_share_of_samples_and_never_in_eval():
    torch.manual_seed(0)
    model = RasterAR(bits=4, tokens=6, width=16, depth=1, heads=2, num_classes=3, cond_dropout=0.5)
    classes = torch.zeros(4000, dtype=torch.long)
    null = model.class_embed.weight[3]
    dropped = (model._cond(classes, 4000, "cpu") == null).all(-1).float().mean()
    assert 0.45 < float(dropped) < 0.55
    model.eval()
    assert not (model._cond(classes, 4000, "cpu") == null).all(-1).any()
    assert torch.equal(model._cond(None, 2, "cpu"), null.expand(2, -1))  # None is the null class


def test_maskgit_ramp_starts_unguided_and_a_constant_scale_of_one_is_no_guidance():
    torch.manual_seed(0)
    model = MaskGIT(bits=4, tokens=8, width=16, depth=1, heads=2, num_classes=3).eval()
    with torch.no_grad():  # a fresh model's adaptive norms start at zero: it ignores the class until trained
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    classes = torch.tensor([1, 2])
    sample = lambda **kw: model.generate(2, classes, steps=4, generator=torch.Generator().manual_seed(3), **kw)  # noqa: E731
    assert torch.equal(sample(cfg=1.0), sample(cfg=1.0, cfg_ramp="linear"))
    assert not torch.equal(sample(cfg=8.0), sample(cfg=8.0, cfg_ramp="linear"))
    with pytest.raises(ValueError, match="unknown guidance ramp"):
        sample(cfg=2.0, cfg_ramp="steep")


# ---- the table -----------------------------------------------------------------------------------------------------

BASE = {"dataset": "moving_digits", "diversity_label": "domain_perceptual", "diversity": 0.2, "latency_per_video": 0.01,
        "transfer_fid": 50.0, "floor/fid_domain": 1.5, "real/flicker_mc": 0.97, "real/frame0_class_agreement": 0.9}


def _records():
    usam = [(10.0, 0.8), (14.0, 0.9), (12.0, 0.85)]
    gan = [(30.0, 0.3), (33.0, 0.2), (36.0, 0.25)]
    return ([{**BASE, "model": "usam", "seed": s, "fid_domain": f, "class_acc": a} for s, (f, a) in enumerate(usam)]
            + [{**BASE, "model": "gan", "seed": s, "fid_domain": f, "class_acc": a} for s, (f, a) in enumerate(gan)])


def test_every_cell_is_the_mean_over_seeds_with_its_t_interval_and_the_real_floor_is_a_row():
    table = build_table(_records())
    usam = table[table.model == "usam"].iloc[0]
    half = stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)  # values 10, 14, 12: std 2
    assert usam["seeds"] == 3 and usam["fid_domain"] == pytest.approx(12.0)
    assert (usam["fid_domain_lo"], usam["fid_domain_hi"]) == (pytest.approx(12 - half), pytest.approx(12 + half))
    assert t_interval([10.0, 14.0, 12.0]) == (pytest.approx(12.0), pytest.approx(12 - half), pytest.approx(12 + half))
    floor = table[table.family == "floor"].iloc[0]
    assert floor["fid_domain"] == 1.5 and floor["flicker_mc"] == 0.97 and floor["frame0_class_agreement"] == 0.9
    assert list(table.model) == ["usam", "gan", "real (test vs train)"]
    md = to_markdown(table, differences(table))
    assert f"12.00 ± {half:.2f}" in md and "| usam | moving_digits | 3 | not chosen on val |" in md
    one = build_table(_records()[:1])
    assert one.iloc[0]["fid_domain"] == 10.0 and math.isnan(one.iloc[0]["fid_domain_lo"])  # one seed: no interval


def test_usam_against_each_baseline_gives_the_difference_its_ci_and_welchs_p():
    diffs = {d["metric"]: d for d in differences(build_table(_records())) if d["baseline"] == "gan"}
    fid = diffs["fid_domain"]
    welch = stats.ttest_ind([10.0, 14.0, 12.0], [30.0, 33.0, 36.0], equal_var=False)
    assert fid["difference"] == pytest.approx(12.0 - 33.0) and fid["p_value"] == pytest.approx(welch.pvalue)
    assert fid["ci_low"] < fid["difference"] < fid["ci_high"] < 0
    assert fid["verdict"] == "USAM better"  # lower FID, significant
    assert diffs["class_acc"]["verdict"] == "USAM better" and diffs["class_acc"]["difference"] > 0
    flipped = [{**r, "fid_domain": 100 - r["fid_domain"]} for r in _records()]
    assert {d["metric"]: d for d in differences(build_table(flipped))}["fid_domain"]["verdict"] == "USAM worse"
    close = [{**r, "fid_domain": 10.0 + (r["seed"] - 1) * (1 if r["model"] == "usam" else -1)} for r in _records()]
    assert {d["metric"]: d for d in differences(build_table(close))}["fid_domain"]["verdict"] == \
        "no significant difference"


def test_the_table_reads_only_the_pipelines_seeds(tmp_path):
    import json

    from usam.artifacts.layout import Layout
    from usam.report.table import load_records

    layout = Layout(tmp_path, tmp_path)
    folder = layout.eval_metrics() / "usam" / "moving_digits"
    folder.mkdir(parents=True)
    for seed in (0, 1, 2):  # seed 2: what a run of three seeds left behind
        record = {**BASE, "model": "usam", "seed": seed, "fid_domain": 10.0}
        (folder / f"seed{seed}.json").write_text(json.dumps(record))
    assert sorted(r["seed"] for r in load_records(layout, [0, 1])) == [0, 1]
    assert build_table(load_records(layout, [0, 1])).iloc[0]["seeds"] == 2
    assert len(load_records(layout, [0, 1, 2])) == 3
    with pytest.raises(UsamError, match="no evaluation records"):
        load_records(layout, [7])
