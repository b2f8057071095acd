"""The paper's claims (usam.report.claims, `usam claims`, the `claims` stage): each kind gives each grade on
hand-picked per-seed scores, too few seeds is inconclusive, a bad spec is one error naming the claim and field,
`--strict` sets the exit status, and the shipped claims.yaml fits the committed records."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from usam.errors import ConfigError, UsamError
from usam.eval.stats import t_interval, welch
from usam.report.claims import evaluate, grade, grade_all, load_eval_records, load_spec, write

REPO = Path(__file__).resolve().parents[1]


def rec(model: str, seed: int, dataset: str = "moving_digits", **metrics) -> dict:
    return {"model": model, "dataset": dataset, "seed": seed, "mlflow_run_id": f"{model}-run{seed}", **metrics}


def records(metric: str, **per_model: list[float]) -> list[dict]:
    return [rec(model, seed, **{metric: v}) for model, values in per_model.items() for seed, v in enumerate(values)]


def claim_dict(**changes) -> dict:
    base = {"id": "c1", "statement": "USAM is better.", "metric": "fid_domain", "dataset": "moving_digits",
            "kind": "better", "model": "usam", "versus": "raster_ar", "min_seeds": 3}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def spec_file(tmp_path: Path, *claims: dict, name: str = "claims.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"paper": "a test paper", "claims": list(claims)}, sort_keys=False))
    return path


def one(tmp_path: Path, recs: list[dict], **changes):
    spec = load_spec(spec_file(tmp_path, claim_dict(**changes)))
    return grade_all(spec, recs)[0]


# ---- grades ---------------------------------------------------------------------------------------------------------

LOW, MID, HIGH = [10.0, 11.0, 12.0], [20.0, 21.0, 22.0], [30.0, 31.0, 32.0]


@pytest.mark.parametrize("usam, raster, expected", [
    (LOW, MID, "reproduced"),  # FID 11 against 21: lower is better, the whole CI of the delta < 0
    (MID, LOW, "not reproduced"),  # 21 against 11: the whole CI > 0
    ([10.0, 15.0, 20.0], [12.0, 14.0, 19.0], "inconclusive"),  # 15 against 15: the CI straddles 0
])
def test_better_on_a_lower_is_better_metric(tmp_path, usam, raster, expected):
    g = one(tmp_path, records("fid_domain", usam=usam, raster_ar=raster))
    assert g.grade == expected, g.reason
    assert g.effect["claimed"] == {"op": "<", "threshold": 0.0}
    if expected == "inconclusive":
        assert "straddles" in g.reason


@pytest.mark.parametrize("usam, gan, expected", [
    ([0.80, 0.81, 0.82], [0.50, 0.51, 0.52], "reproduced"),  # higher class accuracy is better
    ([0.50, 0.51, 0.52], [0.80, 0.81, 0.82], "not reproduced"),
    ([0.5, 0.7, 0.9], [0.6, 0.7, 0.8], "inconclusive"),
])
def test_better_on_a_higher_is_better_metric(tmp_path, usam, gan, expected):
    g = one(tmp_path, records("class_acc", usam=usam, gan=gan), metric="class_acc", versus="gan")
    assert g.grade == expected, g.reason
    assert g.effect["claimed"]["op"] == ">"


@pytest.mark.parametrize("usam, expected", [
    ([19.5, 20.0, 20.5], "reproduced"),  # 1 better than raster's 21: the CI [-3.1, 1.1] stays below the 2.1 margin
    (HIGH, "not reproduced"),  # 10 worse: the CI [7.7, 12.3] is wholly above the margin
    ([22.0, 23.0, 24.0], "inconclusive"),  # 2 worse: the CI [-0.27, 4.27] straddles the 2.1 margin
])
def test_no_worse_with_a_relative_margin(tmp_path, usam, expected):
    g = one(tmp_path, records("fid_domain", usam=usam, raster_ar=MID), kind="no_worse", tolerance={"relative": 0.1})
    assert g.grade == expected, g.reason
    assert g.effect["claimed"]["op"] == "<="
    assert g.effect["claimed"]["threshold"] == pytest.approx(2.1)  # 10% of raster_ar's mean 21


def test_no_worse_with_an_absolute_margin(tmp_path):
    recs = records("fid_domain", usam=[22.0, 23.0, 24.0], raster_ar=MID)
    assert one(tmp_path, recs, kind="no_worse", tolerance={"absolute": 5.0}).grade == "reproduced"  # CI max 4.27 < 5
    assert one(tmp_path, recs, kind="no_worse", tolerance={"absolute": 0.0}).grade == "inconclusive"
    assert one(tmp_path, records("fid_domain", usam=HIGH, raster_ar=MID), kind="no_worse",
               tolerance={"absolute": 5.0}).grade == "not reproduced"


def test_no_worse_on_a_higher_is_better_metric(tmp_path):
    recs = records("recall_domain", usam=[0.48, 0.49, 0.50], raster_ar=[0.50, 0.51, 0.52])
    g = one(tmp_path, recs, metric="recall_domain", kind="no_worse", tolerance={"absolute": 0.1})
    assert g.grade == "reproduced"
    assert g.effect["claimed"] == {"op": ">=", "threshold": -0.1}
    recs = records("recall_domain", usam=[0.18, 0.19, 0.20], raster_ar=[0.50, 0.51, 0.52])
    assert one(tmp_path, recs, metric="recall_domain", kind="no_worse",
               tolerance={"absolute": 0.1}).grade == "not reproduced"


def test_a_margin_on_better(tmp_path):
    recs = records("fid_domain", usam=[18.0, 19.0, 20.0], raster_ar=MID)  # 2 better; the CI is about [-4.3, 0.3]
    assert one(tmp_path, recs, tolerance={"absolute": 10.0}).grade == "not reproduced"  # not 10 better
    assert one(tmp_path, recs).grade == "inconclusive"


RASTER_LATENCY = [0.100, 0.101, 0.102]


@pytest.mark.parametrize("usam, expected", [
    ([0.010, 0.011, 0.012], "reproduced"),  # about 9x faster
    ([0.050, 0.051, 0.052], "not reproduced"),  # about 2x
    ([0.01, 0.02, 0.04], "inconclusive"),  # 5x by the geometric mean, a wide interval around it
])
def test_ratio_at_least(tmp_path, usam, expected):
    g = one(tmp_path, records("latency_s_batch1", usam=usam, raster_ar=RASTER_LATENCY), metric="latency_s_batch1",
            kind="ratio_at_least", at_least=5)
    assert g.grade == expected, g.reason
    assert g.effect["what"] == "raster_ar / usam"  # lower latency is better: how many times faster usam is
    low, high = g.effect["ci"]
    assert low <= g.effect["value"] <= high
    log = welch([math.log(x) for x in RASTER_LATENCY], [math.log(x) for x in usam])
    assert (low, high) == pytest.approx((math.exp(log.ci_low), math.exp(log.ci_high)))
    if expected == "inconclusive":
        assert g.effect["value"] == pytest.approx(5.0, rel=0.02)  # 0.101 / 0.02


def test_a_ratio_of_a_higher_is_better_metric_is_model_over_versus(tmp_path):
    g = one(tmp_path, records("flicker_mc", usam=[0.9, 0.91, 0.92], gan=[0.3, 0.3, 0.31]), metric="flicker_mc",
            versus="gan", kind="ratio_at_least", at_least=2)
    assert g.effect["what"] == "usam / gan" and g.grade == "reproduced"


@pytest.mark.parametrize("kind, extra", [("better", {}), ("no_worse", {"tolerance": {"absolute": 1.0}}),
                                         ("ratio_at_least", {"at_least": 1.2})])
def test_too_few_seeds_is_inconclusive_and_says_so(tmp_path, kind, extra):
    recs = records("fid_domain", usam=LOW[:2], raster_ar=MID)  # clear-cut, but usam has two seeds
    g = one(tmp_path, recs, kind=kind, **extra)
    assert g.grade == "inconclusive"
    assert "too few seeds" in g.reason and "usam has 2" in g.reason and "min_seeds 3" in g.reason
    assert g.effect["value"] is not None  # the point estimate is still shown
    assert one(tmp_path, recs, kind=kind, min_seeds=2, **extra).grade != "inconclusive"


def test_a_model_without_records_is_inconclusive(tmp_path):
    g = one(tmp_path, records("fid_domain", usam=LOW, raster_ar=MID), versus="maskgit")
    assert g.grade == "inconclusive" and "maskgit has 0" in g.reason


def test_the_evidence(tmp_path):
    recs = records("fid_domain", usam=LOW, raster_ar=MID) + [rec("usam", 0, "bouncing_shapes", fid_domain=99.0)]
    g = one(tmp_path, recs)
    d = g.as_dict()
    ev = d["evidence"]
    assert ev["model"]["n"] == 3 and ev["model"]["seeds"] == [0, 1, 2]
    assert ev["model"]["run_ids"] == ["usam-run0", "usam-run1", "usam-run2"]  # the other dataset's record is not used
    assert ev["versus"]["run_ids"] == ["raster_ar-run0", "raster_ar-run1", "raster_ar-run2"]
    assert ev["model"]["mean"] == pytest.approx(11.0)
    assert ev["model"]["ci"] == pytest.approx(list(t_interval(LOW)[1:]))
    c = welch(LOW, MID, higher_is_better=False)
    assert ev["effect"]["value"] == pytest.approx(-10.0)
    assert ev["effect"]["ci"] == pytest.approx([c.ci_low, c.ci_high])
    assert ev["effect"]["p_value"] == pytest.approx(c.p_value)
    text = d["evidence_text"]
    assert "usam 11 [" in text and "(n=3)" in text and "Welch p" in text and "claimed Δ < +0" in text


# ---- records --------------------------------------------------------------------------------------------------------


def test_records_are_read_from_both_layouts(tmp_path):
    eval_dir = tmp_path / "metrics" / "eval"
    (eval_dir / "usam" / "moving_digits").mkdir(parents=True)
    (eval_dir / "gan").mkdir(parents=True)
    (eval_dir / "usam" / "moving_digits.json").write_text(json.dumps(rec("usam", 0, fid_domain=1.0)))
    for seed in (0, 1, 2):  # seed 0 is in both layouts: the per-seed file wins
        (eval_dir / "usam" / "moving_digits" / f"seed{seed}.json").write_text(
            json.dumps(rec("usam", seed, fid_domain=10.0 + seed)))
    (eval_dir / "gan" / "moving_digits.json").write_text(json.dumps({"fid_domain": 5.0}))  # fields from the path
    got = sorted((r["model"], r["dataset"], r["seed"], r["fid_domain"]) for r in load_eval_records(eval_dir))
    assert got == [("gan", "moving_digits", 0, 5.0), ("usam", "moving_digits", 0, 10.0),
                   ("usam", "moving_digits", 1, 11.0), ("usam", "moving_digits", 2, 12.0)]
    (eval_dir / "gan" / "moving_digits.json").write_text("{not json")
    with pytest.raises(UsamError, match="unreadable evaluation record"):
        load_eval_records(eval_dir)


# ---- spec errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, expected", [
    ({"metric": None}, ["claim 'c1'.metric: missing", "add `metric: ...`"]),
    ({"statement": None}, ["claim 'c1'.statement: missing"]),
    ({"kind": "beter"}, ["claim 'c1'.kind = 'beter': unknown kind", "did you mean 'better'", "no_worse"]),
    ({"model": "usma"}, ["claim 'c1'.model = 'usma': unknown model", "did you mean 'usam'"]),
    ({"versus": "usam"}, ["claim 'c1'.versus = 'usam': the same model"]),
    ({"kind": "no_worse"}, ["claim 'c1'.tolerance: missing", "tolerance: {relative: 0.1}"]),
    ({"tolerance": 0.1}, ["claim 'c1'.tolerance = 0.1: say which kind", "{absolute: 2.0}"]),
    ({"kind": "ratio_at_least"}, ["claim 'c1'.at_least: missing", "at_least: 5"]),
    ({"at_least": 5}, ["claim 'c1'.at_least: only a ratio_at_least claim"]),
    ({"min_seeds": 1}, ["claim 'c1'.min_seeds = 1: an integer >= 2"]),
    ({"tolerence": {"absolute": 1}}, ["claim 'c1'.tolerence: unknown field", "did you mean 'tolerance'"]),
    ({"metric": "train_loss_weird"}, ["claim 'c1'.metric = 'train_loss_weird': which way is better",
                                      "direction: lower"]),
    ({"id": None}, ["claims[0].id: missing"]),
])
def test_a_bad_claim_is_one_error_naming_the_claim_the_field_and_the_fix(tmp_path, changes, expected):
    with pytest.raises(ConfigError) as info:
        load_spec(spec_file(tmp_path, claim_dict(**changes)))
    message = str(info.value)
    assert "invalid claims spec (1 problem)" in message
    for part in expected:
        assert part in message, message
    assert "fix:" in message and str(tmp_path / "claims.yaml") in message


def test_every_problem_is_in_the_one_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\(3 problems\)") as info:
        load_spec(spec_file(tmp_path, claim_dict(kind="bad"), claim_dict(id="c2", model="nope"), claim_dict(id="c2")))
    assert "claim 'c1'.kind" in str(info.value) and "claim 'c2'.model" in str(info.value)
    assert "claim 'c2'.id: used by 2 claims" in str(info.value)


def test_a_metric_or_dataset_no_record_has_is_an_error(tmp_path):
    recs = records("fid_domain", usam=LOW, raster_ar=MID)
    spec = load_spec(spec_file(tmp_path, claim_dict(metric="fvd_domian"), claim_dict(id="c2", dataset="moving_digts")))
    with pytest.raises(ConfigError) as info:
        grade_all(spec, recs)
    message = str(info.value)
    assert "claim 'c1'.metric = 'fvd_domian': no evaluation record has this key" in message
    assert "claim 'c2'.dataset = 'moving_digts'" in message and "did you mean 'moving_digits'" in message
    with pytest.raises(UsamError, match="no evaluation records"):
        grade_all(load_spec(spec_file(tmp_path, claim_dict())), [])


def test_a_bad_spec_stops_before_the_records_are_read(tmp_path):
    bad = spec_file(tmp_path, claim_dict(kind="bad"))
    (tmp_path / "eval" / "usam").mkdir(parents=True)
    (tmp_path / "eval" / "usam" / "moving_digits.json").write_text("{broken")
    with pytest.raises(ConfigError, match="claim 'c1'.kind"):
        evaluate(bad, tmp_path / "eval")


@pytest.mark.parametrize("text, expected", [("claims: [", "not valid YAML"), ("claims: []\n", "non-empty list"),
                                            ("- 1\n", "non-empty list")])
def test_a_spec_that_is_not_a_spec(tmp_path, text, expected):
    (tmp_path / "claims.yaml").write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_spec(tmp_path / "claims.yaml")


# ---- the shipped spec -----------------------------------------------------------------------------------------------


def test_the_shipped_claims_fit_the_committed_records():
    spec = load_spec(REPO / "claims.yaml")
    recs = load_eval_records(REPO / "metrics" / "eval")
    graded = grade_all(spec, recs)  # every metric key and dataset exists in the records
    stated = {(c.kind, c.metric, c.model, c.versus) for c in spec.claims}
    assert ("no_worse", "fid_domain", "usam", "raster_ar") in stated
    assert {("better", "warping_error", "usam", m) for m in ("gan", "diffusion")} <= stated
    assert {("better", "fvd_domain", "usam", m) for m in ("raster_ar", "maskgit", "gan", "diffusion")} <= stated
    speed = [c for c in spec.claims if c.kind == "ratio_at_least" and c.metric == "latency_s_batch1"]
    assert [(c.model, c.versus, c.at_least) for c in speed] == [("usam", "raster_ar", 5.0)]
    assert all(c.dataset == "moving_digits" and c.min_seeds == 3 for c in spec.claims)
    assert all(g.grade in ("reproduced", "not reproduced", "inconclusive") for g in graded)


# ---- the command line and the stage ---------------------------------------------------------------------------------


def _project(root: Path, usam: list[float]) -> None:
    """A project whose records give the one-claim spec `claims.yaml` the grade ``usam`` earns against MID."""
    eval_dir = root / "metrics" / "eval"
    for model, values in (("usam", usam), ("raster_ar", MID)):
        for seed, v in enumerate(values):
            (eval_dir / model / "moving_digits").mkdir(parents=True, exist_ok=True)
            (eval_dir / model / "moving_digits" / f"seed{seed}.json").write_text(
                json.dumps(rec(model, seed, fid_domain=v)))
    spec_file(root, claim_dict())


def test_usam_claims_strict_exit_codes(empty_project, capsys):
    from usam.cli import main

    _project(empty_project, LOW)
    assert main(["claims", "--strict"]) == 0
    out = capsys.readouterr().out
    assert "REPRODUCED" in out and "1 reproduced, 0 not reproduced, 0 inconclusive of 1 claims." in out
    shutil.rmtree(empty_project / "metrics")
    _project(empty_project, HIGH)
    assert main(["claims"]) == 0  # graded, not strict
    assert main(["claims", "--strict"]) == 1
    assert "NOT REPRODUCED" in capsys.readouterr().out
    assert not (empty_project / "reports").exists()  # printing only, unless --out
    assert main(["claims", "--out", "reports"]) == 0
    assert {p.name for p in (empty_project / "reports").iterdir()} == {"claims.json", "claims.md", "claims.html"}


def test_usam_claims_bad_spec_exits_2_with_the_error(empty_project, capsys):
    from usam.cli import main

    _project(empty_project, LOW)
    spec_file(empty_project, claim_dict(model="usma"), name="bad.yaml")
    assert main(["claims", "--spec", "bad.yaml", "--out", "reports"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usam: error: invalid claims spec") and "claim 'c1'.model = 'usma'" in err
    assert not (empty_project / "reports").exists()
    assert main(["claims", "--spec", "missing.yaml"]) == 2


def test_usam_claims_strict_through_a_subprocess(empty_project):
    _project(empty_project, [10.0, 15.0, 20.0])  # inconclusive
    run = subprocess.run([sys.executable, "-m", "usam.cli", "claims", "--strict"], capture_output=True, text=True,
                         cwd=empty_project)
    assert run.returncode == 1, run.stderr
    assert "INCONCLUSIVE" in run.stdout and "--strict: not every claim is reproduced" in run.stderr


def test_the_stage_writes_the_reports_and_the_counts(empty_project, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # DVC runs the stage from the project root, where `pipelines` lives
    from pipelines.claims import main

    shutil.copy(REPO / "params.yaml", empty_project / "params.yaml")
    _project(empty_project, LOW)
    main(["--spec", "claims.yaml", "--records", "metrics/eval", "--out", "reports", "--metrics", "metrics/claims.json"])
    assert json.loads((empty_project / "metrics" / "claims.json").read_text()) == {
        "reproduced": 1, "not_reproduced": 0, "inconclusive": 0, "claims": 1}
    data = json.loads((empty_project / "reports" / "claims.json").read_text())
    assert data["spec"] == "claims.yaml" and data["records"] == "metrics/eval"
    assert data["claims"][0]["grade"] == "reproduced"
    md = (empty_project / "reports" / "claims.md").read_text()
    assert "| claim | grade | evidence |" in md and "**reproduced**" in md and "usam-run0" in md
    assert "<td class='reproduced'>" in (empty_project / "reports" / "claims.html").read_text()


def test_the_paper_report_shows_the_graded_claims(tmp_path):
    from usam.artifacts.layout import Layout
    from usam.report.paper import graded_claims

    layout = Layout(tmp_path, tmp_path)
    assert "No graded claims yet" in graded_claims(layout).markdown[0]
    spec = load_spec(spec_file(tmp_path, claim_dict()))
    graded = [grade(spec.claims[0], records("fid_domain", usam=LOW, raster_ar=MID))]
    write(spec, graded, tmp_path, tmp_path / "reports")
    text = "\n".join(graded_claims(layout).markdown)
    assert "**1 reproduced, 0 not reproduced, 0 inconclusive** of 1 claims" in text
    assert "| **c1**: USAM is better. | **reproduced**" in text


def test_only_the_pipelines_seeds_are_graded_a_stale_seed_file_is_not(empty_project, monkeypatch):
    """A run of fewer seeds over a folder of more (the tiny profile over a clone's committed records) must not mix
    the leftover seed's record into the grade."""
    monkeypatch.syspath_prepend(str(REPO))
    from pipelines.claims import main
    from usam.config import load_params

    shutil.copy(REPO / "params.yaml", empty_project / "params.yaml")
    seeds = load_params(REPO / "params.yaml").seeds
    _project(empty_project, LOW[: len(seeds)])
    stale = empty_project / "metrics" / "eval" / "usam" / "moving_digits" / f"seed{max(seeds) + 1}.json"
    stale.write_text(json.dumps(rec("usam", max(seeds) + 1, fid_domain=1000.0)))
    main(["--spec", "claims.yaml", "--records", "metrics/eval", "--out", "reports"])
    graded = json.loads((empty_project / "reports" / "claims.json").read_text())["claims"][0]
    assert graded["grade"] == "reproduced"
    assert "1000" not in json.dumps(graded)
    _, without = evaluate(empty_project / "claims.yaml", empty_project / "metrics" / "eval")  # no seeds: every file
    assert without[0].grade != "reproduced"
