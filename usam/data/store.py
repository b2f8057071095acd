"""The on-disk layout of a prepared dataset and its content hashes.

``<split>/videos.npy`` (uint8 N,T,H,W,3), ``<split>/labels.npy`` (int64 N),
``<split>/meta.json`` and a ``manifest.json`` with the sha256 of every file. ``np.save``
and sorted-key JSON are byte-deterministic, so equal content gives equal hashes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from usam.data.videoset import SPLITS, VideoSet
from usam.errors import DataError
from usam.files import sha256_file

SPLIT_FILES = ("videos.npy", "labels.npy", "meta.json")
MANIFEST = "manifest.json"
REBUILD = "rebuild it with `dvc repro data` (or `usam data build`)"


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    """Canonical JSON text: sorted keys, indent 1, trailing newline."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, default=_plain) + "\n"


def write_json(path: Path, obj: Any) -> None:
    path.write_text(dumps(obj), encoding="utf-8")




def content_hash(files: dict[str, str]) -> str:
    """sha256 over the split's file hashes in the fixed SPLIT_FILES order (one identity per split)."""
    text = "".join(f"{name} {files[name]}\n" for name in SPLIT_FILES)
    return hashlib.sha256(text.encode()).hexdigest()


def write_split(split_dir: Path, videos: np.ndarray, labels: np.ndarray, meta: dict | bytes) -> dict:
    """Write one split folder; returns its manifest entry (count, shape, file hashes, content hash).

    ``meta`` is a dict to serialize, or the exact bytes of an existing meta.json to copy.
    """
    split_dir.mkdir(parents=True, exist_ok=True)
    np.save(split_dir / "videos.npy", np.ascontiguousarray(videos, dtype=np.uint8), allow_pickle=False)
    np.save(split_dir / "labels.npy", np.ascontiguousarray(labels, dtype=np.int64), allow_pickle=False)
    if isinstance(meta, bytes):
        (split_dir / "meta.json").write_bytes(meta)
    else:
        write_json(split_dir / "meta.json", meta)
    files = {name: sha256_file(split_dir / name) for name in SPLIT_FILES}
    return {
        "count": int(len(labels)),
        "shape": list(videos.shape),
        "files": files,
        "content_sha256": content_hash(files),
    }


def write_videoset(split_dir: Path, vs: VideoSet) -> dict:
    return write_split(split_dir, vs.videos, vs.labels, {"captions": vs.captions, "items": vs.items})


def read_manifest(out_dir: Path) -> dict:
    """The dataset's manifest.json, or a DataError saying how to (re)build it."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"no dataset at {str(out_dir)!r} ({MANIFEST} missing)", where=str(path), fix=REBUILD)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
            raise ValueError("no splits")
    except ValueError as exc:
        raise DataError(f"{MANIFEST} is corrupt ({exc})", where=str(path), fix=REBUILD) from None
    return manifest


def verify_files(out_dir: Path) -> dict[str, str]:
    """Recompute every hash in the manifest; a DataError names the first file that differs."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    expected = {f"{s}/{n}": h for s, info in manifest["splits"].items() for n, h in info["files"].items()}
    expected.update(manifest.get("files", {}))
    for rel, sha in sorted(expected.items()):
        path = out_dir / rel
        if not path.is_file():
            raise DataError(f"dataset file {rel} is missing", where=str(path), fix=REBUILD)
        if sha256_file(path) != sha:
            raise DataError(
                f"dataset file {rel} differs from its hash in {MANIFEST} (modified or corrupt)",
                where=str(path),
                fix=REBUILD,
            )
    for split, info in manifest["splits"].items():
        if content_hash(info["files"]) != info["content_sha256"]:
            what = f"{MANIFEST} content hash of split {split!r} is inconsistent"
            raise DataError(what, where=str(out_dir / MANIFEST), fix=REBUILD)
    return {s: info["content_sha256"] for s, info in manifest["splits"].items()}


def split_order(splits: dict) -> list[str]:
    return [s for s in SPLITS if s in splits] + sorted(s for s in splits if s not in SPLITS)
