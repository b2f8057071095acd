"""The DVC ``data`` stage: generate or load a dataset and write it, with its card and hashes, atomically."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from usam.config.schema import Config
from usam.data.card import make_card, render_markdown, version_of
from usam.data.store import MANIFEST, REBUILD, read_manifest, verify_files, write_json, write_videoset
from usam.data.synthetic import GENERATORS, generate_split
from usam.data.video_folder import load_video_folder
from usam.data.videoset import SPLITS
from usam.errors import DataError
from usam.files import atomic_dir, sha256_file

DATASETS = (*GENERATORS, "video_folder")


def generator_params(cfg: Config, name: str, manifest_sha256: str | None = None) -> dict:
    """Everything that determines the bytes: the dataset's config section, frames, frame size, seed.

    For video_folder the root is reduced to its folder name (cards hold no absolute paths)
    and the manifest's sha256 stands for the data instead.
    """
    d = cfg.data
    params = {"dataset": name, "seed": d.seed, "frames": d.frames, "frame_size": d.frame_size}
    if name == "video_folder":
        vf = dataclasses.asdict(d.video_folder)
        vf["root"] = Path(vf["root"]).name if vf["root"] else None
        vf["manifest_sha256"] = manifest_sha256
        params["video_folder"] = vf
    else:
        params["num_videos"] = dataclasses.asdict(d.num_videos)
        params[name] = dataclasses.asdict(getattr(d, name))
    return params


def build_dataset(cfg: Config, name: str, out_dir: Path) -> dict:
    """Write dataset ``name`` to ``out_dir`` (replacing it only when the whole build succeeded); returns the card."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}", where="data.build", fix=f"use one of {list(DATASETS)}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        skipped = None
        manifest_sha = None
        splits, counts = {}, {}
        if name == "video_folder":
            folder = load_video_folder(cfg.data)
            sets, skipped, label_names = folder.splits, folder.skipped, folder.label_names
            manifest_sha = folder.manifest_sha256
            for split in SPLITS:
                splits[split] = write_videoset(tmp / split, sets[split])
                counts[split] = sets[split].class_counts()
        else:
            for split in SPLITS:  # one split in memory at a time
                vs = generate_split(cfg.data, name, split)
                splits[split] = write_videoset(tmp / split, vs)
                counts[split], label_names = vs.class_counts(), vs.label_names
        params = generator_params(cfg, name, manifest_sha)
        card = make_card(name, params, splits, label_names, counts, skipped)
        write_json(tmp / "card.json", card)
        (tmp / "CARD.md").write_text(render_markdown(card), encoding="utf-8")
        manifest = {
            "dataset": name,
            "version": version_of(params),
            "format": 1,
            "label_names": list(label_names),
            "splits": splits,
            "files": {f: sha256_file(tmp / f) for f in ("card.json", "CARD.md")},
        }
        write_json(tmp / MANIFEST, manifest)
    return card


def dataset_hashes(out_dir: Path) -> dict[str, str]:
    """Content sha256 per split, as recorded in ``out_dir/manifest.json`` (no re-hashing)."""
    manifest = read_manifest(Path(out_dir))
    try:
        return {s: info["content_sha256"] for s, info in manifest["splits"].items()}
    except (KeyError, TypeError):
        where = str(Path(out_dir) / MANIFEST)
        raise DataError("manifest.json lacks content hashes", where=where, fix=REBUILD) from None


def verify_dataset(out_dir: Path) -> dict[str, str]:
    """Re-hash every file in the manifest; a DataError names a missing or changed file. Returns split hashes."""
    return verify_files(Path(out_dir))
