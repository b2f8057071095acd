"""The user's own videos: a folder with a CSV manifest (path,label[,split][,caption]).

Every manifest path must stay inside the root (no absolute paths, no ``..``, no
symlink that resolves outside): such entries are always refused, whatever
``on_error`` says, because they can read arbitrary files. Unreadable videos follow
``on_error`` (skip and report, or fail).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from tqdm import tqdm

from usam.config.schema import DataConfig
from usam.data.decode import DecodeError, read_clip
from usam.data.videoset import SPLITS, VideoSet, split_sizes
from usam.errors import DataError
from usam.seeding import derive_seed

REQUIRED_COLUMNS = ("path", "label")


@dataclass
class Entry:
    path: str  # relative to root, posix form
    file: Path  # resolved, inside root
    label: str
    split: str | None
    caption: str | None
    line: int


@dataclass
class FolderDataset:
    """The loaded splits plus what the card must report: skipped files and the manifest's hash."""

    splits: dict[str, VideoSet]
    label_names: list[str]
    skipped: list[dict] = field(default_factory=list)
    manifest_sha256: str = ""
    entries: int = 0


def _root(cfg: DataConfig) -> Path:
    root = cfg.video_folder.root
    if not root:
        raise DataError(
            "data.video_folder.root is not set",
            where="config data.video_folder.root",
            fix="set data.video_folder.root=/path/to/your/videos (the folder holding the manifest)",
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"video folder {root!r} does not exist or is not a folder",
            where=str(path),
            fix="set data.video_folder.root to an existing folder holding your videos and the manifest",
        )
    return path.resolve()


def inside_root(root: Path, raw: str, where: str) -> tuple[str, Path]:
    """(relative posix path, resolved path) of ``raw`` under ``root``; a DataError if it escapes the root."""
    fix = "list the file by a path relative to the root, without '..', and keep symlinks pointing inside the root"
    posix = PurePosixPath(raw.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(raw).is_absolute() or PureWindowsPath(raw).drive:
        what = f"manifest path {raw!r} is absolute; only paths inside the root are allowed"
        raise DataError(what, where=where, fix=fix)
    if ".." in posix.parts:
        raise DataError(f"manifest path {raw!r} uses '..' to leave the root", where=where, fix=fix)
    resolved = (root / posix).resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"manifest path {raw!r} resolves outside the root (symlink?)", where=where, fix=fix)
    return posix.as_posix(), resolved


def read_manifest(root: Path, name: str) -> tuple[list[Entry], bool, str]:
    """Entries sorted by path, whether a split column exists, and the manifest's sha256."""
    rel, path = inside_root(root, name, where="config data.video_folder.manifest")
    if not path.is_file():
        raise DataError(
            f"manifest {rel!r} not found in the video folder",
            where=str(path),
            fix="write a CSV with columns path,label[,split][,caption] there, or set data.video_folder.manifest",
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        fix = "save the manifest as UTF-8 CSV"
        raise DataError(f"manifest {rel!r} is not UTF-8", where=str(path), fix=fix) from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"manifest {rel!r} lacks column(s) {missing} (has {columns})",
            where=str(path),
            fix="the first line must name the columns: path,label[,split][,caption]",
        )
    reader.fieldnames = columns
    has_split = "split" in columns
    entries, seen = [], {}
    for line, row in enumerate(reader, start=2):
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if not any(values.values()):
            continue
        where = f"{path} line {line}"
        if not values.get("path") or not values.get("label"):
            raise DataError("manifest row has an empty path or label", where=where, fix="fill in both path and label")
        rel_path, file = inside_root(root, values["path"], where)
        if rel_path in seen:
            what = f"{rel_path!r} is listed twice (lines {seen[rel_path]} and {line})"
            raise DataError(what, where=where, fix="list every video once")
        seen[rel_path] = line
        split = values.get("split", "").lower() if has_split else None
        if has_split and split not in SPLITS:
            what = f"split {values.get('split')!r} is not one of {list(SPLITS)}"
            raise DataError(what, where=where, fix="use train, val or test")
        entries.append(Entry(rel_path, file, values["label"], split, values.get("caption") or None, line))
    if not entries:
        raise DataError(f"manifest {rel!r} lists no videos", where=str(path), fix="add one row per video: path,label")
    entries.sort(key=lambda e: e.path)
    return entries, has_split, hashlib.sha256(raw).hexdigest()


def _assign(entries: list[Entry], has_split: bool, cfg: DataConfig) -> list[str]:
    """Split of each entry: the manifest's column, else a seeded permutation cut by split_shares."""
    if has_split:
        return [e.split for e in entries]  # type: ignore[misc]
    order = np.random.default_rng(derive_seed(cfg.seed, "video_folder", "split")).permutation(len(entries))
    sizes, out, pos = split_sizes(cfg.video_folder.split_shares, len(entries)), [""] * len(entries), 0
    for split in SPLITS:
        for i in order[pos : pos + sizes[split]]:
            out[i] = split
        pos += sizes[split]
    return out


def load_video_folder(cfg: DataConfig) -> FolderDataset:
    """Decode every manifest entry into train/val/test :class:`VideoSet` s (a DataError on any bad input)."""
    root = _root(cfg)
    entries, has_split, manifest_hash = read_manifest(root, cfg.video_folder.manifest)
    names = sorted({e.label for e in entries})
    index = {n: i for i, n in enumerate(names)}
    splits = _assign(entries, has_split, cfg)
    clips: dict[str, list] = {s: [] for s in SPLITS}
    skipped = []
    # tqdm shows a bar on a terminal and stays quiet in logs and CI (disable=None)
    for entry, split in tqdm(list(zip(entries, splits)), desc="decoding videos", unit="video", disable=None):
        try:
            clip, info = read_clip(entry.file, cfg.frames, cfg.frame_size)
        except DecodeError as exc:
            if cfg.video_folder.on_error == "fail":
                raise DataError(
                    f"video {entry.path!r} {exc}",
                    where=f"{entry.file} (manifest line {entry.line})",
                    fix="replace or remove the file, or set data.video_folder.on_error=skip to leave it out",
                ) from None
            skipped.append({"path": entry.path, "reason": str(exc)})
            continue
        item = {"path": entry.path, "label": entry.label, **info}
        clips[split].append((clip, index[entry.label], entry.caption or entry.label, item))
    out = {}
    for split in SPLITS:
        if not clips[split]:
            raise DataError(
                f"split {split!r} of the video folder has no videos"
                + (f" ({len(skipped)} file(s) skipped as unreadable)" if skipped else ""),
                where=str(root / cfg.video_folder.manifest),
                fix="add videos to that split (split column) or more videos / other data.video_folder.split_shares",
            )
        vids, labels, caps, items = zip(*clips[split])
        out[split] = VideoSet(np.stack(vids), np.array(labels, dtype=np.int64), list(caps), names, list(items))
    return FolderDataset(out, names, skipped, manifest_hash, len(entries))
