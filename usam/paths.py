"""Where the project is, so relative paths in the config mean the same thing from any cwd.

DVC, Ray and pytest all change the working directory; every path knob is resolved
against the project root (the nearest folder holding ``dvc.yaml``) once, in the driver.
"""

from __future__ import annotations

from pathlib import Path

MARKERS = ("dvc.yaml", "params.yaml")


def find_project_root(start: Path | str | None = None) -> Path:
    """The nearest ancestor of ``start`` (default: cwd) holding dvc.yaml or params.yaml; else ``start``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / m).is_file() for m in MARKERS):
            return folder
    return here


def resolve(path: str | Path, root: Path) -> Path:
    """``path`` if absolute, else relative to the project ``root``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p).resolve()
