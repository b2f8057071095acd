"""The paper's claims, graded against the evaluation records (`usam claims`, DVC stage `claims`).

``claims.yaml`` states each claim as a checkable comparison of one metric between two models on one
dataset, over seeds:

- ``better``: ``model`` beats ``versus`` (by more than an optional ``tolerance`` margin);
- ``no_worse``: ``model`` is worse than ``versus`` by at most ``tolerance`` (a non-inferiority margin);
- ``ratio_at_least``: ``model`` is at least ``at_least`` times better than ``versus`` (e.g. 5x faster).

A ``tolerance`` says which kind it is: ``{absolute: 2.0}`` in the metric's units, or ``{relative: 0.1}``,
a fraction of ``versus``'s mean. "Better" follows the metric: lower for FID/FVD/KID/warping error/latency,
higher for recall/precision/class accuracy/flicker (``direction`` in the claim for a metric not known here).

The spec is checked before anything is graded, first on its own (an unknown or missing field, a bad kind,
an unknown model, a bad tolerance), then against the records (a metric key no evaluation record has, a
dataset none was made on); each check raises one :class:`~usam.errors.ConfigError` listing every problem,
each naming the claim id, the field and the fix.

Each claim is then graded from the per-seed records with the 95% confidence interval of the difference
of means (Welch, ``usam.eval.stats.welch``), or for a ratio of the difference of mean log values (the
log of the ratio of geometric means): ``reproduced`` when the whole interval lies on the claimed side of
the threshold, ``not reproduced`` when it lies wholly on the other side, ``inconclusive`` when it
straddles the threshold or either model has fewer than ``min_seeds`` seeds (the reason says which).
Every grade carries its evidence: per model the mean, the 95% t-interval, n, the seeds and the MLflow
run ids of the records used; the difference or ratio with its interval; Welch's p.

Writes ``claims.json``, ``claims.md`` (the table a reviewer reads first) and ``claims.html`` to the
reports folder, and the counts per grade to a metrics file (``dvc metrics show``).
"""

from __future__ import annotations

import difflib
import html
import json
import math
import operator
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from usam.errors import ConfigError, UsamError
from usam.eval.stats import mean_std, t_interval, welch

KINDS = ("better", "no_worse", "ratio_at_least")
GRADES = ("reproduced", "not reproduced", "inconclusive")
MODELS = ("usam", "raster_ar", "maskgit", "gan", "diffusion")  # what the pipeline trains and evaluates
REQUIRED = ("id", "statement", "metric", "dataset", "kind", "model", "versus")
OPTIONAL = ("tolerance", "at_least", "min_seeds", "direction")
DEFAULT_MIN_SEEDS = 3
# metric name (its last path part, e.g. `transfer/x/fid_domain` -> `fid_domain`) prefix -> which way is better
LOWER_IS_BETTER = ("fid", "fvd", "kid", "kvd", "warping_error", "latency", "frame0_l1", "peak_memory", "train_seconds",
                   "parameters", "flops")
HIGHER_IS_BETTER = ("recall", "precision", "f_score", "class_acc", "flicker", "is_domain", "feature_consistency",
                    "frame0_class_agreement", "diversity")
DOCS = "docs/baselines-and-evaluation.md#the-papers-claims"


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    metric: str
    dataset: str
    kind: str
    model: str
    versus: str
    tolerance: float = 0.0  # the margin's size (in the metric's units when absolute, a fraction when relative)
    tolerance_mode: str = "absolute"  # absolute | relative (a fraction of versus's mean)
    at_least: float | None = None  # ratio_at_least: the smallest ratio that reproduces the claim
    min_seeds: int = DEFAULT_MIN_SEEDS
    higher_is_better: bool = False


@dataclass(frozen=True)
class Spec:
    path: str
    paper: str
    claims: list[Claim]


# ---- records ------------------------------------------------------------------------------------------------------


def load_eval_records(folder: Path, seeds: list[int] | None = None) -> list[dict]:
    """Every evaluation record under ``folder`` (metrics/eval): one per seed at ``<model>/<dataset>/seed<k>.json``,
    or the older one per pair at ``<model>/<dataset>.json``. A (model, dataset, seed) found in both layouts is
    taken from the per-seed file. A record without ``model``, ``dataset`` or ``seed`` gets them from its path.
    With ``seeds`` (the pipeline's ``seeds``), only those seeds' records: a file another seed list left behind
    (a run of fewer seeds over a folder of more) never joins the grade."""
    folder = Path(folder)
    found: dict[tuple[str, str, int], dict] = {}
    for pattern in ("*/*.json", "*/*/seed*.json"):  # the per-seed layout last: it wins
        for path in sorted(folder.glob(pattern)):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UsamError(f"unreadable evaluation record: {exc}", where=str(path),
                                fix="re-run its evaluate stage (`dvc repro evaluate`)") from None
            if not isinstance(record, dict):
                raise UsamError("an evaluation record is a JSON object", where=str(path),
                                fix="re-run its evaluate stage (`dvc repro evaluate`)")
            rel = path.relative_to(folder).parts
            record.setdefault("model", rel[0])
            record.setdefault("dataset", rel[1] if len(rel) == 3 else path.stem)
            match = re.fullmatch(r"seed(\d+)", path.stem)
            record.setdefault("seed", int(match.group(1)) if len(rel) == 3 and match else 0)
            found[(str(record["model"]), str(record["dataset"]), int(record["seed"]))] = record
    return [r for r in found.values() if seeds is None or int(r["seed"]) in seeds]


# ---- the spec -----------------------------------------------------------------------------------------------------


def direction(metric: str) -> bool | None:
    """True when higher is better for ``metric``, False when lower is, None when this module does not know."""
    name = metric.rsplit("/", 1)[-1]
    if "_std" in name:
        return None
    if name.startswith(LOWER_IS_BETTER):
        return False
    if name.startswith(HIGHER_IS_BETTER):
        return True
    return None


def _suggest(value: str, known) -> str:
    close = difflib.get_close_matches(str(value), list(known), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_claim(i: int, raw: Any, problems: list[str]) -> Claim | None:
    """One claim of the spec, or None with its problems appended (each: where, what, the fix)."""
    if not isinstance(raw, dict):
        problems.append(f"claims[{i}]: a claim is a mapping with {', '.join(REQUIRED)}; got {raw!r}")
        return None
    cid = raw.get("id")
    at = f"claim {cid!r}" if isinstance(cid, str) and cid else f"claims[{i}]"
    start = len(problems)
    for key in raw:
        if key not in REQUIRED + OPTIONAL:
            problems.append(f"{at}.{key}: unknown field; {_suggest(key, REQUIRED + OPTIONAL)}"
                            f"a claim's fields are {', '.join(REQUIRED + OPTIONAL)}")
    for key in REQUIRED:
        if not isinstance(raw.get(key), str) or not raw.get(key).strip():
            what = "missing" if key not in raw else f"= {raw.get(key)!r} is not a non-empty string"
            problems.append(f"{at}.{key}: {what}; add `{key}: ...` to the claim ({_FIELD_HELP[key]})")
    kind = raw.get("kind")
    if isinstance(kind, str) and kind not in KINDS:
        problems.append(f"{at}.kind = {kind!r}: unknown kind; {_suggest(kind, KINDS)}use one of {', '.join(KINDS)}")
    for key in ("model", "versus"):
        value = raw.get(key)
        if isinstance(value, str) and value and value not in MODELS:
            problems.append(f"{at}.{key} = {value!r}: unknown model; {_suggest(value, MODELS)}"
                            f"use one of {', '.join(MODELS)}")
    if isinstance(raw.get("model"), str) and raw.get("model") == raw.get("versus"):
        problems.append(f"{at}.versus = {raw['versus']!r}: the same model as `model`; compare against another model")
    higher = None
    if "direction" in raw:
        if raw["direction"] not in ("lower", "higher"):
            problems.append(f"{at}.direction = {raw['direction']!r}: use lower or higher (which way is better)")
        else:
            higher = raw["direction"] == "higher"
    elif isinstance(raw.get("metric"), str):
        higher = direction(raw["metric"])
        if higher is None:
            problems.append(f"{at}.metric = {raw['metric']!r}: which way is better is not known for this metric; "
                            "add `direction: lower` or `direction: higher` to the claim")
    tolerance, mode = 0.0, "absolute"
    if "tolerance" in raw:
        tol = raw["tolerance"]
        if kind == "ratio_at_least":
            problems.append(f"{at}.tolerance: a ratio_at_least claim takes `at_least`, not a tolerance; drop it")
        elif (not isinstance(tol, dict) or len(tol) != 1 or next(iter(tol)) not in ("absolute", "relative")
              or not _number(next(iter(tol.values()))) or next(iter(tol.values())) < 0):
            problems.append(f"{at}.tolerance = {tol!r}: say which kind and how much, e.g. `tolerance: {{relative: 0.1}}` "
                            "(a fraction of versus's mean) or `tolerance: {absolute: 2.0}` (the metric's units), >= 0")
        else:
            mode, tolerance = next(iter(tol.items()))
    elif kind == "no_worse":
        problems.append(f"{at}.tolerance: missing; a no_worse claim needs its margin, e.g. `tolerance: {{relative: 0.1}}` "
                        "or `tolerance: {absolute: 0}`")
    at_least = raw.get("at_least")
    if kind == "ratio_at_least":
        if at_least is None:
            problems.append(f"{at}.at_least: missing; a ratio_at_least claim needs its threshold, e.g. `at_least: 5`")
        elif not _number(at_least) or at_least <= 0:
            problems.append(f"{at}.at_least = {at_least!r}: a ratio threshold is a number > 0, e.g. `at_least: 5`")
    elif at_least is not None:
        problems.append(f"{at}.at_least: only a ratio_at_least claim takes it; drop it or use kind: ratio_at_least")
    min_seeds = raw.get("min_seeds", DEFAULT_MIN_SEEDS)
    if not isinstance(min_seeds, int) or isinstance(min_seeds, bool) or min_seeds < 2:
        problems.append(f"{at}.min_seeds = {min_seeds!r}: an integer >= 2 (a confidence interval needs two seeds a side)")
    if len(problems) > start:
        return None
    return Claim(raw["id"], raw["statement"].strip(), raw["metric"], raw["dataset"], kind, raw["model"], raw["versus"],
                 float(tolerance), mode, float(at_least) if at_least is not None else None, min_seeds, bool(higher))


_FIELD_HELP = {
    "id": "a short unique name, e.g. fvd-vs-gan",
    "statement": "the claim in one sentence",
    "metric": "a key of the evaluation records, e.g. fvd_domain",
    "dataset": "the dataset the comparison is made on, e.g. moving_digits",
    "kind": f"one of {', '.join(KINDS)}",
    "model": "the model the claim is about, e.g. usam",
    "versus": "the model it is compared with, e.g. raster_ar",
}


def _raise(problems: list[str], path: str) -> None:
    if problems:
        raise ConfigError(f"invalid claims spec ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n"
                          + "\n".join(f"  - {p}" for p in problems), where=path,
                          fix=f"correct the field(s) above; {DOCS} describes every field")


def load_spec(path: Path) -> Spec:
    """The claims of ``path``, every field checked (not yet against the records: see :func:`check_against`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("claims spec not found", where=str(path), fix="pass --spec FILE (the project's is claims.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}", where=str(path), fix="fix the YAML syntax") from None
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list) or not data["claims"]:
        raise ConfigError("a claims spec is a mapping with a non-empty list `claims:`", where=str(path),
                          fix=f"see claims.yaml and {DOCS}")
    for key in data:
        if key not in ("paper", "claims"):
            problems.append(f"{key}: unknown top-level key; {_suggest(key, ('paper', 'claims'))}a spec has paper and claims")
    claims = [_parse_claim(i, raw, problems) for i, raw in enumerate(data["claims"])]
    ids = [raw["id"] for raw in data["claims"] if isinstance(raw, dict) and isinstance(raw.get("id"), str)]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"claim {dup!r}.id: used by {ids.count(dup)} claims; give each claim its own id")
    _raise(problems, str(path))
    return Spec(str(path), str(data.get("paper", "")), [c for c in claims if c is not None])


def check_against(spec: Spec, records: list[dict], where: str = "metrics/eval") -> None:
    """Every claim's metric is a key of some evaluation record, and its dataset one some record was made on."""
    if not records:
        raise UsamError("no evaluation records to grade the claims with", where=where,
                        fix="run `dvc repro evaluate` (or pass --records DIR)")
    keys = sorted({k for r in records for k in r})
    datasets = sorted({str(r.get("dataset")) for r in records})
    problems = []
    for c in spec.claims:
        if c.metric not in keys:
            problems.append(f"claim {c.id!r}.metric = {c.metric!r}: no evaluation record has this key; "
                            f"{_suggest(c.metric, keys)}use a key of metrics/eval/<model>/<dataset>... records")
        if c.dataset not in datasets:
            problems.append(f"claim {c.id!r}.dataset = {c.dataset!r}: no evaluation record is on this dataset; "
                            f"{_suggest(c.dataset, datasets)}records exist for {', '.join(datasets)}")
    _raise(problems, spec.path)


# ---- grading ------------------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One model's per-seed scores on the claim's metric and dataset."""

    model: str
    n: int
    mean: float | None
    std: float | None
    ci: list[float | None]  # 95% t-interval of the mean
    seeds: list[int]
    run_ids: list[str]
    values: list[float]


@dataclass
class Graded:
    claim: Claim
    grade: str
    reason: str
    model: Side
    versus: Side
    effect: dict[str, Any] = field(default_factory=dict)  # what, value, ci, claimed (op, threshold), p_value

    def as_dict(self) -> dict[str, Any]:
        c = asdict(self.claim)
        c["direction"] = "higher" if c.pop("higher_is_better") else "lower"
        return _finite({**c, "grade": self.grade, "reason": self.reason, "evidence": {
            "model": asdict(self.model), "versus": asdict(self.versus), "effect": self.effect},
            "evidence_text": evidence_text(self)})


def _side(records: list[dict], model: str, claim: Claim) -> Side:
    rows = sorted((r for r in records if r.get("model") == model and r.get("dataset") == claim.dataset),
                  key=lambda r: int(r.get("seed", 0)))
    used = [r for r in rows if _number(r.get(claim.metric))]
    values = [float(r[claim.metric]) for r in used]
    seeds = [int(r.get("seed", 0)) for r in used]
    runs = [str(r["mlflow_run_id"]) for r in used if r.get("mlflow_run_id")]
    if not values:
        return Side(model, 0, None, None, [None, None], seeds, runs, values)
    mean, low, high = t_interval(values)
    return Side(model, len(values), mean, mean_std(values)[1], [low, high], seeds, runs, values)


_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def grade(claim: Claim, records: list[dict]) -> Graded:
    """The grade of one claim from the records (see the module docstring for the rule)."""
    m, v = _side(records, claim.model, claim), _side(records, claim.versus, claim)
    few = [f"{s.model} has {s.n}" for s in (m, v) if s.n < claim.min_seeds]
    effect: dict[str, Any] = {}
    if m.n and v.n:  # the point estimate even when too few seeds for a grade
        effect = (_ratio_effect if claim.kind == "ratio_at_least" else _difference_effect)(claim, m, v)
    if few:
        return Graded(claim, "inconclusive", f"too few seeds on {claim.dataset}: {' and '.join(few)} "
                                             f"(min_seeds {claim.min_seeds})", m, v, effect)
    if "error" in effect:
        return Graded(claim, "inconclusive", effect["error"], m, v, effect)
    claimed = _OPS[effect["claimed"]["op"]]
    threshold = effect["claimed"]["threshold"]
    low, high = effect["ci"]
    inside = claimed(low, threshold), claimed(high, threshold)
    what = "the log-ratio's" if claim.kind == "ratio_at_least" else "the difference's"
    if all(inside):
        return Graded(claim, "reproduced", f"{what} whole 95% CI is on the claimed side", m, v, effect)
    if not any(inside):
        return Graded(claim, "not reproduced", f"{what} whole 95% CI is on the other side", m, v, effect)
    return Graded(claim, "inconclusive", f"{what} 95% CI straddles the threshold", m, v, effect)


def _difference_effect(claim: Claim, m: Side, v: Side) -> dict[str, Any]:
    """delta = mean(model) - mean(versus) with its Welch 95% CI, and the side of a threshold the claim puts it on."""
    c = welch(m.values, v.values, higher_is_better=claim.higher_is_better)
    margin = claim.tolerance * abs(v.mean) if claim.tolerance_mode == "relative" else claim.tolerance
    if claim.kind == "better":  # beat versus by more than the margin
        op, threshold = (">", margin) if claim.higher_is_better else ("<", 0.0 - margin)
    else:  # no_worse: worse by at most the margin
        op, threshold = (">=", 0.0 - margin) if claim.higher_is_better else ("<=", margin)
    return {"what": f"{claim.model} - {claim.versus}", "value": c.delta, "ci": [c.ci_low, c.ci_high],
            "claimed": {"op": op, "threshold": threshold}, "p_value": c.p_value}


def _ratio_effect(claim: Claim, m: Side, v: Side) -> dict[str, Any]:
    """How many times better model is than versus (versus / model when lower is better), from the Welch CI of
    the difference of mean logs, brought back to a ratio."""
    num, den = (m, v) if claim.higher_is_better else (v, m)
    what = f"{num.model} / {den.model}"
    if min(num.values + den.values) <= 0:
        return {"what": what, "error": "a value <= 0: no log-ratio (the metric must be positive for a ratio claim)"}
    c = welch([math.log(x) for x in num.values], [math.log(x) for x in den.values])
    return {"what": what, "value": math.exp(c.delta), "ci": [math.exp(c.ci_low), math.exp(c.ci_high)],
            "log_ratio": c.delta, "log_ratio_ci": [c.ci_low, c.ci_high],
            "claimed": {"op": ">=", "threshold": claim.at_least}, "p_value": c.p_value}


def grade_all(spec: Spec, records: list[dict], where: str = "metrics/eval") -> list[Graded]:
    """Every claim of ``spec`` graded, once the spec has been checked against the records."""
    check_against(spec, records, where)
    return [grade(c, records) for c in spec.claims]


# ---- rendering ----------------------------------------------------------------------------------------------------


def _g(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _signed(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.4g}"


def evidence_text(g: Graded) -> str:
    """One line: each side's mean [95% CI] (n), the effect [95% CI] against the claimed threshold, Welch's p."""
    sides = "; ".join(f"{s.model} {_g(s.mean)} [{_g(s.ci[0])}, {_g(s.ci[1])}] (n={s.n})" for s in (g.model, g.versus))
    e = g.effect
    if not e or "error" in e:
        return sides
    claimed = e["claimed"]
    if g.claim.kind == "ratio_at_least":
        eff = (f"{e['what']} = {_g(e['value'])}x [{_g(e['ci'][0])}, {_g(e['ci'][1])}], "
               f"claimed >= {_g(claimed['threshold'])}x")
    else:
        margin = ""
        if g.claim.tolerance:
            margin = (f" ({_g(100 * g.claim.tolerance)}% of {g.claim.versus})" if g.claim.tolerance_mode == "relative"
                      else " (absolute margin)")
        eff = (f"Δ {e['what']} = {_signed(e['value'])} [{_signed(e['ci'][0])}, {_signed(e['ci'][1])}], "
               f"claimed Δ {claimed['op']} {_signed(claimed['threshold'])}{margin}")
    return f"{sides}; {eff}; Welch p = {_g(e['p_value'])}"


def counts(graded: list[Graded]) -> dict[str, int]:
    """Claims per grade (keys without spaces, for `dvc metrics show`) and the total."""
    out = {g.replace(" ", "_"): sum(1 for x in graded if x.grade == g) for g in GRADES}
    return {**out, "claims": len(graded)}


def summary_line(graded: list[Graded]) -> str:
    n = counts(graded)
    return (f"{n['reproduced']} reproduced, {n['not_reproduced']} not reproduced, {n['inconclusive']} inconclusive "
            f"of {n['claims']} claims.")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(spec: Spec, graded: list[Graded]) -> str:
    lines = ["# The paper's claims, graded", ""]
    if spec.paper:
        lines += [f"Source: {spec.paper}", ""]
    lines += [f"**{summary_line(graded)}** Spec: `{Path(spec.path).name}`. A claim is *reproduced* when the whole "
              "95% CI of the difference (Welch) or of the ratio lies on the claimed side of its threshold, *not "
              "reproduced* when it lies wholly on the other side, *inconclusive* when it straddles it or a model has "
              "fewer than `min_seeds` seeds.", "",
              "| claim | grade | evidence |", "|---|---|---|"]
    for g in graded:
        lines.append(f"| **{_md(g.claim.id)}**: {_md(g.claim.statement)} | **{g.grade}** ({_md(g.reason)}) "
                     f"| {_md(evidence_text(g))} |")
    lines += ["", "## Records used", ""]
    for g in graded:
        runs = ", ".join(f"`{s.model}` seeds {s.seeds} runs {', '.join(s.run_ids) or 'none recorded'}"
                         for s in (g.model, g.versus))
        lines.append(f"- **{g.claim.id}** ({g.claim.metric} on {g.claim.dataset}): {runs}")
    return "\n".join(lines) + "\n"


def to_html(spec: Spec, graded: list[Graded]) -> str:
    rows = "".join(
        f"<tr><td><b>{html.escape(g.claim.id)}</b>: {html.escape(g.claim.statement)}</td>"
        f"<td class='{g.grade.replace(' ', '-')}'><b>{html.escape(g.grade)}</b><br><small>{html.escape(g.reason)}</small></td>"
        f"<td>{html.escape(evidence_text(g))}<br><small>runs: "
        f"{html.escape('; '.join(f'{s.model}: ' + (', '.join(s.run_ids) or 'none') for s in (g.model, g.versus)))}"
        f"</small></td></tr>" for g in graded)
    source = f"<p>Source: {html.escape(spec.paper)}</p>" if spec.paper else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>USAM: the paper's claims</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}
th,td{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}} th{{background:#f0f3f8}}
.reproduced{{color:#1a7f37}} .not-reproduced{{color:#cf222e}} .inconclusive{{color:#9a6700}}
</style></head><body><h1>The paper's claims, graded</h1>{source}<p><b>{html.escape(summary_line(graded))}</b></p>
<table><thead><tr><th>claim</th><th>grade</th><th>evidence</th></tr></thead><tbody>{rows}</tbody></table></body></html>
"""


def to_json(spec: Spec, graded: list[Graded], records: Path | str, root: Path | None = None) -> dict[str, Any]:
    """The grades with their evidence; ``spec`` and ``records`` named relative to ``root`` when inside it."""
    return {"spec": _ref(spec.path, root), "paper": spec.paper, "records": _ref(records, root),
            "summary": counts(graded), "claims": [g.as_dict() for g in graded]}


def _ref(path: Path | str, root: Path | None) -> str:
    path = Path(path)
    if root is not None and path.resolve().is_relative_to(Path(root).resolve()):
        return str(path.resolve().relative_to(Path(root).resolve()))
    return str(path)


def _finite(obj: Any) -> Any:
    """NaN/inf as null, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def evaluate(spec_path: Path, records_dir: Path, seeds: list[int] | None = None) -> tuple[Spec, list[Graded]]:
    """Check the spec, then grade its claims from the records in ``records_dir`` (of ``seeds`` only, when given)."""
    spec = load_spec(spec_path)
    return spec, grade_all(spec, load_eval_records(records_dir, seeds), str(records_dir))


def write(spec: Spec, graded: list[Graded], records_dir: Path, out: Path, metrics: Path | None = None,
          root: Path | None = None) -> list[Path]:
    """claims.{json,md,html} in ``out`` and, with ``metrics``, the counts per grade there; returns the files.
    Paths recorded in claims.json are relative to the project ``root`` when given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "claims.json", out / "claims.md", out / "claims.html"]
    files[0].write_text(json.dumps(to_json(spec, graded, records_dir, root), indent=1, allow_nan=False) + "\n")
    files[1].write_text(to_markdown(spec, graded))
    files[2].write_text(to_html(spec, graded))
    if metrics is not None:
        Path(metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics).write_text(json.dumps(counts(graded), indent=1) + "\n")
        files.append(Path(metrics))
    return files


def table_text(graded: list[Graded]) -> str:
    """The graded claims for a terminal: one block per claim, then the counts."""
    lines = []
    for g in graded:
        lines += [f"{g.grade.upper():<15} {g.claim.id}: {g.claim.statement}", f"{'':<15} {g.reason}",
                  f"{'':<15} {evidence_text(g)}"]
    return "\n".join(lines + [summary_line(graded)]) + "\n"
