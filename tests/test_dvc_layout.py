"""dvc.yaml agrees with the code: every path a stage gets is the one usam.artifacts.layout names, and a stage's
code deps are exactly the modules its pipeline module imports (transitively), so an edit to a module a stage
never runs (the audit's replays, a fidelity metric, the report) does not re-run it.

Run after changing imports or stages; a failure prints the deps dvc.yaml should list.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from pathlib import Path

import pytest
import yaml

from usam.artifacts.layout import Layout, Weights
from usam.config import compose

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
OURS = ("usam", "pipelines")
TRAINING = ("evaluators", "tokenizer", "usam", "baseline")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of our module ``name`` (``usam.train.tasks`` -> usam/train/tasks.py), None for a name in it."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path) -> set[str]:
    """Our modules ``path`` imports, with the packages Python runs first (``usam``, ``usam.train``, ...)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in found:
            parts = name.split(".")
            if parts[0] in OURS:
                names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def closure(module: str, root: Path = ROOT) -> set[Path]:
    """Every file of ours that running ``python -m module`` executes: its packages, its imports, theirs, and so on."""
    parts = module.split(".")
    seen: set[Path] = set()
    todo = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    while todo:
        path = module_file(todo.pop(), root)
        if path and path not in seen:
            seen.add(path)
            todo += imported(path)
    return seen


def code_deps(module: str, root: Path = ROOT) -> list[str]:
    """``closure(module)`` as dvc.yaml lists it: a package all of whose modules run is named as its folder."""
    files = closure(module, root)
    deps = set()
    for f in files:
        folder = f.parent
        if folder != root and set(folder.glob("*.py")) <= files and not any(folder.glob("*/*.py")):
            deps.add(str(folder.relative_to(root)))
        else:
            deps.add(str(f.relative_to(root)))
    return sorted(deps)


def render(text: str, item=None) -> str:
    """A dvc.yaml string with ``${...}`` filled in from params.yaml and the stage's ``item``."""
    def value(match):
        key = match.group(1)
        node = {"item": item, **PARAMS}
        for part in re.findall(r"[^.\[\]]+", key):  # a.b, a[0]
            node = node[int(part)] if isinstance(node, list) else node[part]
        return str(node)
    return re.sub(r"\$\{([^}]+)\}", value, text)


def instances() -> list[tuple[str, str, dict, object]]:
    """(stage name, pipeline module, definition, item) for every stage instance dvc.yaml expands."""
    found = []
    for name, stage in DVC["stages"].items():
        if "foreach" in stage:
            assert stage["foreach"] == "${data.build}", f"{name}: a per-dataset stage loops over data.build"
            found += [(name, stage["do"]["cmd"].split()[2], stage["do"], it) for it in PARAMS["data"]["build"]]
        elif "matrix" in stage:
            axes = {"model": PARAMS["baselines"]["models"], "data": PARAMS["baselines"]["datasets"],
                    "seed": PARAMS["seeds"]}
            if "model" not in stage["matrix"]:  # USAM's own: every dataset
                axes["data"] = PARAMS["data"]["build"]
            for key, value in stage["matrix"].items():
                assert value == "${" + {"model": "baselines.models", "data": "baselines.datasets" if "model" in stage[
                    "matrix"] else "data.build", "seed": "seeds"}[key] + "}", f"{name}: matrix axis {key}"
            keys = list(stage["matrix"])
            found += [(name, stage["cmd"].split()[2], stage, dict(zip(keys, combo)))
                      for combo in itertools.product(*(axes[k] for k in keys))]
        else:
            found.append((name, stage["cmd"].split()[2], stage, None))
    return found


def paths_of(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in OURS


LAYOUT = Layout(Path(), Path(PARAMS["data"]["root"]))  # project-relative paths, as dvc.yaml writes them


def expected(stage: str, item) -> dict:
    """What the layout says a stage instance reads and writes: its cmd flags, data deps, outs and metrics."""
    L = LAYOUT
    if stage == "data":
        return {"flags": {"out": L.raw(item)}, "deps": [], "outs": [L.raw(item)], "metrics": []}
    if stage == "preprocess":
        return {"flags": {"raw": L.raw(item), "out": L.prepared(item)}, "deps": [L.raw(item)],
                "outs": [L.prepared(item)], "metrics": []}
    if stage == "evaluators":
        return {"flags": {"out": L.evaluators(item), "metrics": L.evaluator_metrics(item)}, "deps": [L.prepared(item)],
                "outs": [L.evaluators(item)], "metrics": [L.evaluator_metrics(item)]}
    if stage == "tokenizer":
        return {"flags": {"evaluators": L.evaluators(item), "out": L.tokenizer_dir(item),
                          "metrics": L.tokenizer_metrics(item)},
                "deps": [L.prepared(item), L.evaluators(item)], "outs": [L.tokenizer_dir(item)],
                "metrics": [L.tokenizer_metrics(item)]}
    if stage in ("usam", "baseline"):
        model, data, seed = item.get("model", "usam"), item["data"], item["seed"]
        return {"flags": {"tokenizer": L.tokenizer_dir(data), "evaluators": L.evaluators(data),
                          "out": L.generator_dir(model, data, seed), "metrics": L.generator_metrics(model, data, seed)},
                "deps": [L.prepared(data), L.tokenizer_dir(data), L.evaluators(data)],
                "outs": [L.generator_dir(model, data, seed)], "metrics": [L.generator_metrics(model, data, seed)]}
    if stage in ("select-usam", "select"):
        model, data = ("usam", item) if stage == "select-usam" else (item["model"], item["data"])
        seed = PARAMS["seeds"][0]
        return {"flags": {"weights": L.generator_dir(model, data, seed), "prepared": L.prepared(),
                          "evaluators": L.evaluators(data), "out": L.eval() / "select" / model / data,
                          "metrics": L.selection(model, data)},
                "deps": [L.prepared(), L.evaluators(data), L.generator_dir(model, data, seed),
                         L.generator_metrics(model, data, seed)],
                "outs": [L.eval() / "select" / model / data], "metrics": [L.selection(model, data)]}
    if stage in ("evaluate-usam", "evaluate"):
        model, data, seed = item.get("model", "usam"), item["data"], item["seed"]
        return {"flags": {"weights": L.generator_dir(model, data, seed), "selection": L.selection(model, data),
                          "prepared": L.prepared(), "evaluators": L.evaluators(),
                          "out": L.eval(model, data, seed), "metrics": L.eval_metrics(model, data, seed)},
                "deps": [L.prepared(), L.evaluators(), L.generator_dir(model, data, seed),
                         L.generator_metrics(model, data, seed), L.selection(model, data)],
                "outs": [L.eval(model, data, seed)], "metrics": [L.eval_metrics(model, data, seed)]}
    reports = L.reports()
    if stage == "table":
        return {"flags": {}, "deps": [L.eval_metrics(), L.selection(), L.eval()],
                "outs": [reports / f"comparison.{ext}" for ext in ("csv", "md", "html", "json")]
                + [reports / "curves", reports / "tradeoff"], "metrics": []}
    if stage == "claims":
        return {"flags": {"spec": Path("claims.yaml"), "records": L.eval_metrics(), "out": reports,
                          "metrics": L.metrics() / "claims.json"},
                "deps": [Path("claims.yaml"), L.eval_metrics()],
                "outs": [reports / f"claims.{ext}" for ext in ("json", "md", "html")],
                "metrics": [L.metrics() / "claims.json"]}
    if stage == "report":
        return {"flags": {}, "deps": [reports / "comparison.csv", reports / "curves", reports / "tradeoff",
                                      reports / "claims.json", L.metrics(),
                                      L.root / "models" / "usam", L.root / "models" / "baselines", L.eval(),
                                      L.data_root / "raw", Path("sweeps"), Path("ablations")],
                "outs": [reports / "paper.md", reports / "paper.html", reports / "paper_files"], "metrics": []}
    raise KeyError(stage)


def flags(cmd: str) -> dict[str, str]:
    words = cmd.split()
    return {w[2:]: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}


@pytest.mark.parametrize("stage, module, spec, item", instances(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_path_a_stage_gets_is_the_layouts(stage, module, spec, item):
    want = expected(stage, item)
    assert flags(render(spec["cmd"], item)) == {k: str(v) for k, v in want["flags"].items()}
    assert [render(d, item) for d in paths_of(spec["deps"]) if not is_code(d)] == [str(p) for p in want["deps"]]
    assert [render(o, item) for o in paths_of(spec.get("outs"))] == [str(p) for p in want["outs"]]
    assert [render(m, item) for m in paths_of(spec.get("metrics"))] == [str(p) for p in want["metrics"]]


@pytest.mark.parametrize("stage, module, spec, item", instances(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_stages_code_deps_are_what_its_module_imports(stage, module, spec, item):
    listed = [d for d in paths_of(spec["deps"]) if is_code(d)]
    want = code_deps(module)
    assert listed == want, f"dvc.yaml stage {stage!r}: list as code deps\n" + "\n".join(f"- {d}" for d in want)


def test_code_no_training_stage_runs_is_no_dep_of_one():
    """The audit's replays and the report are not what a training stage runs; the fidelity metrics are what the
    generators' quality checks run during training, never the evaluators' or the tokenizer's."""
    for stage in TRAINING:
        deps = closure(f"pipelines.{stage}")
        for name in ("usam.train.replay", "usam.repro.audit", "usam.report.paper"):
            assert module_file(name) not in deps, f"{stage} imports {name}"
        assert (module_file("usam.eval.fidelity") in deps) == (stage in ("usam", "baseline")), stage
    assert module_file("usam.eval.fidelity") in closure("pipelines.evaluate")
    assert module_file("usam.train.replay") in closure("pipelines.report")


def test_the_closure_follows_packages_and_from_imports(tmp_path: Path):
    files = {"usam/__init__.py": "", "usam/a/__init__.py": "from usam.a.b import x\n", "usam/a/b.py": "x = 1\n",
             "usam/a/c.py": "", "usam/d.py": "import os\n", "pipelines/__init__.py": "",
             "pipelines/s.py": "from pipelines import y\nfrom usam.a import c\n", "pipelines/t.py": ""}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert code_deps("pipelines.s", tmp_path) == ["pipelines/__init__.py", "pipelines/s.py",
                                                                   "usam/__init__.py", "usam/a"]


def test_the_default_inputs_are_the_stages_files_with_their_recorded_sha256(tmp_path: Path):
    """The same files, sha256 and recorded names as before the layout: what a stage computes does not change."""
    cfg = compose([])
    layout = Layout.of(cfg, tmp_path)
    tokenizer = tmp_path / "models" / "tokenizer" / "moving_digits" / "tokenizer.pt"
    assert layout.inputs(cfg).tokenizer == Weights(tokenizer, None, "models/tokenizer/moving_digits/tokenizer.pt")
    (tmp_path / "metrics" / "evaluators").mkdir(parents=True)
    (tmp_path / "metrics" / "evaluators" / "moving_digits.json").write_text(
        json.dumps({"frame": {"weights_sha256": "f" * 64}, "clip": {"weights_sha256": "c" * 64}}))
    frame = layout.inputs(cfg).frame_evaluator
    assert (frame.path, frame.sha256) == (tmp_path / "models" / "evaluators" / "moving_digits" / "frame.pt", "f" * 64)
    assert layout.evaluator_weights("moving_digits", "clip").sha256 == "c" * 64
