"""`usam replicate RUN`: train a recorded run again from its records, and compare the two.

The replica runs the recorded commit's code (a detached ``git worktree``), the recorded
``config.yaml`` and seeds, on the data the run used (its DVC hashes verified first by the
audit's data check), as a subprocess ``python -m usam.cli train TASK --params FILE``. Every
path in that config is pinned to the original project (data root, Ray storage, the MLflow
store), and the DVC outputs the worktree lacks (trained evaluators, tokenizers) are linked in
from the project, so only the code comes from the commit.

Then the two runs are compared: every final metric (timings aside) within ``atol + rtol * |x|``,
and the exported weights by sha256, tensor by tensor (max abs diff) when the files differ.
On CPU a deterministic run is expected to replicate bit for bit. The result is a Markdown and a
JSON report, logged to the replica run; the two runs are linked by tags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usam.artifacts.layout import Layout
from usam.artifacts.weights import load_weights
from usam.config import Config, config_hash, flatten, to_dict, to_yaml, train_section
from usam.errors import UsamError, first_line
from usam.paths import resolve
from usam.repro.audit import FAIL, Report, RunRecord, audit, load_record
from usam.track import artifact_root, client_for, provenance, tracking_uri
from usam.track.provenance import git
from usam.track.run import tag_path
from usam.track.runs import find_run

EXACT, WITHIN, DIFFERS = "exact", "within tolerance", "differs"
VOLATILE = ("seconds", "per_s", "memory")  # metrics that measure the machine, not the model
PINNED = ("data.root", "ray.storage_path", "tracking.uri", "tracking.artifact_root")


@dataclass(frozen=True)
class MetricDiff:
    """One final metric of the original and the replica."""

    name: str
    original: float | None
    replica: float | None
    within: bool

    @property
    def abs_diff(self) -> float | None:
        return None if None in (self.original, self.replica) else abs(self.original - self.replica)


@dataclass(frozen=True)
class Replication:
    """The original run, its replica, and how they compare."""

    original_id: str
    original_name: str
    replica_id: str
    task: str
    commit: str
    tracking_uri: str
    rtol: float
    atol: float
    pinned: dict[str, tuple[Any, Any]]
    links: tuple[str, ...]
    code_from: str
    audit: Report
    metrics: tuple[MetricDiff, ...]
    ignored_metrics: tuple[str, ...]
    original_sha256: str
    replica_sha256: str
    replica_weights: str
    tensor_diffs: dict[str, float]
    weights_bitwise: bool  # CPU training: the weights must match bit for bit (within tolerance tensor by tensor)
    seconds: float

    @property
    def weights_equal(self) -> bool:
        return self.original_sha256 == self.replica_sha256

    @property
    def weights_within(self) -> bool:
        """Equal files, or (when the files differ) every tensor within ``atol``."""
        return self.weights_equal or (bool(self.tensor_diffs) and max(self.tensor_diffs.values()) <= self.atol)

    @property
    def verdict(self) -> str:
        metrics_equal = all(m.abs_diff == 0 for m in self.metrics)
        if metrics_equal and self.weights_equal:
            return EXACT
        if all(m.within for m in self.metrics) and (self.weights_within or not self.weights_bitwise):
            return WITHIN
        return DIFFERS

    @property
    def failed(self) -> bool:
        return self.verdict == DIFFERS

    def to_dict(self) -> dict[str, Any]:
        return {
            "original": {"run_id": self.original_id, "run_name": self.original_name, "weights_sha256": self.original_sha256},
            "replica": {"run_id": self.replica_id, "weights_sha256": self.replica_sha256, "weights": self.replica_weights},
            "verdict": self.verdict, "task": self.task, "commit": self.commit, "code_from": self.code_from,
            "tracking_uri": self.tracking_uri, "tolerance": {"rtol": self.rtol, "atol": self.atol},
            "pinned": {k: list(v) for k, v in self.pinned.items()}, "linked_outputs": list(self.links),
            "weights": {"equal_sha256": self.weights_equal, "bitwise_expected": self.weights_bitwise,
                        "max_abs_diff": {k: v if math.isfinite(v) else None for k, v in self.tensor_diffs.items()}},
            "metrics": [dataclasses.asdict(m) | {"abs_diff": m.abs_diff} for m in self.metrics],
            "ignored_metrics": list(self.ignored_metrics), "seconds": round(self.seconds, 1),
            "preconditions": self.audit.to_dict()["checks"],
        }


# ---- finding the run -------------------------------------------------------------------------------------------------


def open_record(ref: str, cfg: Config, root: Path, what: str) -> tuple[RunRecord, str]:
    """The training run ``ref`` (id, name or ``latest``) with its artifacts, and the store's redacted URI.

    ``what`` names the command in errors. A run that is not a finished training run, or whose
    ``config.yaml`` cannot be read, is a UsamError.
    """

    uri = provenance.redact(tracking_uri(cfg, root))
    client = client_for(cfg, root)
    run = find_run(client, ref, uri)
    record = load_record(client, run)
    run_id = run.info.run_id
    if "usam.task" not in record.tags or "checkpoint.sha256" not in record.tags:
        raise UsamError(f"run {run_id} is not a finished training run (no usam.task / checkpoint.sha256 tag)",
                        where=f"run {ref} in {uri}", fix=f"pass the id or name of a `usam train` run to `usam {what}`")
    if record.config is None:
        raise UsamError(f"run {run_id} cannot be replayed: {record.unavailable.get('config.yaml', 'config.yaml is missing')}",
                        where=f"artifacts of run {run_id} ({run.info.artifact_uri})",
                        fix="restore the run's artifact folder (tracking.artifact_root) or pick another run")
    if config_hash(record.config) != record.tags.get("usam.config_hash"):
        raise UsamError(f"run {run_id}'s config.yaml does not re-compose to its usam.config_hash tag",
                        where=f"artifacts of run {run_id}", fix=f"`usam audit {run_id}` names the keys that differ")
    return record, uri


def recorded_commit(record: RunRecord, root: Path) -> str:
    """The run's ``git.commit``, checked to exist in the repository at ``root``."""
    commit = record.tags.get("git.commit", "unknown")
    run_id = record.run.info.run_id
    if git(root, "rev-parse", "--git-dir") is None:
        raise UsamError(f"{root} is not a git repository, so run {run_id}'s commit cannot be checked out",
                        where=str(root), fix="run this inside the project's git clone")
    if commit == "unknown":
        raise UsamError(f"run {run_id} recorded no git commit (tag git.commit): its code cannot be checked out",
                        where=f"run {run_id}", fix="only runs started inside a git repository can be replayed")
    if git(root, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        raise UsamError(f"commit {commit[:12]} recorded by run {run_id} (tag git.commit) no longer exists",
                        where=f"the git repository at {root}",
                        fix="fetch it (`git fetch --all`) or restore the branch that held it; "
                            "a run from rewritten history or another project cannot be replayed here")
    return commit


# ---- the replica -----------------------------------------------------------------------------------------------------


def pinned_config(config: Config, cfg: Config, root: Path) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """``config`` with its project-relative places made absolute for ``root``; ``{key: (recorded, pinned)}``.

    The data root and Ray storage resolve against ``root``; the MLflow store is the one ``cfg`` reads
    (where the original was found).
    """

    storage = config.ray.storage_path
    pinned = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, root=str(resolve(config.data.root, root))),
        ray=dataclasses.replace(config.ray, storage_path=storage if "://" in storage else str(resolve(storage, root))),
        tracking=dataclasses.replace(config.tracking, uri=tracking_uri(cfg, root), artifact_root=artifact_root(cfg, root)),
    )
    before, after = flatten(to_dict(config)), flatten(to_dict(pinned))
    return pinned, {k: (before[k], provenance.redact(str(after[k]))) for k in PINNED if before[k] != after[k]}


def link_outputs(record: RunRecord, root: Path, tree: Path, data_root: Path) -> list[str]:
    """Link into ``tree`` the recorded DVC outputs it lacks (outside the pinned data root); their paths."""
    recorded = {k[len("dvc.out."):] for k in record.tags if k.startswith("dvc.out.")}
    linked = []
    for stage in provenance.dvc_lock_entries(root)["stages"].values():
        for path in stage["outs"]:
            source, target = root / path, tree / path
            if tag_path(path) not in recorded or not source.exists() or target.exists() or source.is_relative_to(data_root):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve(), target_is_directory=source.is_dir())
            linked.append(path)
    return sorted(linked)


def train_replica(task: str, config_file: Path, tree: Path, out: Path) -> str:
    """``python -m usam.cli train TASK --params FILE --out OUT`` on ``tree``'s code, output streamed; the run id."""
    cmd = [sys.executable, "-m", "usam.cli", "train", task, "--params", str(config_file), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    lines = []
    with subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    found = [m.group(1) for line in lines if (m := re.match(r"run (\w+) \(Ray run ", line))]
    if proc.returncode != 0 or not found:
        tail = "".join(lines[-5:]).strip()
        raise UsamError(f"the replica's training failed (exit {proc.returncode})", where=f"{' '.join(cmd)} in {tree}",
                        fix="read its output above" + (f"; it ended with:\n{tail}" if tail else ""))
    return found[-1]


@contextlib.contextmanager
def worktree(root: Path, commit: str) -> Iterator[Path]:
    """A detached ``git worktree`` of ``commit`` in a temporary folder, removed (links and all) on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="usam-replica-"))
    tree = tmp / "src"
    try:
        if git(root, "worktree", "add", "--detach", str(tree), commit) is None:
            raise UsamError(f"`git worktree add` of commit {commit[:12]} failed", where=str(root),
                            fix="check `git worktree list` and the repository's state, then retry")
        yield tree
    finally:
        git(root, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        git(root, "worktree", "prune")


# ---- comparison ------------------------------------------------------------------------------------------------------


def compare_metrics(original: dict[str, float], replica: dict[str, float], rtol: float, atol: float
                    ) -> tuple[tuple[MetricDiff, ...], tuple[str, ...]]:
    """Each final metric of either run, timings aside (returned second)."""
    names = sorted(set(original) | set(replica))
    ignored = tuple(n for n in names if any(v in n for v in VOLATILE))
    diffs = []
    for name in (n for n in names if n not in ignored):
        a, b = original.get(name), replica.get(name)
        within = a is not None and b is not None and (a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=atol))
        diffs.append(MetricDiff(name, a, b, within))
    return tuple(diffs), ignored


def tensor_differences(original: Path, replica: Path) -> dict[str, float]:
    """max |original - replica| per tensor of the exported weights (``model/...``, ``ema/...``); inf on a shape or key mismatch."""

    a, b = _tensors(load_weights(original)), _tensors(load_weights(replica))
    out = {}
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x is None or y is None or x.shape != y.shape:
            out[key] = math.inf
        else:
            out[key] = float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
    return out


def _tensors(payload: dict) -> dict:
    return {f"{section}/{name}": t for section in ("model", "ema") for name, t in (payload.get(section) or {}).items()}


def original_weights(record: RunRecord, root: Path, folder: Path) -> Path:
    """The original's exported weights: the file at ``checkpoint.path``, else its MLflow artifact; sha256 verified."""

    expected = record.tags["checkpoint.sha256"]
    local = resolve(record.tags.get("checkpoint.path", "weights.pt"), root)
    if local.is_file() and provenance.sha256_file(local) == expected:
        return local
    run_id = record.run.info.run_id
    try:
        path = Path(record.client.download_artifacts(run_id, f"checkpoints/{local.name}", str(folder)))
    except Exception as exc:
        raise UsamError(f"the original weights cannot be found: {first_line(exc)}", where=f"{local} and run {run_id}'s "
                        "artifacts", fix="restore the weights file (`dvc checkout`) or the run's artifacts") from None
    if provenance.sha256_file(path) != expected:
        raise UsamError(f"the original weights do not match checkpoint.sha256 {expected[:12]}", where=str(path),
                        fix="restore the weights file (`dvc checkout`) or the run's artifacts")
    return path


# ---- the command -----------------------------------------------------------------------------------------------------


def replicate(ref: str, cfg: Config, root: Path, *, rtol: float = 0.0, atol: float = 0.0,
              out_dir: Path | None = None) -> tuple[Replication, Path]:
    """Replay run ``ref`` of the store ``cfg.tracking`` points at; the comparison and its Markdown report's path."""
    root = Path(root).resolve()
    record, uri = open_record(ref, cfg, root, "replicate")
    original = record.run
    commit = recorded_commit(record, root)
    checks = audit(original.info.run_id, cfg, root, replay=False)  # the replica is the full replay
    data = next(c for c in checks.checks if c.name == "data")
    if data.status == FAIL:
        raise UsamError(f"the data differs from what run {original.info.run_id} used: {data.evidence}",
                        where=str(root), fix="`dvc checkout` (or `dvc pull`) restores the recorded outputs; "
                                             "`dvc repro` rebuilds them")
    task = record.tags["usam.task"]
    stamp = f"{original.info.run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out_dir) if out_dir else Layout.of(cfg, root).outputs("replicas", stamp)
    out.mkdir(parents=True, exist_ok=True)
    config, pinned = pinned_config(record.config, cfg, root)
    start = time.perf_counter()
    with worktree(root, commit) as tree:
        config_file = tree.parent / "config.yaml"  # beside the worktree: it holds the store's URI unredacted
        config_file.write_text(to_yaml(config))
        links = link_outputs(record, root, tree, Path(config.data.root))
        code_from = f"worktree of {commit[:12]}" + ("" if (tree / "usam").is_dir() else
                                                    " (the usam library as installed: the commit has no usam/ package)")
        replica_id = train_replica(task, config_file, tree, out)
    seconds = time.perf_counter() - start
    replica = record.client.get_run(replica_id)
    metrics, ignored = compare_metrics(original.data.metrics, replica.data.metrics, rtol, atol)
    replica_sha = replica.data.tags["checkpoint.sha256"]
    weights = Path(replica.data.tags["checkpoint.path"])
    diffs = {}
    if replica_sha != record.tags["checkpoint.sha256"]:
        with tempfile.TemporaryDirectory() as tmp:
            diffs = tensor_differences(original_weights(record, root, Path(tmp)), weights)
    use_gpu = str(record.params.get(f"{train_section(task)}.runtime.use_gpu")) == "True"
    result = Replication(
        original_id=original.info.run_id, original_name=original.info.run_name or "", replica_id=replica_id, task=task,
        commit=commit, tracking_uri=uri, rtol=rtol, atol=atol, pinned=pinned, links=tuple(links), code_from=code_from,
        audit=checks, metrics=metrics, ignored_metrics=ignored, original_sha256=record.tags["checkpoint.sha256"],
        replica_sha256=replica_sha, replica_weights=str(weights), tensor_diffs=diffs, weights_bitwise=not use_gpu,
        seconds=seconds,
    )
    return result, write_report(result, out, record.client)


def write_report(result: Replication, out: Path, client) -> Path:
    """``replication.md`` and ``replication.json`` in ``out``, logged to the replica; the runs linked by tags."""
    md, js = out / "replication.md", out / "replication.json"
    md.write_text(to_markdown(result))
    js.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    for path in (md, js):
        client.log_artifact(result.replica_id, str(path), "replication")
    client.set_tag(result.replica_id, "usam.replica_of", result.original_id)
    client.set_tag(result.replica_id, "usam.replication_verdict", result.verdict)
    client.set_tag(result.original_id, "usam.replicated_by", result.replica_id)
    client.set_tag(result.original_id, "usam.replication_verdict", result.verdict)
    return md


def to_markdown(r: Replication) -> str:
    """The replication report: setup, verdict, weights, metrics, and the audit's preconditions."""
    tol = "exact" if r.rtol == r.atol == 0 else f"rtol {r.rtol:g}, atol {r.atol:g}"
    lines = [
        f"# Replication of run {r.original_name or r.original_id}: {r.verdict}",
        "",
        (f"Original run `{r.original_id}`, replica run `{r.replica_id}` (task `{r.task}`) in `{r.tracking_uri}`; "
         f"code: {r.code_from}; tolerance: {tol}; {r.seconds:.0f} s."),
        "",
        "## Weights",
        "",
        f"- original sha256 `{r.original_sha256}`",
        f"- replica  sha256 `{r.replica_sha256}` (`{r.replica_weights}`)",
        "- " + ("bit-identical files" if r.weights_equal else
                f"the files differ; largest tensor difference {max(r.tensor_diffs.values()):.3g}"
                + ("" if r.weights_bitwise else " (GPU training: not expected to be bit-exact)")),
        *(f"  - `{k}`: max abs diff {v:.3g}" for k, v in r.tensor_diffs.items() if v > 0),
        "",
        "## Final metrics",
        "",
        "| metric | original | replica | abs diff | within |",
        "|---|---|---|---|---|",
        *(f"| {m.name} | {_num(m.original)} | {_num(m.replica)} | {_num(m.abs_diff)} | {'yes' if m.within else '**no**'} |"
          for m in r.metrics),
        "",
        f"Not compared (timings, memory): {', '.join(r.ignored_metrics) or 'none'}.",
        "",
        "## Setup",
        "",
        *(f"- `{k}` pinned to the original project: `{a}` -> `{b}`" for k, (a, b) in r.pinned.items()),
        *(f"- linked from the original project: `{p}`" for p in r.links),
        "",
        f"## Preconditions (`usam audit {r.original_id}`: {r.audit.summary()})",
        "",
        "| check | status | evidence |",
        "|---|---|---|",
        *(f"| {c.name} | {c.status} | {c.evidence.replace('|', chr(92) + '|')} |" for c in r.audit.checks),
    ]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "missing" if value is None else f"{value:.10g}"
