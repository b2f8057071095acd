"""Where the project is, so relative paths in the config mean the same thing from any cwd.

DVC, Ray and pytest all change the working directory; every path knob is resolved
against the project root (the nearest folder holding ``dvc.yaml``) once, in the driver.
"""

from __future__ import annotations

import os
from pathlib import Path

from usam.errors import UsamError

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


def check_output_file(path: str | Path, flag: str) -> Path:
    """``path``, a file a command writes once its work is done, checked before the work starts: its folder must
    exist (it is not created) and be writable, and ``path`` must not be a folder. ``flag`` names the option."""
    path = Path(path).expanduser()
    folder = path.resolve().parent
    where = f"{flag} {path}"
    problem = None
    if path.is_dir():
        problem = f"{path} is a folder"
    elif not folder.exists():
        problem = f"its folder {folder} does not exist"
    elif not folder.is_dir():
        problem = f"{folder} is not a folder"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = f"its folder {folder} is not writable"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = f"{path} is not writable"
    if problem is not None:
        raise UsamError(f"cannot write {path}: {problem}", where=where,
                        fix="create the folder (or fix its permissions) first, or give another file path")
    return path
