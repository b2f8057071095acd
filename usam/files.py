"""Files the pipeline writes and checks: their sha256, and folders written all-or-nothing.

``atomic_dir`` builds a folder in a hidden temp sibling, then swaps it in by rename: a failed or
interrupted build never leaves output that looks valid, and a previous good output stays untouched
until the new one is complete. A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The file's sha256 (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_dir(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst``: move the old ``dst`` aside, rename, then delete the old one (restored on failure)."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.parent / f".{dst.name}.old-{secrets.token_hex(6)}"
        os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        if old is not None:
            os.rename(old, dst)
        raise
    if old is not None:
        _remove(old)


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temp folder ``<parent>/.<name>.tmp-<random>``; on success it becomes ``out_dir``.

    On any exception the temp folder is deleted, ``out_dir`` is left as it was, and the exception propagates.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.parent.glob(f".{out_dir.name}.tmp-*"), *out_dir.parent.glob(f".{out_dir.name}.old-*")]:
        _remove(stale)  # left by a build that was killed (SIGKILL skips the cleanup below)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
