"""The user's video folder: real mp4/gif/PNG inputs, labels, splits, and every kind of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from usam.config import compose
from usam.data import build_dataset, load_video_folder
from usam.errors import DataError


def gray_frames(n: int, h: int = 40, w: int = 56, step: int = 20) -> np.ndarray:
    """Frame k is uniformly gray with value step*k: decoded values reveal which frames were taken."""
    return np.stack([np.full((h, w, 3), step * k, np.uint8) for k in range(n)])


def write_mp4(path: Path, frames: np.ndarray, codec: str = "mpeg4") -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for a in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def write_gif(path: Path, frames: np.ndarray) -> None:
    imgs = [Image.fromarray(a) for a in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=100, loop=0)


def write_png_dir(path: Path, frames: np.ndarray) -> None:
    path.mkdir(parents=True)
    for k in reversed(range(len(frames))):  # written out of order: loading must sort by name
        Image.fromarray(frames[k]).save(path / f"frame_{k:03d}.png")


def write_manifest(root: Path, rows: list[str], header: str = "path,label,split,caption") -> None:
    (root / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")


def cfg_for(root: Path, *overrides: str):
    return compose(["data=video_folder", f"data.video_folder.root={root}", *overrides])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "videos"
    r.mkdir()
    write_mp4(r / "a.mp4", gray_frames(12))
    write_gif(r / "b.gif", gray_frames(10, 30, 30, step=25))
    write_png_dir(r / "c", gray_frames(9, step=30))
    (r / "sub dir").mkdir()
    write_mp4(r / "sub dir" / "d.mp4", gray_frames(16, 48, 48, step=15))
    write_manifest(r, ["a.mp4,cat,train,a gray fade", "b.gif,dog,train,", "c,cat,val,", "sub dir/d.mp4,dog,test,"])
    return r


def test_loads_mp4_gif_and_png_frames_with_labels_and_splits(root):
    ds = load_video_folder(cfg_for(root).data)
    assert ds.label_names == ["cat", "dog"] and ds.skipped == [] and ds.entries == 4
    train, val, test = ds.splits["train"], ds.splits["val"], ds.splits["test"]
    assert train.videos.shape == (2, 8, 32, 32, 3) and train.videos.dtype == np.uint8
    assert val.videos.shape == (1, 8, 32, 32, 3) and test.videos.shape == (1, 8, 32, 32, 3)
    assert [i["path"] for i in train.items] == ["a.mp4", "b.gif"] and train.labels.tolist() == [0, 1]
    assert val.labels.tolist() == [0] and test.labels.tolist() == [1] and test.items[0]["path"] == "sub dir/d.mp4"
    assert train.captions == ["a gray fade", "dog"]  # caption column, else the label


@pytest.mark.parametrize("name,n,step,lossy", [("a.mp4", 12, 20, True), ("b.gif", 10, 25, False), ("c", 9, 30, False)])
def test_frames_are_evenly_spaced_in_order(root, name, n, step, lossy):
    ds = load_video_folder(cfg_for(root).data)
    (vs,) = [s for s in ds.splits.values() if name in [i["path"] for i in s.items]]
    k = [i["path"] for i in vs.items].index(name)
    expected = np.linspace(0, n - 1, 8).round().astype(int)
    assert vs.items[k]["frame_indices"] == expected.tolist() and vs.items[k]["source_frames"] == n
    got = vs.videos[k].astype(float).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(got, step * expected, atol=6 if lossy else 0.5)


def test_resize_shorter_side_then_center_crop(tmp_path):
    r = tmp_path / "v"
    frame = np.zeros((40, 120, 3), np.uint8)  # three vertical bands: red | green | blue
    frame[:, :40, 0] = 255
    frame[:, 40:80, 1] = 255
    frame[:, 80:, 2] = 255
    write_png_dir(r / "bands", np.stack([frame] * 8))
    write_manifest(r, ["bands,x,train,", "bands2,x,val,", "bands3,x,test,"])
    for extra in ("bands2", "bands3"):
        write_png_dir(r / extra, np.stack([frame] * 8))
    clip = load_video_folder(cfg_for(r).data).splits["train"].videos[0, 0]
    # 40x120 -> 32x96, centre 32 columns are the green band only
    assert clip.shape == (32, 32, 3)
    assert (clip[:, 2:-2, 1] == 255).all() and clip[:, 2:-2, 0].max() == 0 and clip[:, 2:-2, 2].max() == 0


def _many(tmp_path: Path, n: int = 10) -> Path:
    r = tmp_path / "many"
    r.mkdir()
    for i in range(n):
        write_gif(r / f"v{i:02d}.gif", gray_frames(8, 16, 16, step=i + 1))
    write_manifest(r, [f"v{i:02d}.gif,{'ab'[i % 2]}" for i in range(n)], header="path,label")
    return r


def test_split_from_shares_is_deterministic_and_seeded(tmp_path):
    r = _many(tmp_path)

    def assignment(*ov):
        ds = load_video_folder(cfg_for(r, *ov).data)
        return {s: sorted(i["path"] for i in vs.items) for s, vs in ds.splits.items()}

    a = assignment()
    assert [len(a[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert sorted(sum(a.values(), [])) == [f"v{i:02d}.gif" for i in range(10)]
    assert assignment() == a
    assert any(assignment(f"data.seed={s}") != a for s in (1, 2, 3))


def test_empty_split_is_an_error(tmp_path):
    r = _many(tmp_path, 3)
    with pytest.raises(DataError, match="split 'val'.*no videos"):
        load_video_folder(cfg_for(r, "data.video_folder.split_shares={train: 0.9, val: 0.0, test: 0.1}").data)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_paths_escaping_the_root_are_always_refused(root, tmp_path, kind, on_error):
    outside = tmp_path / "escape.mp4"
    write_mp4(outside, gray_frames(10))
    if kind == "dotdot":
        entry = "../escape.mp4"
    elif kind == "absolute":
        entry = str(outside)
    else:
        os.symlink(outside, root / "link.mp4")
        entry = "link.mp4"
    write_manifest(root, ["a.mp4,cat,train,", "c,cat,val,", "b.gif,dog,test,", f"{entry},dog,train,"])
    with pytest.raises(DataError) as err:
        load_video_folder(cfg_for(root, f"data.video_folder.on_error={on_error}").data)
    reason = {"dotdot": "uses '..'", "absolute": "is absolute", "symlink": "resolves outside the root"}[kind]
    assert entry in str(err.value) and reason in str(err.value) and "manifest.csv line 5" in str(err.value)


def test_symlink_inside_the_root_is_fine(root):
    os.symlink(root / "a.mp4", root / "alias.mp4")
    write_manifest(root, ["alias.mp4,cat,train,", "c,cat,val,", "b.gif,dog,test,"])
    assert load_video_folder(cfg_for(root).data).splits["train"].items[0]["path"] == "alias.mp4"


def test_corrupt_video_is_skipped_and_reported_or_fails_naming_it(root):
    (root / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    write_mp4(root / "short.mp4", gray_frames(5))
    rows = ["a.mp4,cat,train,", "bad.mp4,cat,train,", "short.mp4,dog,train,", "c,cat,val,", "b.gif,dog,test,"]
    write_manifest(root, [*rows, "gone.mp4,dog,train,"])
    ds = load_video_folder(cfg_for(root, "data.video_folder.on_error=skip").data)
    assert [s["path"] for s in ds.skipped] == ["bad.mp4", "gone.mp4", "short.mp4"]
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    assert "decoded" in reasons["bad.mp4"] and "fewer than" in reasons["short.mp4"]
    assert "not exist" in reasons["gone.mp4"]
    assert [i["path"] for i in ds.splits["train"].items] == ["a.mp4"]
    with pytest.raises(DataError, match="bad.mp4") as err:
        load_video_folder(cfg_for(root, "data.video_folder.on_error=fail").data)
    assert "on_error=skip" in str(err.value)


def test_missing_root_manifest_or_columns(tmp_path, root):
    with pytest.raises(DataError, match="does not exist"):
        load_video_folder(cfg_for(tmp_path / "nope").data)
    with pytest.raises(DataError, match="manifest 'other.csv' not found"):
        load_video_folder(cfg_for(root, "data.video_folder.manifest=other.csv").data)
    write_manifest(root, ["a.mp4,train"], header="path,split")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['label'\]"):
        load_video_folder(cfg_for(root).data)
    write_manifest(root, ["a.mp4,cat,training,"])
    with pytest.raises(DataError, match="'training' is not one of"):
        load_video_folder(cfg_for(root).data)
    write_manifest(root, ["a.mp4,cat,train,", "a.mp4,dog,val,"])
    with pytest.raises(DataError, match="listed twice"):
        load_video_folder(cfg_for(root).data)


def test_build_video_folder_card_reports_skips_without_absolute_paths(root, tmp_path):
    (root / "bad.mp4").write_bytes(b"\x00" * 100)
    write_manifest(root, ["a.mp4,cat,train,", "bad.mp4,dog,train,", "c,cat,val,", "b.gif,dog,test,"])
    out = tmp_path / "out" / "video_folder"
    card = build_dataset(cfg_for(root), "video_folder", out)
    assert card["synthetic_share"] == 0.0 and card["license"]["id"] == "unknown"
    assert card["skipped"]["count"] == 1 and [f["path"] for f in card["skipped"]["files"]] == ["bad.mp4"]
    assert card["splits"]["train"]["count"] == 1 and card["labels"]["counts"]["test"] == {"cat": 0, "dog": 1}
    text = (out / "card.json").read_text()
    assert str(tmp_path) not in text and json.loads(text) == card
    assert "bad.mp4" in (out / "CARD.md").read_text()
    # the same videos under another absolute root give the same card bytes
    moved = tmp_path / "elsewhere" / "videos"
    moved.parent.mkdir()
    root.rename(moved)
    out2 = tmp_path / "out2"
    build_dataset(cfg_for(moved), "video_folder", out2)
    assert (out2 / "card.json").read_bytes() == (out / "card.json").read_bytes()
