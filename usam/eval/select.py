"""Sampling settings chosen on val: the grid of a generator's sampling knobs, scored without retraining.

Every point of ``eval.select.grids[<model>]`` (axes in Hydra's sweep syntax, ``key=v1,v2,...``; the grid is
the product of their values) is sampled from the same
trained weights and scored against the **val** split with the evaluation suite's FID-domain and class
accuracy. The rule (``choose``): among the points whose class accuracy is at least ``class_acc_share`` of
the grid's best, the lowest FID-domain wins (ties: the earlier point). The test split is never looked at
here; the `evaluate` stage scores it once, at the chosen point. ``tradeoff`` is the slice of the grid along
the guidance scale with every other knob at its chosen value: the FID-versus-guidance curve of the VAR,
MaskGIT and diffusion papers.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from usam.config import Config, to_dict
from usam.config.validate import build
from usam.errors import UsamError

CRITERION = ("lowest FID-domain on val among the settings whose class accuracy is at least {share:.0%} of the "
             "grid's best")


def split_values(text: str) -> list[str]:
    """``a,b,[c, d]`` -> ``["a", "b", "[c, d]"]``: commas inside brackets belong to a value."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    return [*out, current.strip()]


def axes(cfg: Config, model: str) -> dict[str, list[str]]:
    """The grid's axes of ``model``: config key -> the values tried (YAML text), from ``key=v1,v2,...``."""
    out = {}
    for axis in cfg.eval.select.grids.get(model, []):
        key, sep, values = axis.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UsamError(f"eval.select.grids.{model} has {axis!r}, not an axis", where="params.yaml: eval.select.grids",
                            fix="write each axis in Hydra's sweep syntax, e.g. model.sampling.cfg=1.0,2.0,3.0")
        out[key.strip()] = split_values(values)
    return out


def grid_points(cfg: Config, model: str) -> list[dict[str, str]]:
    """The grid of ``model`` as a list of {config key: value text} (one empty point when it has no grid)."""
    grid = axes(cfg, model)
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def with_settings(cfg: Config, point: dict[str, str]) -> Config:
    """``cfg`` with the grid point's values (YAML text) set, validated like any override: a key that does not
    exist or a value out of range is one clear error naming ``eval.select.grids``."""
    data = to_dict(cfg)
    for key, text in point.items():
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise UsamError(f"eval.select.grids names {key!r}, which is not a config key", where="params.yaml: "
                                "eval.select.grids", fix="use keys `usam config schema` lists (e.g. model.sampling.cfg)")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise UsamError(f"eval.select.grids names {key!r}, which is not a config key", where="params.yaml: "
                            "eval.select.grids", fix="use keys `usam config schema` lists (e.g. model.sampling.cfg)")
        node[parts[-1]] = yaml.safe_load(text)
    return build(Config, data, source=f"eval.select.grids point {point}")


def check_grids(cfg: Config, models: list[str]) -> None:
    """Every grid point of every ``models`` entry builds a valid config: fail before any sampling."""
    for model in models:
        for point in grid_points(cfg, model):
            with_settings(cfg, point)


def guidance_key(point: dict[str, str]) -> str | None:
    """The grid's guidance-scale key (the one ending in ``.cfg``), if it varies one."""
    return next((k for k in point if k.rsplit(".", 1)[-1] == "cfg"), None)


@dataclass(frozen=True)
class Scored:
    settings: dict[str, str]
    fid_domain: float
    class_acc: float

    def row(self) -> dict:
        return {**self.settings, "fid_domain": self.fid_domain, "class_acc": self.class_acc}


def choose(scored: list[Scored], share: float) -> Scored:
    """The lowest FID-domain among points with class accuracy >= ``share`` x the best (finite scores only)."""
    finite = [s for s in scored if math.isfinite(s.fid_domain) and math.isfinite(s.class_acc)]
    if not finite:
        raise UsamError("no grid point scored a finite FID-domain and class accuracy", where="eval.select",
                        fix="check the generator's samples (NaN?) and the grid values")
    best_acc = max(s.class_acc for s in finite)
    eligible = [s for s in finite if s.class_acc >= share * best_acc]
    return min(eligible, key=lambda s: s.fid_domain)


def tradeoff(scored: list[Scored], chosen: Scored) -> list[dict]:
    """The points that differ from ``chosen`` only in the guidance scale, ordered by it (empty: no guidance knob)."""
    key = guidance_key(chosen.settings)
    if key is None:
        return []
    others = {k: v for k, v in chosen.settings.items() if k != key}
    line = [s for s in scored if all(s.settings.get(k) == v for k, v in others.items())]
    return [{"guidance": float(s.settings[key]), "fid_domain": s.fid_domain, "class_acc": s.class_acc}
            for s in sorted(line, key=lambda s: float(s.settings[key]))]


def run_grid(gen, cfg: Config, model: str, score: Callable[[object], tuple[float, float]],
             progress: Callable[[str], None] = print) -> list[Scored]:
    """Score every grid point of ``model`` with ``score(generator) -> (fid_domain, class_acc)``; the generator's
    task reads its sampling knobs from its config, so each point is the same weights under another config."""
    points = grid_points(cfg, model)
    out = []
    for i, point in enumerate(points, 1):
        variant = copy.copy(gen)
        variant.task = copy.copy(gen.task)
        variant.task.cfg = with_settings(cfg, point)
        fid, acc = score(variant)
        out.append(Scored(point, fid, acc))
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()) or "its only setting"
        progress(f"  [{i}/{len(points)}] {shown}: FID-domain {fid:.2f}, class accuracy {acc:.0%}")
    return out
