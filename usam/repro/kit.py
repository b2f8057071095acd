"""`usam kit RUN -o DIR`: everything needed to rebuild one training run, in one folder.

The kit holds the source at the recorded commit (``git archive``), ``environment.lock``, the
run's resolved ``config.yaml`` (and the exact ``params.yaml`` of a pipeline run), the data
manifest (the recorded DVC hashes with the matching ``dvc.lock`` entries), the checkpoint with
its verified sha256, the audit of the run (Markdown and JSON), ``COMMANDS.sh`` with the steps to
rebuild and verify, and a README. ``kit.json`` lists every file with its sha256.
"""

from __future__ import annotations

import configparser
import json
import posixpath
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from usam.config import Config, config_hash, load_params, to_yaml
from usam.errors import UsamError
from usam.paths import resolve
from usam.repro.audit import RunRecord, audit, pipeline_stage
from usam.repro.render import render
from usam.repro.replicate import open_record, original_weights, recorded_commit
from usam.track import provenance
from usam.track.run import artifact_root, tag_path, tracking_uri
from usam.train import with_dataset
from usam.train.trainer import storage_path

WEIGHTS = "checkpoint/weights.pt"


def build_kit(ref: str, cfg: Config, root: Path, out: Path, *, force: bool = False) -> dict[str, Any]:
    """Write the kit of run ``ref`` (id, name or ``latest``) into ``out``; returns its manifest (``kit.json``)."""
    root, out = Path(root).resolve(), Path(out).resolve()
    check_folder(out, root, cfg, force)  # before the run is even looked up: a refused folder costs nothing
    record, uri = open_record(ref, cfg, root, "kit")
    commit = recorded_commit(record, root)
    prepare_folder(out)
    try:
        return write_kit(record, uri, commit, cfg, root, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written kit
        raise


def write_kit(record: RunRecord, uri: str, commit: str, cfg: Config, root: Path, out: Path) -> dict[str, Any]:
    """Every file of the kit into the empty folder ``out``; the manifest, also written as ``kit.json``."""
    run_id = record.run.info.run_id
    archive(root, commit, out / "source.tar")
    write_lock(root, commit, out / "environment.lock")
    (out / "config.yaml").write_text(provenance.redact(to_yaml(record.config)))
    params_note = write_params(record, root, commit, out / "params.yaml")
    if record.provenance is not None:
        (out / "provenance.json").write_text(json.dumps(record.provenance, indent=1, sort_keys=True) + "\n")
    data = data_manifest(record, root)
    (out / "data.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "check_data.py").write_text(CHECK_DATA)
    sha = copy_checkpoint(record, root, out)
    report = audit(run_id, cfg, root)
    (out / "audit.md").write_text(render(report, "md"))
    (out / "audit.json").write_text(render(report, "json"))
    commands = rebuild_commands(record, sha, data)
    (out / "COMMANDS.sh").write_text(commands_script(record, commit, commands))
    (out / "COMMANDS.sh").chmod(0o755)
    manifest = {
        "run_id": run_id, "run_name": record.run.info.run_name or "", "task": record.tags["usam.task"],
        "tracking_uri": uri, "commit": commit, "config_hash": record.tags["usam.config_hash"],
        "checkpoint_sha256": sha, "audit": report.summary(), "commands": commands,
        "notes": [f"no params.yaml: {params_note}"] if params_note else [],
    }
    (out / "README.md").write_text(readme(manifest, data))
    manifest["files"] = {p.relative_to(out).as_posix(): provenance.sha256_file(p)
                         for p in sorted(out.rglob("*")) if p.is_file()}
    (out / "kit.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def check_folder(out: Path, root: Path, cfg: Config, force: bool) -> None:
    """Refuse ``out`` before any work: the project itself, a file, a place that holds project work (``--force``
    or not: see :func:`protected_place`), and a non-empty folder without ``force``."""
    if root.is_relative_to(out):
        raise UsamError(f"the kit folder {out} holds the project itself", where="-o DIR",
                        fix="pick a new folder, e.g. kits/<run-name>")
    if out.exists() and not out.is_dir():
        raise UsamError(f"{out} exists and is not a folder", where="-o DIR", fix="pick another path for the kit")
    place = protected_place(out, root, cfg)
    if place is not None:
        raise UsamError(f"the kit folder {out} {place}: a kit never replaces project work, --force or not",
                        where="-o DIR",
                        fix="pick a new folder outside the project's managed places, e.g. kits/<run-name>")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsamError(f"the kit folder {out} is not empty", where="-o DIR",
                        fix="pick an empty or new folder, or pass --force to replace its contents")


def prepare_folder(out: Path) -> None:
    """``out`` empty (a folder :func:`check_folder` let through: its contents are replaced)."""
    if out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def protected_place(out: Path, root: Path, cfg: Config) -> str | None:
    """Why ``out`` must not become a kit folder (its contents are deleted under ``--force``, and a kit written
    into it would mix with them), or None when it may.

    Protected: every place ``dvc.yaml`` declares (``outs``, ``metrics``, ``plots``; templated stages resolved,
    ``dvc.lock``), git-tracked files, ``.git``, ``.dvc`` (its cache) and a local DVC remote, the tracking store
    and its artifacts, and ``outputs/`` (Ray's storage, studies, replicas, samples). ``out`` is refused when it
    is such a place, lies inside one or contains one."""
    for place, what in stores(root, cfg):
        if out == place or out.is_relative_to(place):
            return f"lies inside {what} ({place})" if out != place else f"is {what}"
        if place.is_relative_to(out):
            return f"contains {what} ({place})"
    if not out.is_relative_to(root):
        return None
    rel = out.relative_to(root).as_posix()
    pipeline = provenance.pipeline_paths(root)
    if pipeline.is_product(rel):
        return "is, or lies inside, a DVC output of dvc.yaml"
    held = sorted((p for p in pipeline.products if p == rel or p.startswith(rel + "/")),
                  key=lambda p: (not (root / p).exists(), p))  # name one that holds work, when one does
    if held:
        return f"contains the DVC output {held[0]} of dvc.yaml"
    tracked = provenance.git(root, "ls-files", "-z", "--cached", "--", rel)
    if tracked:
        return f"contains git-tracked files ({posixpath.normpath(tracked.split(chr(0))[0])})"
    if out.is_dir():  # an out no params.yaml resolves (a pattern): whatever of it already lies there
        for path in out.rglob("*"):
            if pipeline.is_product(path.relative_to(root).as_posix()):
                return f"contains the DVC output {path.relative_to(root).as_posix()} of dvc.yaml"
    return None


def stores(root: Path, cfg: Config) -> list[tuple[Path, str]]:
    """The local folders and files outside git and dvc.yaml that hold project work, each with what it is."""
    places = []
    uri = tracking_uri(cfg, root)
    if uri.startswith("sqlite:///"):
        places.append((Path(uri[len("sqlite:///"):]), "the MLflow tracking store (tracking.uri)"))
    elif uri.startswith("file://") or "://" not in uri:
        places.append((resolve(uri.removeprefix("file://"), root), "the MLflow tracking store (tracking.uri)"))
    artifacts = artifact_root(cfg, root)
    if artifacts.startswith("file://"):
        places.append((Path(artifacts.removeprefix("file://")), "the MLflow artifact store (tracking.artifact_root)"))
    ray = storage_path(cfg, root)
    if "://" not in ray:
        places.append((Path(ray), "Ray's storage (ray.storage_path)"))
    for folder in dvc_remotes(root):
        places.append((folder, "a local DVC remote (.dvc/config)"))
    places += [(root / ".git", "the git repository"), (root / ".dvc", "DVC's folder (its cache)"),
               (root / "outputs", "the project's outputs/ (Ray's storage, studies, replicas, samples)"),
               (root / "mlflow.db", "the default MLflow tracking store"), (root / "mlruns", "an MLflow tracking store"),
               (root / "mlartifacts", "the default MLflow artifact store")]
    return [(Path(p).resolve(), what) for p, what in places]


def dvc_remotes(root: Path) -> list[Path]:
    """The local folders ``.dvc/config`` (and ``config.local``) name as remotes."""
    folders = []
    for name in ("config", "config.local"):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(root / ".dvc" / name)
        except configparser.Error:
            continue
        for section in parser.sections():
            url = parser[section].get("url", "") if section.startswith(("'remote", '"remote', "remote")) else ""
            if url and "://" not in url:
                folders.append(resolve(url, root / ".dvc"))
    return folders


def archive(root: Path, commit: str, path: Path) -> None:
    """``git archive`` of ``commit`` as a tar file (byte-stable: every mtime is the commit's)."""
    proc = subprocess.run(["git", "archive", "--format=tar", "-o", str(path), commit], cwd=root,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UsamError(f"git archive of commit {commit[:12]} failed: {proc.stderr.strip()}", where=str(root),
                        fix="check the repository with `git fsck`")


def show(root: Path, commit: str, path: str) -> str | None:
    """The text of ``path`` at ``commit``, or None when the commit has no such file."""
    proc = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=root, capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def write_lock(root: Path, commit: str, path: Path) -> None:
    """``environment.lock`` as committed at ``commit`` (else the workspace's)."""
    text = show(root, commit, "environment.lock")
    if text is None and (root / "environment.lock").is_file():
        text = (root / "environment.lock").read_text()
    if text is None:
        raise UsamError(f"no environment.lock at commit {commit[:12]} nor in {root}", where=str(root),
                        fix="write one with `usam env lock` (`make lock`)")
    path.write_text(text)


def write_params(record: RunRecord, root: Path, commit: str, path: Path) -> str | None:
    """For a pipeline run, the ``params.yaml`` (the commit's, else the workspace's) that gives the recorded config.

    Returns why none was written, or None when it was.
    """

    if pipeline_stage(record.tags.get("usam.command", ""), root) is None:
        return "the run did not come from a pipeline stage"
    workspace = root / "params.yaml"
    for text in (show(root, commit, "params.yaml"), workspace.read_text() if workspace.is_file() else None):
        if text is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            candidate = Path(tmp) / "params.yaml"
            candidate.write_text(text)
            try:
                config = with_dataset(load_params(candidate), record.config.data.name)
            except UsamError:
                continue
        if config_hash(config) == record.tags["usam.config_hash"]:
            path.write_text(text)
            return None
    return "neither the commit's nor the workspace's params.yaml gives the recorded config"


def data_manifest(record: RunRecord, root: Path) -> dict[str, Any]:
    """The recorded ``dvc.out.*`` md5s, and for each the ``dvc.lock`` stage that produces it (matching or not)."""
    recorded = {k[len("dvc.out."):]: v for k, v in record.tags.items() if k.startswith("dvc.out.")}
    lock_file = root / "dvc.lock"
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.is_file() else {}
    outs, entries = {}, {}
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            key = tag_path(out["path"])
            if key in recorded:
                md5 = out.get("md5")
                outs[out["path"]] = {"md5": recorded[key], "stage": name, "dvc_lock_md5": md5,
                                     "matches": md5 == recorded[key]}
                entries[name] = stage
    missing = sorted(k for k in recorded if k not in {tag_path(p) for p in outs})
    return {"dvc_lock_sha256": record.tags.get("dvc.lock_sha256"), "outs": outs,
            "not_in_dvc_lock": {k: recorded[k] for k in missing}, "dvc_lock_stages": entries}


def copy_checkpoint(record: RunRecord, root: Path, out: Path) -> str:
    """Copy the run's weights into the kit after checking them against ``checkpoint.sha256``; write the .sha256."""
    expected = record.tags["checkpoint.sha256"]
    target = out / WEIGHTS
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(original_weights(record, root, Path(tmp)), target)
    if provenance.sha256_file(target) != expected:
        raise UsamError(f"the copied weights do not match checkpoint.sha256 {expected[:12]}", where=str(target),
                        fix="retry; check the disk holding the kit")
    (out / f"{WEIGHTS}.sha256").write_text(f"{expected}  weights.pt\n")
    return expected


def rebuild_commands(record: RunRecord, sha: str, data: dict) -> dict[str, str]:
    """The shell commands of each rebuild step, run in the rebuild folder with ``$KIT`` set to the kit."""
    outs = " ".join(shlex.quote(p) for p in data["outs"])
    stages = " ".join(sorted({o["stage"] for o in data["outs"].values()}))
    task = record.tags["usam.task"]
    commands = {
        "source": 'tar -xf "$KIT/source.tar" && git init -q  # DVC works inside a git repository',
        "environment": 'python3 -m venv .venv && .venv/bin/pip install --require-hashes -r "$KIT/environment.lock" && '
                       '{ [ ! -f pyproject.toml ] || .venv/bin/pip install --no-deps -e .; } && export PATH="$PWD/.venv/bin:$PATH"',
        "train": f'python -m usam.cli train {task} --params "$KIT/config.yaml" --out rebuilt',
        "verify": f'echo "{sha}  rebuilt/weights.pt" | sha256sum -c -',
    }
    if outs:
        commands["data"] = (f"{{ dvc pull {outs} || dvc repro {stages}; }} && "
                            f'python "$KIT/check_data.py" "$KIT/data.json" dvc.lock')
    return commands


CHECK_DATA = '''"""Exit 1 unless dvc.lock gives every DVC output the md5 the run recorded (argv: data.json dvc.lock)."""
import json
import sys

import yaml

want = {path: out["md5"] for path, out in json.load(open(sys.argv[1]))["outs"].items()}
lock = yaml.safe_load(open(sys.argv[2]))["stages"]
have = {o["path"]: o.get("md5") for stage in lock.values() for o in stage.get("outs", [])}
bad = [f"{path}: run {md5}, now {have.get(path)}" for path, md5 in want.items() if have.get(path) != md5]
print("\\n".join(bad) or f"all {len(want)} DVC outputs have the recorded md5")
sys.exit(1 if bad else 0)
'''


# Step 2 with USAM_KIT_PYTHON set: that interpreter's environment instead of a new .venv, once `usam env check`
# finds its packages equal to the lock (it lists every difference otherwise); a Python project's source (it has a
# pyproject.toml) goes first on PYTHONPATH, as the default's `pip install -e .` puts it first.
REUSE_ENVIRONMENT = ('echo "reusing the environment of $USAM_KIT_PYTHON (USAM_KIT_PYTHON)" && '
                     '"$USAM_KIT_PYTHON" -m usam.cli env check --lock "$KIT/environment.lock" && '
                     'export PATH="$(dirname "$USAM_KIT_PYTHON"):$PATH" && '
                     '{ [ ! -f pyproject.toml ] || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }')


def commands_script(record: RunRecord, commit: str, commands: dict[str, str]) -> str:
    """``COMMANDS.sh``: the rebuild steps in order, into the folder given as its argument.

    Each step runs in the script's own shell (its ``export``s hold for the steps after it); a step that fails, at
    any of its commands, stops the script with a message naming it. Step 2 creates ``.venv`` from the lock unless
    ``USAM_KIT_PYTHON`` names the python of an existing environment (see ``REUSE_ENVIRONMENT``).
    """
    steps = [("the source at commit " + commit, "source"),
             ("the environment from the lock (a new .venv, or the one of USAM_KIT_PYTHON checked against the lock)",
              "environment"),
             ("the data, by the recorded DVC hashes (pulled from the remote, else rebuilt)", "data"),
             ("retrain with the recorded config", "train"), ("the weights must have the recorded sha256", "verify")]
    lines = [
        "#!/usr/bin/env bash",
        f"# Rebuild run {record.run.info.run_id} ({record.run.info.run_name}) from this kit.",
        "# Usage: bash COMMANDS.sh [FOLDER]   (default: rebuild/ next to the kit)",
        "# Step 2 creates FOLDER/.venv from environment.lock (pip needs the package index). To reuse an existing",
        "# environment instead:  USAM_KIT_PYTHON=/path/to/venv/bin/python bash COMMANDS.sh [FOLDER]",
        "# It must hold exactly the locked packages: the step lists every difference and stops otherwise.",
        "# A step that fails stops the script, and the message names it.",
        "set -euo pipefail",
        'KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        'SRC="${1:-$KIT/rebuild}"',
        'if [ -n "${USAM_KIT_PYTHON:-}" ]; then  # an absolute path, before the cd below',
        '  [ -f "$USAM_KIT_PYTHON" ] && [ -x "$USAM_KIT_PYTHON" ] || {',
        '    echo "COMMANDS.sh: USAM_KIT_PYTHON=$USAM_KIT_PYTHON is not an executable file (give the path of a python)" >&2',
        "    exit 2",
        "  }",
        '  USAM_KIT_PYTHON="$(cd "$(dirname "$USAM_KIT_PYTHON")" && pwd)/$(basename "$USAM_KIT_PYTHON")"',
        "fi",
        'failed() { echo "COMMANDS.sh: step $1 failed (exit $3): $2. The steps after it did not run." >&2; exit "$3"; }',
        'mkdir -p "$SRC"',
        'cd "$SRC"',
    ]
    for n, (what, key) in enumerate(((w, k) for w, k in steps if k in commands), 1):
        body = [commands[key]]
        if key == "environment":
            body = ['if [ -n "${USAM_KIT_PYTHON:-}" ]; then', f"  {REUSE_ENVIRONMENT}", "else",
                    f"  {commands[key]}", "fi"]
        # `set -e` spares every command of an `a && b` list but the last: `|| failed` catches them all
        lines += ["", f"# {n}. {what}", f"echo {shlex.quote(f'== {n}. {what}')}", "{", *body,
                  f"}} || failed {n} {shlex.quote(what)} $?"]
    return "\n".join(lines) + "\n"


def readme(manifest: dict[str, Any], data: dict) -> str:
    """The kit's README: what each file is and how to use it."""
    files = [
        ("source.tar", f"the code at commit `{manifest['commit']}` (`git archive`)"),
        ("environment.lock", "every package pinned with `==` and its file's sha256 (`pip install --require-hashes`)"),
        ("config.yaml", f"the run's resolved config (hash `{manifest['config_hash']}`)"),
        ("params.yaml", "the pipeline's `params.yaml` that composed it (pipeline runs only)"),
        ("provenance.json", "what the run recorded at start: git, DVC, seeds, software, hardware, determinism flags"),
        ("data.json", f"the {len(data['outs'])} recorded DVC outputs with their md5 and the matching `dvc.lock` stages"),
        ("check_data.py", "compares a `dvc.lock` with the recorded md5s"),
        (WEIGHTS, f"the final weights, sha256 `{manifest['checkpoint_sha256']}` (also in `{WEIGHTS}.sha256`)"),
        ("audit.md, audit.json", f"`usam audit` of the run when the kit was made: {manifest['audit']}"),
        ("COMMANDS.sh", "the rebuild: source, environment, data, training, verification"),
        ("kit.json", "the run, the commands, and the sha256 of every file here"),
    ]
    lines = [
        f"# Reproducibility kit of run {manifest['run_name'] or manifest['run_id']}",
        "",
        f"Run `{manifest['run_id']}` (task `{manifest['task']}`) from `{manifest['tracking_uri']}`.",
        "",
        "| file | what |",
        "|---|---|",
        *(f"| `{name}` | {what} |" for name, what in files),
        "",
        "Rebuild with `bash COMMANDS.sh [FOLDER]`; each step, run by hand from FOLDER with `KIT` set to this folder:",
        "",
        *(f"- {step}: `{cmd}`" for step, cmd in manifest["commands"].items()),
        "",
        ("`environment` creates `.venv` from the lock, which needs the package index. To reuse an existing environment "
         "instead, run `USAM_KIT_PYTHON=/path/to/venv/bin/python bash COMMANDS.sh [FOLDER]`: the step first checks its "
         "packages against `environment.lock` (`usam env check`), lists every difference and stops unless they match. "
         "A step that fails stops the script with a message naming it."),
        "",
        "On CPU with the recipe's `deterministic` flag on, the retrained weights have the sha256 above, bit for bit.",
    ]
    if manifest["notes"]:
        lines += ["", "Notes:", "", *(f"- {note}" for note in manifest["notes"])]
    return "\n".join(lines) + "\n"
