"""The data stage's output: byte-determinism, layout, card, atomic replacement and tamper detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from usam.config import compose
from usam.data import build_dataset, dataset_hashes, verify_dataset
from usam.errors import DataError
from usam.files import sha256_file

SMALL = ["data.num_videos.train=8", "data.num_videos.val=4", "data.num_videos.test=4"]
# 0.0002 x 1,797 source images rounds to none: valid config, but the test split cannot be generated
NO_TEST_DIGITS = "data.moving_digits.source_split={train: 0.7998, val: 0.2, test: 0.0002}"


def cfg(*overrides: str):
    return compose([*SMALL, *overrides])


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("name", ["moving_digits", "bouncing_shapes"])
def test_same_seed_gives_identical_bytes_other_seed_other_hashes(tmp_path, name):
    a = build_dataset(cfg(), name, tmp_path / "a" / name)
    b = build_dataset(cfg(), name, tmp_path / "b" / name)
    c = build_dataset(cfg("data.seed=7"), name, tmp_path / "c" / name)
    files_a, files_b = tree_bytes(tmp_path / "a" / name), tree_bytes(tmp_path / "b" / name)
    assert files_a == files_b and a == b
    assert set(files_a) == {
        "manifest.json", "card.json", "CARD.md",
        *(f"{s}/{f}" for s in ("train", "val", "test") for f in ("videos.npy", "labels.npy", "meta.json")),
    }
    ha, hc = dataset_hashes(tmp_path / "a" / name), dataset_hashes(tmp_path / "c" / name)
    assert ha == dataset_hashes(tmp_path / "b" / name) and set(ha) == {"train", "val", "test"}
    assert all(ha[s] != hc[s] for s in ha)
    va = np.load(tmp_path / "a" / name / "train" / "videos.npy")
    vc = np.load(tmp_path / "c" / name / "train" / "videos.npy")
    assert not np.array_equal(va, vc)
    assert a["version"] != c["version"]  # the params hash is part of the version


def test_layout_dtypes_and_manifest_hashes(tmp_path):
    out = tmp_path / "md"
    card = build_dataset(cfg("data.frames=5", "data.frame_size=24"), "moving_digits", out)
    manifest = json.loads((out / "manifest.json").read_text())
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        videos = np.load(out / split / "videos.npy")
        labels = np.load(out / split / "labels.npy")
        meta = json.loads((out / split / "meta.json").read_text())
        assert videos.shape == (n, 5, 24, 24, 3) and videos.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert len(meta["captions"]) == len(meta["items"]) == n
        entry = manifest["splits"][split]
        assert entry["count"] == n and card["splits"][split]["count"] == n
        for f, sha in entry["files"].items():
            assert sha256_file(out / split / f) == sha
        assert card["hashes"]["splits"][split] == entry["content_sha256"] == dataset_hashes(out)[split]
    assert manifest["files"]["card.json"] == sha256_file(out / "card.json")
    assert manifest["dataset"] == "moving_digits" and manifest["label_names"] == [str(d) for d in range(10)]


def test_card_contents(tmp_path):
    c = cfg()
    digits = build_dataset(c, "moving_digits", tmp_path / "md")
    shapes = build_dataset(c, "bouncing_shapes", tmp_path / "bs")
    assert digits["name"] == "moving_digits" and digits["version"].startswith("1.0+")
    assert digits["license"]["id"] == "CC-BY-4.0"
    assert "UCI" in digits["license"]["text"] and "scikit-learn" in digits["license"]["text"]
    assert shapes["license"]["id"] == "MIT"
    assert digits["synthetic_share"] == shapes["synthetic_share"] == 1.0
    assert "bouncing_shapes" in digits["domain"]["shift_vs_other"]
    assert "moving_digits" in shapes["domain"]["shift_vs_other"]
    g = digits["generator"]
    assert g["moving_digits"] == {
        "digits_per_video": 1,
        "digit_size": 20,
        "speed": [1.0, 3.0],
        "source_split": {"train": 0.7, "val": 0.1, "test": 0.2},
    }
    assert (g["frames"], g["frame_size"], g["seed"], g["num_videos"]) == (8, 32, 0, {"train": 8, "val": 4, "test": 4})
    for card, root in ((digits, tmp_path / "md"), (shapes, tmp_path / "bs")):
        for split in ("train", "val", "test"):
            labels = np.load(root / split / "labels.npy")
            counts = card["labels"]["counts"][split]
            assert [counts[n] for n in card["labels"]["names"]] == np.bincount(labels, minlength=len(counts)).tolist()
        text = (root / "card.json").read_text()
        assert str(tmp_path) not in text and json.loads(text) == card
        md = (root / "CARD.md").read_text()
        assert card["license"]["id"] in md and all(h in md for h in card["hashes"]["splits"].values())


def test_failed_build_leaves_no_output_and_no_temp(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "bad.mp4").write_bytes(b"not a video" * 50)
    (root / "manifest.csv").write_text("path,label\nbad.mp4,x\n")
    bad = compose(["data=video_folder", f"data.video_folder.root={root}", "data.video_folder.on_error=fail"])
    parent = tmp_path / "data"
    with pytest.raises(DataError, match="bad.mp4"):
        build_dataset(bad, "video_folder", parent / "video_folder")
    assert not (parent / "video_folder").exists() and leftovers(parent) == []


def test_failed_build_keeps_the_previous_valid_output(tmp_path):
    out = tmp_path / "data" / "moving_digits"
    build_dataset(cfg(), "moving_digits", out)
    before = tree_bytes(out)
    # train and val get written, then the test split fails: it has no source digits
    with pytest.raises(DataError, match="split 'test' no source digit images"):
        build_dataset(cfg(NO_TEST_DIGITS), "moving_digits", out)
    assert tree_bytes(out) == before and leftovers(out.parent) == []
    verify_dataset(out)
    with pytest.raises(DataError):
        build_dataset(cfg(NO_TEST_DIGITS), "moving_digits", tmp_path / "data" / "fresh")
    assert not (tmp_path / "data" / "fresh").exists() and leftovers(out.parent) == []


def test_rebuild_replaces_the_old_output(tmp_path):
    out = tmp_path / "data" / "bs"
    build_dataset(cfg(), "bouncing_shapes", out)
    (out / "stray.txt").write_text("from an older build")
    old = dataset_hashes(out)
    build_dataset(cfg("data.seed=3"), "bouncing_shapes", out)
    assert dataset_hashes(out) != old and not (out / "stray.txt").exists() and leftovers(out.parent) == []
    verify_dataset(out)


@pytest.mark.parametrize("victim", ["train/videos.npy", "val/labels.npy", "test/meta.json", "card.json"])
def test_verify_dataset_names_a_tampered_file(tmp_path, victim):
    out = tmp_path / "md"
    build_dataset(cfg(), "moving_digits", out)
    assert verify_dataset(out) == dataset_hashes(out)
    data = bytearray((out / victim).read_bytes())
    data[-2] ^= 1
    (out / victim).write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{victim} differs"):
        verify_dataset(out)


def test_verify_dataset_names_a_missing_file_and_a_missing_dataset(tmp_path):
    out = tmp_path / "md"
    build_dataset(cfg(), "moving_digits", out)
    (out / "val" / "videos.npy").unlink()
    with pytest.raises(DataError, match="val/videos.npy is missing"):
        verify_dataset(out)
    with pytest.raises(DataError, match="manifest.json missing"):
        dataset_hashes(tmp_path / "nothing")


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset(cfg(), "imagenet", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_leftovers_of_a_killed_build_are_cleaned_by_the_next_build(tmp_path):
    out = tmp_path / "data" / "moving_digits"
    stale = [out.parent / ".moving_digits.tmp-deadbeef", out.parent / ".moving_digits.old-cafe"]
    for folder in stale:
        (folder / "train").mkdir(parents=True)
    unrelated = out.parent / ".other.tmp-1234"
    unrelated.mkdir()
    build_dataset(cfg(), "moving_digits", out)
    assert not any(folder.exists() for folder in stale)
    assert unrelated.exists()  # another dataset's build is none of this one's business
    verify_dataset(out)
