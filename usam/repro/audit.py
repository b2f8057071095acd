"""`usam audit RUN`: can this recorded run be reproduced from what is here now?

Each check reads what the run recorded (MLflow tags, params, metrics, inputs and the
``provenance.json`` / ``config.yaml`` artifacts) and compares it with the project as it is
now (git, ``dvc.lock`` and the workspace, ``params.yaml``, the running environment,
``environment.lock``, the weights file). A check answers PASS, WARN or FAIL with one
sentence of evidence naming the file, key or value that decided it, plus optional detail
lines (a version diff, the files that changed).

A run that cannot be fully checked (artifacts missing, a commit that no longer exists,
no DVC repository) still gets a report: the checks concerned say what they could not
verify and why. Only an unknown run is an error.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from usam.config import Config, config_hash, flatten, load_params, to_dict, train_section
from usam.errors import UsamError, first_line
from usam.paths import resolve
from usam.repro.environment import BOOTSTRAP, PROJECT, read_lock, same_version
from usam.track import client_for, provenance, tracking_uri
from usam.track.provenance import git
from usam.track.run import tag_path
from usam.track.runs import find_run
from usam.train import with_dataset
from usam.train.replay import evaluate_weights, short_run

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
SHOWN = 5  # items named in one evidence sentence before "and N more"


@dataclass(frozen=True)
class Check:
    """One audit verdict: PASS / WARN / FAIL, the sentence that justifies it, optional detail lines."""

    name: str
    status: str
    evidence: str
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    """Every check on one run, with where the run was found."""

    run_id: str
    run_name: str
    run_status: str
    experiment: str
    tracking_uri: str
    root: str
    created: str
    checks: tuple[Check, ...]

    @property
    def status(self) -> str:
        """FAIL if any check failed, else WARN if any warned, else PASS."""
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in (PASS, WARN, FAIL)}
        return f"{self.status}: " + ", ".join(f"{n} {s}" for s, n in counts.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "run_name": self.run_name, "run_status": self.run_status,
            "experiment": self.experiment, "tracking_uri": self.tracking_uri, "root": self.root,
            "created": self.created, "status": self.status,
            "checks": [{"name": c.name, "status": c.status, "evidence": c.evidence, "details": list(c.details)}
                       for c in self.checks],
        }


@dataclass
class RunRecord:
    """What one run recorded, fetched once: the MLflow run, its two provenance artifacts, the client."""

    run: Any
    client: Any
    provenance: dict | None = None
    config: Config | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # artifact -> why it could not be used

    @property
    def tags(self) -> dict[str, str]:
        return self.run.data.tags

    @property
    def params(self) -> dict[str, str]:
        return self.run.data.params


# ---- the run's artifacts -----------------------------------------------------------------------------------------


def load_record(client, run) -> RunRecord:
    """Fetch ``provenance.json`` and ``config.yaml``; a missing or unreadable one is noted, not raised."""
    record = RunRecord(run=run, client=client)
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        for name in ("provenance.json", "config.yaml"):
            try:
                path = Path(client.download_artifacts(run.info.run_id, name, tmp))
            except Exception as exc:  # missing artifact, unreachable artifact store
                record.unavailable[name] = f"artifact {name} cannot be read: {first_line(exc)}"
                continue
            if name == "provenance.json":
                try:
                    record.provenance = json.loads(path.read_text())
                except ValueError as exc:
                    record.unavailable[name] = f"provenance.json is not valid JSON: {first_line(exc)}"
            else:
                try:
                    record.config = load_params(path)
                except UsamError as exc:
                    problems = [line.strip(" -") for line in exc.what.splitlines()]
                    first = f", first: {problems[1]}" if len(problems) > 1 else ""
                    record.unavailable[name] = f"config.yaml no longer validates ({problems[0].rstrip(':')}{first})"
    return record


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bars in the middle of a report."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


# ---- code ------------------------------------------------------------------------------------------------------------


def check_code(record: RunRecord, root: Path) -> Check:
    """The recorded commit exists here, and the tree was clean or changed only in pipeline products (PASS), in
    DVC-managed inputs besides (WARN), or in anything else (FAIL): :func:`usam.track.provenance.code_state`."""
    commit = record.tags.get("git.commit", "unknown")
    if commit == "unknown":
        return Check("code", FAIL, "tag git.commit is not recorded: the run did not start inside a git repository")
    if git(root, "rev-parse", "--git-dir") is None:
        return Check("code", WARN, f"git.commit {commit[:12]} recorded, but {root} is not a git repository to look it up in")
    if git(root, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        return Check("code", FAIL, f"commit {commit[:12]} (tag git.commit) does not exist in the repository at {root}: "
                                   "history was rewritten, or the run comes from another project")
    head = git(root, "rev-parse", "HEAD")
    now = "" if head == commit else f"; HEAD is now {head[:12]}" if head else ""
    dirty = record.tags.get("git.dirty")
    if dirty == "false":
        return Check("code", PASS, f"commit {commit[:12]} exists and the tree was clean (git.dirty = false){now}")
    recorded = (record.provenance or {}).get("git") or {}
    paths = [provenance.porcelain_path(p) for p in recorded.get("dirty_files") or []]
    state = record.tags.get("git.code_state")
    if state in provenance.CODE_STATES and "code_changed" in recorded:  # classified when the run started
        changed, inputs = recorded["code_changed"], recorded.get("code_inputs") or []
        how = f"git.code_state = {state}"
    elif paths:  # a run recorded before git.code_state: classified now, with the outs dvc.lock listed then and now
        products = provenance.lock_outs(provenance.dvc_lock_entries(root)) + provenance.lock_outs(
            (record.provenance or {}).get("dvc") or {})
        classified = provenance.code_state(root, paths, products=products)
        state, changed, inputs = classified["state"], classified["changed"], classified["inputs"]
        how = f"git.dirty = {dirty}, classified against the dvc.yaml here"
    elif state in provenance.CODE_STATES:  # the tag without provenance.json: its summary of the paths
        changed = [record.tags["git.code_changed"]] if record.tags.get("git.code_changed") else []
        inputs = changed if state == provenance.DVC_INPUTS else []
        how = f"git.code_state = {state}"
    else:
        why = record.unavailable.get("provenance.json", "provenance.json lists no changed paths")
        return Check("code", FAIL, f"git.dirty = {dirty} and the uncommitted paths are not known ({why}): "
                                   f"the code that ran may differ from commit {commit[:12]}")
    details = tuple(f"changed: {p}" for p in paths)
    products = [p for p in paths if p not in set(changed)]
    if state == provenance.DIRTY:
        code = [p for p in changed if p not in set(inputs)] or changed
        shown = _listing(code) if code else "paths not recorded"
        return Check("code", FAIL, f"uncommitted changes to {shown} when the run started: the code that ran "
                                   f"is not commit {commit[:12]} ({how})", details=details)
    rewritten = f"; pipeline products that `dvc repro` rewrites changed too ({_listing(products)})" if products else ""
    if state == provenance.DVC_INPUTS:
        return Check("code", WARN, f"commit {commit[:12]} exists; only DVC-managed inputs changed "
                                   f"({_listing(inputs) or 'paths not recorded'}): the run is reproducible from "
                                   f"dvc.lock, not from the commit alone ({how}){rewritten}{now}", details=details)
    return Check("code", PASS, f"commit {commit[:12]} exists; the tree differed from it only in pipeline products "
                               f"({_listing(products) or 'paths not recorded'}), which `dvc repro` rewrites "
                               f"({how}){now}", details=details)


# ---- data ------------------------------------------------------------------------------------------------------------


def check_data(record: RunRecord, root: Path) -> Check:
    """Every DVC output the run consumed (its recorded ``dvc.out.<path>`` md5) equals ``dvc.lock`` now and DVC's
    hash of the workspace. Outputs the run did not read (its own, and later stages') are not its data."""
    recorded = {k[len("dvc.out."):]: v for k, v in record.tags.items() if k.startswith("dvc.out.")}
    if not recorded:
        return Check("data", WARN, "no dvc.out.* tags: there was no dvc.lock when the run started, "
                                   "so its data is not identified by DVC hashes")
    recorded = _consumed(recorded, record, root)
    if not recorded:
        return Check("data", WARN, "none of the recorded DVC outputs is an input of the run's stage")
    lock = {tag_path(path): (path, md5) for stage in provenance.dvc_lock_entries(root)["stages"].values()
            for path, md5 in stage["outs"].items()}
    present = {key: lock[key][0] for key in recorded if key in lock}
    workspace, note = _workspace_hashes(root, sorted(present.values()))
    fails, warns, details = [], [], []
    for key, md5 in sorted(recorded.items()):
        if key not in lock:
            warns.append(f"{key} is no longer in dvc.lock")
            continue
        path, locked = lock[key]
        if locked != md5:
            fails.append(f"{path}: run {_short(md5)}, dvc.lock {_short(locked)}")
        elif workspace is not None and workspace.get(path) is None:
            warns.append(f"{path} is not in the workspace (`dvc pull` or `dvc checkout` restores it)")
        elif workspace is not None and workspace[path][0] != md5:
            fails.append(f"{path}: on disk {_short(workspace[path][0])}, run and dvc.lock {_short(md5)}")
            details.extend(f"{path}: {change}" for change in workspace[path][1])
    if fails:
        return Check("data", FAIL, "the data differs from what the run used: " + "; ".join(fails[:SHOWN])
                     + _more(fails), details=tuple(details + fails[SHOWN:] + warns))
    if warns or note:
        return Check("data", WARN, "; ".join([*warns[:SHOWN], *([note] if note else [])]) + _more(warns),
                     details=tuple(warns[SHOWN:]))
    some = next(iter(sorted(present.values())))
    return Check("data", PASS, f"all {len(recorded)} recorded DVC outputs equal dvc.lock and the workspace "
                               f"(e.g. {some} {_short(recorded[tag_path(some)])})")


def _consumed(recorded: dict[str, str], record: RunRecord, root: Path) -> dict[str, str]:
    """The recorded outs the run read: those inside (or holding) a dependency of the dvc.lock stage that ran
    its command; for a run made outside the pipeline, the outs under the data root."""
    script = pipeline_stage(record.tags.get("usam.command", ""), root)
    deps = None
    if script:
        module, _, args = record.tags["usam.command"].partition(" ")
        wanted = f"-m pipelines.{Path(module).stem} {args}".strip()
        try:
            stages = (yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {})
        except (OSError, yaml.YAMLError):
            stages = {}
        for entry in stages.values():
            if str(entry.get("cmd", "")).endswith(wanted):
                deps = [tag_path(d["path"]) for d in entry.get("deps", [])]
    if deps is None:
        data_root = (record.params.get("data.root") or "data").rstrip("/")
        deps = [tag_path(data_root)]
    return {key: md5 for key, md5 in recorded.items()
            if any(key == d or key.startswith(d + "/") or d.startswith(key + "/") for d in deps)}


def _workspace_hashes(root: Path, paths: list[str]) -> tuple[dict[str, tuple[str, list[str]] | None] | None, str]:
    """DVC's md5 of each out in ``paths`` as it is on disk now (None: not there), with the files that changed.

    Returns ``(None, reason)`` when DVC cannot hash the workspace (no DVC repository, unreadable dvc.yaml).
    """
    try:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            outs = {Path(os.path.relpath(out.fs_path, repo.root_dir)).as_posix(): out for out in repo.index.outs}
            hashes = {}
            for path in paths:
                out = outs.get(path)
                if out is None or not os.path.exists(out.fs_path):
                    hashes[path] = None
                    continue
                current = out.get_hash().value
                changes = _changed_files(out) if current != out.hash_info.value and out.hash_info.isdir else []
                hashes[path] = (current, changes)
            return hashes, ""
    except Exception as exc:  # not a DVC repository, a dvc.yaml DVC cannot read
        return None, f"the workspace was not hashed ({type(exc).__name__}: {first_line(exc)})"


def _changed_files(out) -> list[str]:
    """Inside a directory out: the files added, removed or modified since dvc.lock (empty if its listing is not cached)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.tree import Tree

    try:
        old = {e["relpath"]: e["md5"] for e in Tree.load(out.cache, out.hash_info).as_list()}
    except Exception:  # the .dir listing is not in the cache
        return []
    _, _, tree = build(out.cache, out.fs_path, out.fs, out.hash_name, ignore=out.dvcignore)
    new = {e["relpath"]: e["md5"] for e in tree.as_list()}
    return [f"{rel} {'added' if rel not in old else 'removed' if rel not in new else 'modified'}"
            for rel in sorted(set(old) | set(new)) if old.get(rel) != new.get(rel)]


# ---- params ----------------------------------------------------------------------------------------------------------


def check_params(record: RunRecord, root: Path) -> Check:
    """``config.yaml`` re-composes to ``usam.config_hash``; a pipeline run's ``params.yaml`` still gives that config."""
    recorded = record.tags.get("usam.config_hash")
    if not recorded:
        return Check("params", FAIL, "tag usam.config_hash is not recorded: the run's configuration cannot be identified")
    if record.config is None:
        why = record.unavailable.get("config.yaml", "config.yaml is missing")
        return Check("params", WARN, f"{why}; the recorded hash {_short(recorded)} cannot be re-derived")
    rehashed = config_hash(record.config)
    if rehashed != recorded:
        diff = _diff(flatten(to_dict(record.config)), record.params, "config.yaml", "params")
        return Check("params", FAIL, f"config.yaml re-composes to hash {_short(rehashed)}, the run recorded "
                                     f"{_short(recorded)}" + (f"; it differs from the run's params at {diff[0]}" if diff else ""),
                     details=tuple(diff))
    stage = pipeline_stage(record.tags.get("usam.command", ""), root)
    if stage is None:
        return Check("params", PASS, f"config.yaml re-composes to the recorded hash {_short(recorded)} "
                                     f"(usam.command: {record.tags.get('usam.command', 'not recorded')})")
    try:

        current = with_dataset(load_params(root / "params.yaml"), record.config.data.name)
        if record.config.seed in current.seeds:  # a generator stage runs once per seed of `seeds`, with that seed
            current = dataclasses.replace(current, seed=record.config.seed)
    except UsamError as exc:
        return Check("params", WARN, f"the run came from the pipeline stage {stage}, but params.yaml cannot be read: {exc.what}")
    if config_hash(current) != recorded:
        diff = _diff(flatten(to_dict(current)), flatten(to_dict(record.config)), "params.yaml", "run")
        return Check("params", FAIL, f"the run came from the pipeline stage {stage}, and params.yaml has changed since: "
                                     f"{diff[0]}" + (f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""),
                     details=tuple(diff))
    return Check("params", PASS, f"config.yaml re-composes to the recorded hash {_short(recorded)}, and params.yaml "
                                 f"still gives the same config (the run came from the pipeline stage {stage})")


def pipeline_stage(command: str, root: Path) -> str | None:
    """``pipelines/<name>.py`` when the run's command is a DVC stage script (``usam.py moving_digits``)."""
    first = command.split(" ", 1)[0]
    if first.endswith(".py") and (root / "pipelines" / first).is_file():
        return f"pipelines/{first}"
    return None


def _diff(a: dict[str, Any], b: dict[str, Any], a_name: str, b_name: str) -> list[str]:
    """``key (a_name X, b_name Y)`` for every key whose values differ (compared as text, as MLflow stores params)."""
    return [f"{key} ({a_name} {a.get(key, 'missing')}, {b_name} {b.get(key, 'missing')})"
            for key in sorted(set(a) | set(b)) if str(a.get(key)) != str(b.get(key))]


# ---- seeds -----------------------------------------------------------------------------------------------------------


def check_seeds(record: RunRecord, root: Path) -> Check:
    """``seed.*`` tags recorded and equal to the params; no ``DataLoader(`` without ``generator=`` in the code."""
    keys = [k for k in ("seed", "data.seed") if k in record.params] or ["seed"]
    missing = [f"seed.{k}" for k in keys if f"seed.{k}" not in record.tags]
    if missing:
        return Check("seeds", FAIL, f"tag {' and '.join(missing)} is not recorded: the run's random state cannot be replayed")
    differ = [f"seed.{k} = {record.tags[f'seed.{k}']} but param {k} = {record.params[k]}"
              for k in keys if k in record.params and record.tags[f"seed.{k}"] != record.params[k]]
    if differ:
        return Check("seeds", FAIL, "; ".join(differ))
    seeds = ", ".join(f"seed.{k} = {record.tags[f'seed.{k}']}" for k in keys)
    files, calls = dataloaders_without_generator(root)
    if calls:
        return Check("seeds", WARN, f"{seeds} recorded; {len(calls)} DataLoader( call(s) without generator= draw their "
                                    f"base seed from the global RNG: {_listing(calls)}", details=tuple(calls))
    return Check("seeds", PASS, f"{seeds} recorded and equal to the params; every DataLoader( call in the {files} "
                                f"Python files under {root} (tests aside) passes generator=")


def dataloaders_without_generator(root: Path) -> tuple[int, list[str]]:
    """(files scanned, ``file:line`` of each ``DataLoader(...)`` call with no ``generator=`` and no ``**kwargs``)."""
    files = _python_files(root)
    found = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _callee(node.func) == "DataLoader":
                names = {k.arg for k in node.keywords}
                if "generator" not in names and None not in names:
                    found.append(f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return len(files), found


def _callee(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _python_files(root: Path) -> list[Path]:
    """The project's Python files but its tests: tracked or not ignored by git; outside git, all but hidden folders."""
    listed = git(root, "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py")
    if listed is not None:
        files = [root / line for line in listed.splitlines() if line]
    else:
        files = [p for p in root.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(p for p in files if p.is_file() and not _is_test(p.relative_to(root)))


def _is_test(path: Path) -> bool:
    return "tests" in path.parts[:-1] or path.name.startswith("test_") or path.name == "conftest.py"


# ---- environment -----------------------------------------------------------------------------------------------------


def check_environment(record: RunRecord, root: Path) -> Check:
    """Recorded packages vs this environment (FAIL on a difference) vs ``environment.lock`` (WARN on one)."""

    now = provenance.software(root)
    shown = _software_line(now, provenance.hardware())
    if record.provenance is None:
        tags = {"python": record.tags.get("env.python"), "torch": record.tags.get("env.torch")}
        differ = [f"{k}: recorded {v}, running {now[k]}" for k, v in tags.items() if v and v != now[k]]
        why = record.unavailable.get("provenance.json", "provenance.json is missing")
        status = FAIL if differ else WARN
        return Check("environment", status, f"{why}; only env.* tags compared: " + ("; ".join(differ) or "python and "
                     "torch match") + f". Running: {shown}", details=tuple(differ))
    recorded_sw = record.provenance.get("software", {})
    packages = recorded_sw.get("packages", {})
    recorded = {**packages, "python": recorded_sw.get("python")}
    running = {**now["packages"], "python": now["python"]}
    run_diff = _version_diff(recorded, running, "recorded", "running")
    lock_path = root / "environment.lock"
    lock_diff, lock_note = [], ""
    if lock_path.is_file():
        locked = read_lock(lock_path)
        lock_diff = _version_diff(locked, packages, "environment.lock", "recorded")
    else:
        lock_note = f"{lock_path.name} not found"
    details = (f"run:     {_software_line(recorded_sw, record.provenance.get('hardware', {}))}", f"running: {shown}",
               *run_diff, *lock_diff)
    if run_diff:
        return Check("environment", FAIL, f"this environment differs from the run's (provenance.json) in "
                                          f"{len(run_diff)} package(s): {_listing(run_diff)}", details=details)
    if lock_diff or lock_note:
        what = lock_note or f"the run's packages differ from environment.lock in {len(lock_diff)}: {_listing(lock_diff)}"
        return Check("environment", WARN, f"the run's {len(packages)} packages equal this environment's; {what}",
                     details=details)
    return Check("environment", PASS, f"the run's {len(packages)} packages (provenance.json) equal this environment "
                                      f"and environment.lock; {shown}", details=details)


def _version_diff(a: dict[str, str], b: dict[str, str], a_name: str, b_name: str) -> list[str]:
    """One line per package present in only one side or at another version (``pip``-style bootstrap tools skipped)."""

    lines = []
    for name in sorted(set(a) | set(b)):
        have_a, have_b = a.get(name), b.get(name)
        if name == PROJECT or (name in BOOTSTRAP and None in (have_a, have_b)):
            continue
        if have_a is None or have_b is None or not same_version(have_a, have_b):
            lines.append(f"{name}: {a_name} {have_a or 'absent'}, {b_name} {have_b or 'absent'}")
    return lines


def _software_line(sw: dict, hw: dict) -> str:
    gpus = ", ".join(g.get("name", "?") for g in hw.get("gpus", [])) or "no GPU"
    return (f"python {sw.get('python')}, torch {sw.get('torch')}, CUDA {sw.get('cuda') or 'none'}, "
            f"cuDNN {sw.get('cudnn') or 'none'}; {hw.get('cpu_model', '?')} x{hw.get('cpu_count', '?')}, {gpus}")


# ---- determinism -----------------------------------------------------------------------------------------------------


def check_determinism(record: RunRecord, root: Path) -> Check:
    """The training recipe's ``deterministic`` flag (what the workers ran with) and the flags recorded at start."""
    recorded = (record.provenance or {}).get("determinism") or {}
    details = tuple(f"recorded at start (driver): {k} = {v}" for k, v in recorded.items())
    task = record.tags.get("usam.task")
    key = train_section(task) if task else None
    flag = record.params.get(f"{key}.runtime.deterministic") if key else None
    if flag is None:
        why = f"param {key}.runtime.deterministic is not recorded" if task else "not a training run (no usam.task tag)"
        return Check("determinism", WARN, f"{why}: the flags in force during the work are unknown; "
                                          f"at start: {_flags_line(recorded)}", details=details)
    precision = record.params.get(f"{key}.precision", "?")
    if flag == "True":
        return Check("determinism", PASS, f"{key}.runtime.deterministic = true: the workers ran deterministic algorithms, no cuDNN "
                                          f"benchmark, no TF32, CUBLAS_WORKSPACE_CONFIG=:4096:8 (precision {precision}); "
                                          "a re-run on the same hardware and software is bit-exact", details=details)
    return Check("determinism", WARN, f"{key}.runtime.deterministic = false (precision {precision}; at start: "
                                      f"{_flags_line(recorded)}): kernels may be picked by autotuning and reduce in any "
                                      "order, so a re-run matches only statistically, not bit for bit", details=details)


def _flags_line(flags: dict) -> str:
    if not flags:
        return "nothing recorded"
    return (f"deterministic algorithms {flags.get('deterministic_algorithms')}, cudnn benchmark "
            f"{flags.get('cudnn_benchmark')}, TF32 {flags.get('cuda_matmul_allow_tf32')}, "
            f"CUBLAS_WORKSPACE_CONFIG {flags.get('cublas_workspace_config')}")


# ---- checkpoint ------------------------------------------------------------------------------------------------------


def check_checkpoint(record: RunRecord, root: Path) -> Check:
    """sha256 of the file at ``checkpoint.path`` equals ``checkpoint.sha256``."""

    path, expected = record.tags.get("checkpoint.path"), record.tags.get("checkpoint.sha256")
    if path is None and expected is None:
        return Check("checkpoint", WARN, "no checkpoint.path / checkpoint.sha256 tags: the run saved no weights")
    if path is None or expected is None:
        missing = "checkpoint.path" if path is None else "checkpoint.sha256"
        return Check("checkpoint", FAIL, f"tag {missing} is not recorded, so the weights cannot be verified")
    file = resolve(path, root)
    if not file.is_file():
        return Check("checkpoint", FAIL, f"the weights file {path} (checkpoint.path) does not exist under {root}")
    actual = provenance.sha256_file(file)
    if actual != expected:
        return Check("checkpoint", FAIL, f"{path} has sha256 {_short(actual)}, the run recorded {_short(expected)} "
                                         "(checkpoint.sha256): the weights changed since training")
    return Check("checkpoint", PASS, f"{path} has the recorded sha256 {_short(expected)}")


# ---- metrics and a short re-run (both train or evaluate here, in this process) ------------------------------------------

RTOL, ATOL = 1e-3, 1e-6  # re-evaluated metrics agree within RTOL * |recorded| + ATOL
RERUN_STEPS = 2


def _replayable(record: RunRecord) -> tuple[str | None, str | None]:
    """(task, None) when the run can be replayed here, else (None, why not)."""
    task = record.tags.get("usam.task")
    if task is None:
        return None, "not a training run (no usam.task tag)"
    if record.config is None:
        return None, record.unavailable.get("config.yaml", "config.yaml is not recorded")
    return task, None


def check_metrics(record: RunRecord, root: Path) -> Check:
    """The final weights, evaluated again on the validation split, give the run's last recorded ``val/*`` metrics."""

    task, why = _replayable(record)
    if task is None:
        return Check("metrics", WARN, f"not re-evaluated: {why}")
    recorded = {k: v for k, v in record.run.data.metrics.items() if k.startswith("val/")}
    path, sha = record.tags.get("checkpoint.path"), record.tags.get("checkpoint.sha256")
    if not recorded or path is None or sha is None:
        return Check("metrics", WARN, "not re-evaluated: the run recorded no val/* metrics or no checkpoint tags")
    weights = resolve(path, root)
    if not weights.is_file() or provenance.sha256_file(weights) != sha:
        return Check("metrics", WARN, f"not re-evaluated: {path} is missing or is not the recorded file (see checkpoint)")
    fresh = {f"val/{k[4:]}": v for k, v in evaluate_weights(record.config, task, root=root, weights=weights).items()}
    rows, off = [], []
    for key in sorted(recorded):
        if key not in fresh:
            continue
        a, b = recorded[key], fresh[key]
        ok = abs(a - b) <= RTOL * abs(a) + ATOL
        rows.append(f"{key}: recorded {a:.6g}, re-evaluated {b:.6g} ({'ok' if ok else 'differs'})")
        if not ok:
            off.append(f"{key} {a:.6g} -> {b:.6g}")
    tolerance = f"tolerance {RTOL:g} relative + {ATOL:g}"
    if not rows:
        return Check("metrics", WARN, f"not compared: the evaluation gives none of the recorded {_listing(sorted(recorded))}")
    if off:
        key = train_section(task)
        elsewhere = [why for why, flag in (("on a GPU", record.params.get(f"{key}.runtime.use_gpu") == "True"),
                                           (f"on {record.params.get(f'{key}.runtime.workers')} workers' shards of the val split",
                                            record.params.get(f"{key}.runtime.workers", "1") not in ("1", "None")))
                     if flag]
        status = WARN if elsewhere else FAIL  # a CPU re-evaluation of the whole split cannot match those bit for bit
        because = f" (the run validated {' and '.join(elsewhere)}; this is one CPU worker on the whole split)" \
            if elsewhere else ""
        return Check("metrics", status, f"re-evaluating {path} on the val split does not give the recorded metrics "
                                        f"({tolerance}){because}: {_listing(off)}", details=tuple(rows))
    return Check("metrics", PASS, f"re-evaluating {path} on the val split gives the {len(rows)} recorded val metric(s) "
                                  f"within {tolerance}", details=tuple(rows))


def check_rerun(record: RunRecord, root: Path, steps: int = RERUN_STEPS) -> Check:
    """``steps`` optimizer steps of the recorded recipe, twice from its seeded start: identical tensors."""

    task, why = _replayable(record)
    if task is None:
        return Check("rerun", WARN, f"not re-run: {why}")
    first, second = (short_run(record.config, task, root=root, steps=steps) for _ in range(2))
    where = f"{first['steps']} step(s) of the recorded {task} recipe from seed {record.config.seed}, twice (1 CPU worker here)"
    details = tuple(f"{k}: {_short(first[k])} / {_short(second[k])}" for k in ("weights", "optimizer"))
    differs = [k for k in ("weights", "optimizer") if first[k] != second[k]]
    if differs:
        return Check("rerun", FAIL, f"{where}: the {' and '.join(differs)} differ, so training is not bit-exact here "
                                    "(set the recipe's deterministic=true, or look for an unseeded RNG)", details=details)
    return Check("rerun", PASS, f"{where}: bit-identical weights and optimizer state ({_short(first['weights'])})",
                 details=details)


# ---- completeness ----------------------------------------------------------------------------------------------------

PLACEMENT = ("seed", "ray.", "tracking.")  # params that do not change what is trained


def check_completeness(record: RunRecord, root: Path) -> Check:
    """Parameter count, training time, dataset inputs and how many seeds ran this configuration."""
    missing = []
    if "usam.task" in record.tags:
        if "model.parameters" not in record.tags:
            missing.append("parameter count (tag model.parameters)")
        if "train_seconds" not in record.run.data.metrics:
            missing.append("training time (metric train_seconds)")
    has_inputs = bool(record.run.inputs and record.run.inputs.dataset_inputs)
    if not has_inputs and not record.client.list_artifacts(record.run.info.run_id, "datasets"):
        missing.append("dataset inputs or cards (no mlflow inputs, no datasets/ artifacts)")
    runs, seeds = _replicates(record)
    replicas = f"{runs} run(s) with this configuration, seed(s) {', '.join(seeds)}"
    details = (f"parameters: {record.tags.get('model.parameters', 'not recorded')}",
               f"train_seconds: {record.run.data.metrics.get('train_seconds', 'not recorded')}",
               f"dataset inputs: {len(record.run.inputs.dataset_inputs) if has_inputs else 0}", replicas)
    if len(seeds) < 2:
        missing.append(f"more than one seed ({replicas}): one seed gives no error bar")
    if missing:
        return Check("completeness", WARN, "missing: " + "; ".join(missing), details=details)
    return Check("completeness", PASS, f"parameter count, training time and dataset inputs recorded; {replicas}",
                 details=details)


def _replicates(record: RunRecord) -> tuple[int, list[str]]:
    """Finished runs of the same stage whose params equal this run's apart from the seed and placement."""
    stage = record.tags.get("usam.stage")
    if stage is None:
        return 1, [record.params.get("seed", "?")]
    same = {k: v for k, v in record.params.items() if not k.startswith(PLACEMENT)}
    runs = record.client.search_runs([record.run.info.experiment_id],
                                     f"tags.`usam.stage` = '{stage}' and attributes.status = 'FINISHED'", max_results=1000)
    twins = [r for r in runs if {k: v for k, v in r.data.params.items() if not k.startswith(PLACEMENT)} == same]
    twins = twins or [record.run]
    return len(twins), sorted({r.data.params.get("seed", "?") for r in twins})


# ---- the audit -------------------------------------------------------------------------------------------------------

CHECKS: tuple[tuple[str, Callable[[RunRecord, Path], Check]], ...] = (
    ("code", check_code),
    ("data", check_data),
    ("params", check_params),
    ("seeds", check_seeds),
    ("environment", check_environment),
    ("determinism", check_determinism),
    ("checkpoint", check_checkpoint),
    ("metrics", check_metrics),
    ("rerun", check_rerun),
    ("completeness", check_completeness),
)
REPLAYS = ("metrics", "rerun")  # the checks that evaluate or train here (seconds to minutes)




def audit(ref: str, cfg: Config, root: Path, *, replay: bool = True) -> Report:
    """Audit run ``ref`` (id, name or ``latest``) of the store ``cfg.tracking`` points at, against project ``root``.

    ``replay=False`` leaves out the checks that evaluate or train here (metrics, rerun); the report says so."""

    root = Path(root).resolve()
    uri = provenance.redact(tracking_uri(cfg, root))
    client = client_for(cfg, root)
    run = find_run(client, ref, uri)
    record = load_record(client, run)
    experiment = client.get_experiment(run.info.experiment_id)
    return Report(
        run_id=run.info.run_id, run_name=run.info.run_name or "", run_status=run.info.status,
        experiment=experiment.name if experiment else run.info.experiment_id, tracking_uri=uri, root=str(root),
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
        checks=tuple(_guarded(name, fn, record, root) if replay or name not in REPLAYS else
                     Check(name, WARN, "not run (--no-replay): `usam audit RUN` evaluates and re-runs")
                     for name, fn in CHECKS),
    )


def _guarded(name: str, fn: Callable[[RunRecord, Path], Check], record: RunRecord, root: Path) -> Check:
    """Run one check; anything unexpected becomes a WARN naming the error, never a traceback."""
    try:
        return fn(record, root)
    except Exception as exc:
        return Check(name, WARN, f"could not be checked: {type(exc).__name__}: {first_line(exc)}")


# ---- small helpers ---------------------------------------------------------------------------------------------------


def _short(digest: str) -> str:
    return digest[:12] + (".dir" if digest.endswith(".dir") else "")


def _listing(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + _more(items)


def _more(items: list) -> str:
    return f" (and {len(items) - SHOWN} more)" if len(items) > SHOWN else ""
