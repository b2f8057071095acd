"""Provenance of a run, captured in one place and read by tracking, audit and report alike.

What is captured: git state, the DVC lock entries, seeds, the command line, the
software environment (python, platform, torch/CUDA/cuDNN, every installed package,
the lock file's hash), the hardware and the determinism flags in force.

Secrets never leave this module: environment variables are copied only from an
allowlist, and credentials inside URLs are redacted.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import os
import platform
import posixpath
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from usam.files import sha256_file
from usam.seeding import determinism_flags

# Variables that shape a run's numerics or placement; nothing else is ever read.
ENV_ALLOWLIST = (
    "CUDA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "PYTHONHASHSEED",
    "NCCL_DEBUG",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_DISABLE",
    "NCCL_P2P_DISABLE",
    "TORCH_HOME",
    "RAY_ADDRESS",
    "MLFLOW_TRACKING_URI",
)

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """Drop ``user:password@`` from every URL inside ``text``."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)




def git(root: Path, *args: str) -> str | None:
    """stdout of ``git args`` in ``root``, or None when git fails or is missing: callers decide what a
    missing answer means (an unrecorded commit, a check that cannot run)."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(root: Path, *, products: Iterable[str] | None = None) -> dict[str, Any]:
    """Commit, branch, dirty flag and the dirty paths (capped) of the repository at ``root``, and the code state
    those paths amount to (:func:`code_state`): ``code_state``, ``code_changed`` (the changed paths that are not
    pipeline products) and ``code_inputs`` (those of them that are DVC-managed inputs).

    ``products``: paths a pipeline wrote besides those dvc.yaml declares (the outs in ``dvc.lock``); read from
    ``dvc.lock`` when not given and the tree is dirty."""
    commit = git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None, "dirty_files": [], "remote": None,
                "code_state": None, "code_changed": [], "code_inputs": []}
    # Tracked paths with uncommitted changes, staged or not (NUL-separated: no quoting, no status column; a rename
    # names both paths).
    changed = git(root, "diff", "--name-only", "--no-renames", "-z", "HEAD") or ""
    dirty_files = [path for path in changed.split("\0") if path]
    if dirty_files and products is None:
        products = lock_outs(dvc_lock_entries(root))
    state = code_state(root, dirty_files, products=products or (), prefix=git(root, "rev-parse", "--show-prefix"))
    remote = git(root, "config", "--get", "remote.origin.url")
    return {
        "commit": commit,
        "branch": git(root, "rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(dirty_files),
        "dirty_files": dirty_files[:100],
        "remote": redact(remote) if remote else None,
        "code_state": state["state"],
        "code_changed": state["changed"][:100],
        "code_inputs": state["inputs"][:100],
    }


# ---- the code state: what a dirty tree amounts to -------------------------------------------------------------------

CLEAN, DVC_INPUTS, DIRTY = "clean", "dvc-inputs", "dirty"
CODE_STATES = (CLEAN, DVC_INPUTS, DIRTY)
SHOWN = 5  # paths named in one line before "and N more"


def code_state(root: Path, changed_paths: Iterable[str], *, products: Iterable[str] = (),
               prefix: str | None = "") -> dict[str, Any]:
    """What the uncommitted changes ``changed_paths`` (relative to the git top level) of the project at ``root``
    amount to.

    - ``clean``: only pipeline products changed, which ``dvc repro`` rewrites: ``dvc.lock`` and every path a
      ``dvc.yaml`` stage declares as ``outs``, ``metrics`` or ``plots`` (templated and foreach/matrix stages
      resolved against ``params.yaml`` and ``vars``), plus ``products`` (e.g. the outs ``dvc.lock`` lists);
    - ``dvc-inputs``: besides those, only DVC-managed inputs changed (params files, ``*.dvc`` files and the paths
      they track): the run is reproducible from ``dvc.lock``, not from the commit;
    - ``dirty``: anything else changed (code, configs, docs, dvc.yaml itself).

    Returns ``{"state", "changed": the non-product paths, "inputs": those of them that are DVC inputs}``, sorted.
    ``prefix``: where ``root`` lies inside the repository (``git rev-parse --show-prefix``); a path outside it
    counts as code. Untracked files never reach here (``git diff HEAD`` does not list them)."""
    prefix = (prefix or "").strip("/")
    paths = sorted({porcelain_path(p) for p in changed_paths if p})
    if not paths:
        return {"state": CLEAN, "changed": [], "inputs": []}
    root = Path(root)
    local = {}
    for path in paths:
        if not prefix:
            local[path] = path
        elif path.startswith(prefix + "/"):
            local[path] = path[len(prefix) + 1:]
    pipeline = pipeline_paths(root, products=products)
    changed, inputs = [], []
    for path in paths:
        rel = local.get(path)
        if rel is not None and pipeline.is_product(rel):
            continue
        changed.append(path)
        if rel is not None and (pipeline.is_input(rel) or _dvc_tracked(root, rel)):
            inputs.append(path)
    state = CLEAN if not changed else DVC_INPUTS if len(inputs) == len(changed) else DIRTY
    return {"state": state, "changed": changed, "inputs": inputs}


def describe_code_state(tags: dict[str, str]) -> str:
    """One phrase for a run's code state, from its tags (``git.code_state`` and ``git.code_changed``; ``git.dirty``
    for a run recorded before those existed)."""
    state, paths = tags.get("git.code_state"), tags.get("git.code_changed")
    if state == CLEAN:
        return "clean"
    if state == DVC_INPUTS:
        return f"only DVC-managed inputs changed ({paths})" if paths else "only DVC-managed inputs changed"
    if state == DIRTY:
        return f"DIRTY: {paths}" if paths else "DIRTY tree"
    return {"false": "clean", "true": "DIRTY tree"}.get(tags.get("git.dirty", ""), "tree state unknown")


def deciding_paths(state: dict[str, Any]) -> list[str]:
    """The paths that decided a :func:`code_state` (or :func:`git_state`) answer: the code paths of a dirty tree,
    the inputs of a ``dvc-inputs`` one, none for a clean one."""
    changed = state.get("changed", state.get("code_changed")) or []
    inputs = state.get("inputs", state.get("code_inputs")) or []
    kind = state.get("state", state.get("code_state"))
    if kind == DIRTY:
        return [p for p in changed if p not in set(inputs)]
    return list(inputs) if kind == DVC_INPUTS else []


def listing(items: list[str], shown: int = SHOWN) -> str:
    """``a, b, c (and 4 more)``."""
    more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def lock_outs(lock: dict[str, Any]) -> list[str]:
    """Every out (metrics and plots included) of a :func:`dvc_lock_entries` answer."""
    return [path for stage in (lock.get("stages") or {}).values() for path in (stage.get("outs") or {})]


def porcelain_path(path: str) -> str:
    """``old -> new`` (a rename in ``git status --porcelain``, as older runs recorded it) -> ``new``; quotes
    dropped."""
    return path.split(" -> ")[-1].strip('"')


@dataclass
class PipelinePaths:
    """What the ``dvc.yaml`` files of a project declare, as paths relative to the project root."""

    products: set[str] = field(default_factory=set)  # an exact path, or a directory holding products
    patterns: list[re.Pattern] = field(default_factory=list)  # templated paths not fully resolved
    inputs: set[str] = field(default_factory=set)  # params files

    def is_product(self, path: str) -> bool:
        return _under(path, self.products) or any(p.fullmatch(path) for p in self.patterns)

    def is_input(self, path: str) -> bool:
        return path in self.inputs or (path.endswith(".dvc") and posixpath.basename(path) != ".dvc")


def pipeline_paths(root: Path, *, products: Iterable[str] = ()) -> PipelinePaths:
    """The products and params files of every ``dvc.yaml`` in the project (each with its ``dvc.lock`` and
    ``params.yaml``), plus ``products``. Read with PyYAML: ``dvc.api`` takes seconds to import, this milliseconds."""
    found = PipelinePaths(products={posixpath.normpath(p.rstrip("/")) for p in products})
    listed = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ":(glob)**/dvc.yaml")
    files = {p for p in (listed or "").split("\0") if p} | ({"dvc.yaml"} if (root / "dvc.yaml").is_file() else set())
    for file in sorted(files):
        base = posixpath.dirname(file)
        found.products.add(posixpath.join(base, "dvc.lock"))
        found.inputs.add(posixpath.join(base, "params.yaml"))
        spec = _yaml_dict(root / file)
        if spec:
            _read_pipeline(root, base, spec, found)
    return found


_TEMPLATE = re.compile(r"\$\{\s*([^}]*?)\s*\}")
_UNRESOLVED = object()


def _read_pipeline(root: Path, base: str, spec: dict, found: PipelinePaths) -> None:
    context: dict[str, Any] = dict(_yaml_dict(root / base / "params.yaml"))  # DVC's default templating context
    _add_vars(root, base, spec.get("vars"), context, found)
    for entry in spec.get("params") or []:  # top-level params files (DVC 3)
        if isinstance(entry, str):
            found.inputs.add(_join(base, entry))
    for stage in (spec.get("stages") or {}).values():
        if not isinstance(stage, dict):
            continue
        body = stage.get("do", stage) if "foreach" in stage else stage
        if not isinstance(body, dict):
            continue
        ctx = dict(context)
        _add_vars(root, base, body.get("vars"), ctx, found)
        for scope in _iterations(stage, ctx):
            wdir = _render(str(body.get("wdir") or "."), scope)
            if wdir is None or isinstance(wdir, re.Pattern):
                continue
            here = _join(base, wdir)
            for kind in ("outs", "metrics", "plots"):
                for entry in body.get(kind) or []:
                    for path in ([entry] if isinstance(entry, str) else entry if isinstance(entry, dict) else []):
                        rendered = _render(str(path), scope)
                        if isinstance(rendered, re.Pattern):
                            lead = "" if here == "." else re.escape(here + "/")
                            found.patterns.append(re.compile(lead + rendered.pattern + "(?:/.*)?"))
                        elif rendered is not None:
                            found.products.add(_join(here, rendered))
            for entry in body.get("params") or []:
                if isinstance(entry, str):
                    found.inputs.add(_join(here, "params.yaml"))
                elif isinstance(entry, dict):
                    for file in entry:
                        rendered = _render(str(file), scope)
                        if isinstance(rendered, str):
                            found.inputs.add(_join(here, rendered))


def _add_vars(root: Path, base: str, entries: Any, context: dict, found: PipelinePaths) -> None:
    """``vars``: dicts merge into the templating context; a string names a params file (``file.yaml[:keys]``)."""
    for entry in entries if isinstance(entries, list) else [entries] if entries else []:
        if isinstance(entry, dict):
            context.update(entry)
        elif isinstance(entry, str):
            file = _join(base, entry.split(":", 1)[0])
            found.inputs.add(file)
            context.update(_yaml_dict(root / file))


def _iterations(stage: dict, context: dict) -> list[dict]:
    """One templating scope per generated stage: ``item``/``key`` of a foreach, ``item.<name>`` of a matrix. An
    iterable that cannot be resolved leaves ``item``/``key`` unresolved (they then match any one path segment)."""
    if "foreach" in stage:
        over = _value(stage["foreach"], context)
        if isinstance(over, list):
            return [{**context, "item": item} for item in over]
        if isinstance(over, dict):
            return [{**context, "key": key, "item": item} for key, item in over.items()]
        return [{**context, "item": _UNRESOLVED, "key": _UNRESOLVED}]
    if isinstance(stage.get("matrix"), dict):
        names = list(stage["matrix"])
        lists = [_value(values, context) for values in stage["matrix"].values()]
        if all(isinstance(values, list) for values in lists):
            return [{**context, "item": dict(zip(names, combo)), "key": _UNRESOLVED}
                    for combo in itertools.product(*lists)]
        return [{**context, "item": _UNRESOLVED, "key": _UNRESOLVED}]
    return [context]


def _value(template: Any, context: dict) -> Any:
    """A foreach/matrix value: a literal list or dict, or one ``${expr}`` naming one in the context."""
    if isinstance(template, str):
        match = _TEMPLATE.fullmatch(template.strip())
        return _lookup(match.group(1), context) if match else _UNRESOLVED
    return template


def _lookup(expr: str, context: dict) -> Any:
    value: Any = context
    for part in re.split(r"\.|\[(\d+)\]", expr):
        if not part:
            continue
        if value is _UNRESOLVED:
            return _UNRESOLVED
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None  # not in the context: DVC itself could not render this stage
    return value


def _render(template: str, context: dict) -> str | re.Pattern | None:
    """``template`` with every ``${expr}`` substituted; a regex (unresolved ``item``/``key`` as one path segment)
    when some cannot be resolved yet; None when one names nothing in the context."""
    pieces, exact = [], True
    position = 0
    for match in _TEMPLATE.finditer(template):
        pieces.append(re.escape(template[position:match.start()]))
        value = _lookup(match.group(1), context)
        if value is None or isinstance(value, (dict, list)):
            return None
        if value is _UNRESOLVED:
            pieces.append("[^/]+")
            exact = False
        else:
            pieces.append(re.escape(str(value).lower() if isinstance(value, bool) else str(value)))
        position = match.end()
    pieces.append(re.escape(template[position:]))
    if exact:
        return _TEMPLATE.sub(lambda m: _scalar(_lookup(m.group(1), context)), template)
    return re.compile("".join(pieces))


def _scalar(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _join(base: str, path: str) -> str:
    return posixpath.normpath(posixpath.join(base, path.rstrip("/")))


def _under(path: str, prefixes: set[str]) -> bool:
    """``path`` is one of ``prefixes`` or inside one."""
    parts = path.split("/")
    return any("/".join(parts[:n]) in prefixes for n in range(1, len(parts) + 1))


def _dvc_tracked(root: Path, path: str) -> bool:
    """``path`` is (inside) a path a ``.dvc`` file tracks: ``data/raw.dvc`` tracks ``data/raw``."""
    parts = path.split("/")
    for n in range(len(parts), 0, -1):
        candidate = root / ("/".join(parts[:n]) + ".dvc")
        if candidate.is_file():
            outs = _yaml_dict(candidate).get("outs")
            if isinstance(outs, list) and any(isinstance(o, dict) and str(o.get("path", "")).rstrip("/") == parts[n - 1]
                                              for o in outs):
                return True
    return False


def _yaml_dict(path: Path) -> dict:
    """The mapping a YAML file holds; empty when the file is missing, unreadable or not a mapping."""
    try:
        data = load_yaml(path) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def load_yaml(path: Path) -> Any:
    """``yaml.safe_load`` with libyaml when it is there (a large dvc.lock loads in a fraction of the time)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as stream:
        return yaml.load(stream, Loader=loader)  # noqa: S506 (a safe loader)


def dvc_lock_entries(root: Path) -> dict[str, Any]:
    """Per stage, the md5 of every dep and out recorded in ``dvc.lock`` (empty when absent)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {"sha256": None, "stages": {}}
    data = load_yaml(lock) or {}
    stages = {}
    for name, stage in (data.get("stages") or {}).items():
        stages[name] = {
            kind: {e["path"]: e.get("md5") or e.get("hash") for e in stage.get(kind, []) if "path" in e}
            for kind in ("deps", "outs")
        }
    return {"sha256": sha256_file(lock), "stages": stages}


def installed_packages() -> dict[str, str]:
    """name -> version of every distribution importable from this interpreter."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[normalize_name(name)] = dist.version
    return dict(sorted(out.items()))


def normalize_name(name: str) -> str:
    """PEP 503 normalisation, so `Pillow`, `pillow` and `PIL-low` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None,
        "machine": platform.machine(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_bytes": props.total_memory})
    return info


def software(root: Path) -> dict[str, Any]:
    import torch

    lock = root / "environment.lock"
    try:
        cudnn = torch.backends.cudnn.version()
    except Exception:  # cuDNN missing on a CPU-only build
        cudnn = None
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "lock_file_sha256": sha256_file(lock) if lock.is_file() else None,
        "packages": installed_packages(),
    }


def allowed_environ() -> dict[str, str]:
    return {k: redact(os.environ[k]) for k in ENV_ALLOWLIST if k in os.environ}


def capture(root: Path, *, seeds: dict[str, int]) -> dict[str, Any]:
    """Everything needed to say later whether this run can be replayed."""
    dvc = dvc_lock_entries(root)
    return {
        "command": redact(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])),
        "cwd_relative_to_project": os.path.relpath(Path.cwd(), root),
        "git": git_state(root, products=lock_outs(dvc)),
        "dvc": dvc,
        "seeds": seeds,
        "software": software(root),
        "hardware": hardware(),
        "determinism": determinism_flags(),
        "environ": allowed_environ(),
    }
