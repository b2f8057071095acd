"""environment.lock: write it from pyproject.toml, and check the running environment against it.

The lock is produced by pip's own resolver (``pip install --dry-run --report``), so it
pins exactly what ``pip install`` would take here, every package with ``==`` and the
sha256 of the file pip chose. ``make setup`` installs it with ``--require-hashes``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from usam.errors import UsamError
from usam.track.provenance import installed_packages, normalize_name

PROJECT = "usam-lab"
# Installed by `python -m venv` itself, not by the lock; ignored unless the lock pins them.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def lock(project_dir: Path, out: Path, extras: str = "dev") -> int:
    """Resolve ``project_dir[extras]`` with pip and write the hashed lock to ``out``. Returns the package count."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), f"{project_dir}[{extras}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise UsamError(
                "pip could not resolve the project's dependencies",
                where=" ".join(cmd),
                fix="read pip's message below and adjust pyproject.toml\n" + proc.stderr[-3000:],
            )
        entries = json.loads(report.read_text())["install"]
    lines = [
        "# environment.lock: every package pinned, with the sha256 of the file pip resolved.",
        f"# Platform: CPython {platform.python_version()} on {sys.platform} {platform.machine()}.",
        "# Regenerate with `make lock` (= `usam env lock`) after editing pyproject.toml; install with `make setup`.",
    ]
    packages = []
    for entry in entries:
        name = normalize_name(entry["metadata"]["name"])
        if name == PROJECT:
            continue
        hashes = entry["download_info"].get("archive_info", {}).get("hashes", {})
        line = f"{name}=={entry['metadata']['version']}"
        if "sha256" in hashes:
            line += f" \\\n    --hash=sha256:{hashes['sha256']}"
        packages.append(line)
    out.write_text("\n".join(lines + sorted(packages)) + "\n")
    return len(packages)


def read_lock(path: Path) -> dict[str, str]:
    """name -> version from a requirements-style lock (comments, hashes and markers ignored)."""
    if not path.is_file():
        raise UsamError(f"lock file {path} not found", where=str(path), fix="create it with `make lock`")
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith("--"):
            continue
        spec = line.split(";", 1)[0].split(" --hash", 1)[0].strip()
        if "==" not in spec:
            raise UsamError(
                f"{path}:{number}: {raw.strip()!r} is not pinned with ==",
                where=f"{path}:{number}",
                fix="regenerate the lock with `make lock`",
            )
        name, version = spec.split("==", 1)
        name = name.split("[", 1)[0]
        pins[normalize_name(name)] = version.strip()
    return pins


@dataclass(frozen=True)
class Drift:
    package: str
    kind: str  # "missing" | "extra" | "version"
    locked: str | None
    installed: str | None

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"missing  {self.package}=={self.locked} (locked, not installed)"
        if self.kind == "extra":
            return f"extra    {self.package}=={self.installed} (installed, not in the lock)"
        return f"version  {self.package}: locked {self.locked}, installed {self.installed}"


def compare(locked: dict[str, str], installed: dict[str, str]) -> list[Drift]:
    """Every difference between a lock and an installed set, sorted by package."""
    drifts = []
    for name in sorted(set(locked) | set(installed)):
        if name == PROJECT:
            continue
        want, have = locked.get(name), installed.get(name)
        if want is None and name in BOOTSTRAP:
            continue
        if have is None:
            drifts.append(Drift(name, "missing", want, None))
        elif want is None:
            drifts.append(Drift(name, "extra", None, have))
        elif not same_version(want, have):
            drifts.append(Drift(name, "version", want, have))
    return drifts


def same_version(a: str, b: str) -> bool:
    """PEP 440 equality (1.0 == 1.0.0); plain string equality for non-PEP 440 versions."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def check(lock_path: Path) -> list[Drift]:
    """Drift between ``lock_path`` and the interpreter running this code."""
    return compare(read_lock(lock_path), installed_packages())
