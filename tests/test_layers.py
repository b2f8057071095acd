"""The house rule, enforced: imports point one way, leaf first, and nothing dodges a cycle with a late import.

The layers, leaf first (a module may import its own package and any layer before it, never one after):

    errors, paths, seeding, files -> config -> data -> models -> artifacts -> media -> track -> train
        -> eval -> repro -> report -> tune -> cli

``pipelines`` (the DVC stages) may import anything in ``usam``; nothing in ``usam`` imports ``pipelines``.
``usam.models`` imports torch and the standard library only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, ...]] = [
    ("usam", "usam.errors", "usam.paths", "usam.seeding", "usam.files"),
    ("usam.config",),
    ("usam.data",),
    ("usam.models",),
    ("usam.artifacts",),
    ("usam.media",),
    ("usam.track",),
    ("usam.train",),
    ("usam.eval",),
    ("usam.repro",),
    ("usam.report",),
    ("usam.tune",),
    ("usam.cli",),
]

# Function-level imports of our own modules, each with its reason. Nothing else may import late.
LATE_IMPORTS_ALLOWED = {
    "usam.cli": "`usam --help` answers at once: each subcommand imports what it runs (torch, Ray, MLflow) itself",
}

# What usam.models may import from outside itself: a model knows nothing of files, Ray, MLflow or DVC.
MODELS_MAY_IMPORT = {"torch"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(module: str) -> str:
    """The layer unit a module belongs to: its package (``usam.train``), or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def layer_of(module: str, layers: list[tuple[str, ...]]) -> int | None:
    u = unit(module)
    for i, names in enumerate(layers):
        if u in names:
            return i
    return None


def imports_of(path: Path, package: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level?) for every import of ``package`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            # `from usam.models import usam` imports the module usam.models.usam
            names += [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == package or name.startswith(package + "."):
                found.append((name, node.lineno, id(node) in top))
    return found


def scan(root: Path, package: str = "usam", layers: list[tuple[str, ...]] = LAYERS,
         late_allowed: dict[str, str] = LATE_IMPORTS_ALLOWED) -> list[str]:
    """Every violation of the layer rule under ``root/package``, one line each, naming the pair."""
    modules = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        here = layer_of(mod, layers)
        if here is None:
            problems.append(f"{mod}: not in any layer (add its package to LAYERS)")
            continue
        for target, line, at_top in imports_of(path, package):
            if target not in modules:
                continue  # `from usam.x import name`: the name, not a module
            if not at_top and mod not in late_allowed:
                problems.append(f"{mod} -> {target} (line {line}): function-level import")
            there = layer_of(target, layers)
            if there is not None and there > here:
                problems.append(f"{mod} -> {target} (line {line}): upward, {unit(mod)} sits below {unit(target)}")
            if target != mod and not (mod.startswith(target + ".") and modules[target].name == "__init__.py"):
                graph[mod].add(target)
    problems += [f"cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_point_one_way_with_no_cycle_and_no_late_import():
    problems = scan(ROOT)
    assert not problems, "layer rule broken:\n" + "\n".join(problems)


def test_the_late_import_exemption_is_in_use():
    for mod in LATE_IMPORTS_ALLOWED:
        path = ROOT / (mod.replace(".", "/") + ".py")
        assert any(not top for _, _, top in imports_of(path, "usam")), f"{mod} imports nothing late: drop its exemption"


def test_every_package_is_placed_and_says_what_it_is_for():
    for pkg in sorted(p for p in (ROOT / "usam").iterdir() if (p / "__init__.py").is_file()):
        name = f"usam.{pkg.name}"
        if pkg.name == "conf":
            continue
        assert layer_of(name, LAYERS) is not None, f"{name} is in no layer"
        doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"{name}/__init__.py: say what the package is for and what it may import"


def test_models_import_only_torch():
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "usam" / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top == "__future__" or name.startswith("usam.models"):
                    continue
                assert top in MODELS_MAY_IMPORT, f"{path.relative_to(ROOT)} imports {name}"


def test_nothing_in_usam_imports_the_pipelines():
    for path in sorted((ROOT / "usam").rglob("*.py")):
        assert not imports_of(path, "pipelines"), f"{path.relative_to(ROOT)} imports pipelines"


def test_pipelines_import_at_module_level():
    for path in sorted((ROOT / "pipelines").glob("*.py")):
        late = [(name, line) for name, line, top in imports_of(path, "usam") if not top]
        assert not late, f"{path.relative_to(ROOT)}: function-level imports {late}"


# The checker itself, on a made-up package: it must name the pair for each kind of violation.

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / "pkg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


TOY_LAYERS = [("pkg", "pkg.low"), ("pkg.mid",), ("pkg.high",)]


@pytest.mark.parametrize("files, expected", [
    ({"low.py": "", "mid/__init__.py": "", "mid/a.py": "import pkg.high.b\n", "high/__init__.py": "",
      "high/b.py": ""}, "pkg.mid.a -> pkg.high.b (line 1): upward"),
    ({"low.py": "", "mid/__init__.py": "", "mid/a.py": "from pkg.mid import b\n",
      "mid/b.py": "from pkg.mid.a import x\n", "high/__init__.py": ""}, "cycle: pkg.mid.a -> pkg.mid.b -> pkg.mid.a"),
    ({"low.py": "def f():\n    from pkg import mid\n", "mid/__init__.py": "", "high/__init__.py": ""},
     "pkg.low -> pkg.mid (line 2): function-level import"),
    ({"low.py": "", "mid/__init__.py": "", "odd/__init__.py": "", "high/__init__.py": ""},
     "pkg.odd: not in any layer"),
])
def test_the_checker_names_each_kind_of_violation(tmp_path, files, expected):
    root = _package(tmp_path, {"__init__.py": "", **files})
    problems = scan(root, "pkg", TOY_LAYERS, {})
    assert any(p.startswith(expected) for p in problems), problems


def test_the_checker_passes_a_clean_toy_package(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "low.py": "", "mid/__init__.py": "import pkg.low\n",
                               "high/__init__.py": "from pkg.mid import x\nimport pkg.low\n"})
    assert scan(root, "pkg", TOY_LAYERS, {}) == []
