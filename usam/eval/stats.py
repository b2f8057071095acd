"""Statistics over seeds, for the comparison table, the graded claims and ablation grids: mean +- std, the
95% t-interval of a mean, the delta against a reference with its 95% confidence interval, Welch's t-test,
and a robust/fragile verdict across datasets.

Everything works on plain lists of per-seed scores, so the numbers can be checked by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _st


@dataclass(frozen=True)
class Comparison:
    """A variant against the reference on one dataset (``higher_is_better`` sets the sign of "better")."""

    n_variant: int
    n_reference: int
    mean_variant: float
    std_variant: float
    mean_reference: float
    std_reference: float
    delta: float  # mean_variant - mean_reference
    ci_low: float  # 95% CI of the delta (Welch-Satterthwaite degrees of freedom)
    ci_high: float
    t: float
    p_value: float  # two-sided Welch's t-test; nan with fewer than 2 seeds on a side
    better: bool | None  # significant at alpha and in the good direction; None when not significant


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan with a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided Student-t confidence interval of the mean over seeds (nan bounds with
    a single value; a zero-width interval when every seed agrees)."""
    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def welch(variant: list[float], reference: list[float], *, higher_is_better: bool = True,
          alpha: float = 0.05) -> Comparison:
    """Welch's unequal-variance t-test of ``variant`` against ``reference`` and the 95% CI of the delta."""
    mv, sv = mean_std(variant)
    mr, sr = mean_std(reference)
    delta = mv - mr
    nv, nr = len(variant), len(reference)
    if nv < 2 or nr < 2:
        return Comparison(nv, nr, mv, sv, mr, sr, delta, float("nan"), float("nan"), float("nan"), float("nan"), None)
    a, b = sv**2 / nv, sr**2 / nr
    se = math.sqrt(a + b)
    if se == 0:
        p = 0.0 if delta != 0 else 1.0
        t = math.copysign(float("inf"), delta) if delta else 0.0
        low = high = delta
    else:
        dof = (a + b) ** 2 / (a**2 / (nv - 1) + b**2 / (nr - 1))
        t = delta / se
        p = float(2 * _st.t.sf(abs(t), dof))
        half = float(_st.t.ppf(0.975, dof)) * se
        low, high = delta - half, delta + half
    better = None
    if p < alpha:
        better = (delta > 0) == higher_is_better
    return Comparison(nv, nr, mv, sv, mr, sr, delta, low, high, t, p, better)


def verdict(per_dataset: dict[str, Comparison]) -> str:
    """``robust`` when the variant's effect has the same significant direction on every dataset,
    ``fragile`` when it is significant somewhere but flips or vanishes elsewhere, ``no effect``
    when it is significant nowhere, ``too few seeds`` when a test could not run."""
    if not per_dataset or any(math.isnan(c.p_value) for c in per_dataset.values()):
        return "too few seeds"
    outcomes = {c.better for c in per_dataset.values()}
    if outcomes == {None}:
        return "no effect"
    if len(outcomes) == 1:
        return "robust"
    return "fragile"
