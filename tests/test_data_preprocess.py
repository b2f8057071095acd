"""The preprocess stage and the torch Dataset over its output: shapes, stats, normalization, determinism."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from usam.config import compose
from usam.data import VideoDataset, build_dataset, denormalize, preprocess_dataset, verify_dataset
from usam.errors import DataError

SMALL = ["data.num_videos.train=8", "data.num_videos.val=4", "data.num_videos.test=4"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "bouncing_shapes"
    build_dataset(compose(SMALL), "bouncing_shapes", out)
    return out


def cfg(*overrides: str):
    return compose([*SMALL, *overrides])


def test_output_shapes_params_and_hashes(raw, tmp_path):
    c = cfg("preprocess.resize=24", "preprocess.crop_size=20", "preprocess.normalize.mode=dataset")
    record = preprocess_dataset(c, raw, tmp_path / "pp")
    out = tmp_path / "pp"
    raw_manifest = json.loads((raw / "manifest.json").read_text())
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        v = np.load(out / split / "videos.npy")
        assert v.shape == (n, 8, 20, 20, 3) and v.dtype == np.uint8 and v.max() > 200
        assert (out / split / "labels.npy").read_bytes() == (raw / split / "labels.npy").read_bytes()
        assert (out / split / "meta.json").read_bytes() == (raw / split / "meta.json").read_bytes()
        assert record["input"]["splits"][split] == raw_manifest["splits"][split]["content_sha256"]
    assert json.loads((out / "preprocess.json").read_text()) == record
    assert record["params"] == dataclasses.asdict(c.preprocess)
    assert record["output"]["splits"] == verify_dataset(out)  # the output is itself a verifiable dataset
    assert record["normalization"] == {"mode": "dataset", **record["modes"]["dataset"]}
    assert record["modes"]["imagenet"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert record["modes"]["half"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert record["modes"]["none"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    train = np.load(out / "train" / "videos.npy").reshape(-1, 3) / 255.0
    np.testing.assert_allclose(record["train_stats"]["mean"], train.mean(0), atol=1e-9)
    np.testing.assert_allclose(record["train_stats"]["std"], train.std(0), atol=1e-9)
    assert all(0.05 < m < 0.95 for m in record["train_stats"]["mean"])
    assert all(0.02 < s < 0.5 for s in record["train_stats"]["std"])


def test_resize_is_antialiased_and_crop_is_centred(raw, tmp_path):
    src = np.load(raw / "train" / "videos.npy").astype(float)
    preprocess_dataset(cfg("preprocess.resize=32", "preprocess.crop_size=16"), raw, tmp_path / "crop")
    crop = np.load(tmp_path / "crop" / "train" / "videos.npy")
    assert np.array_equal(crop, src[:, :, 8:24, 8:24].astype(np.uint8))  # no resize, centre 16x16
    preprocess_dataset(cfg("preprocess.resize=16", "preprocess.crop_size=16"), raw, tmp_path / "half")
    half = np.load(tmp_path / "half" / "train" / "videos.npy").astype(float)
    block = src.reshape(8, 8, 16, 2, 16, 2, 3).mean(axis=(3, 5))
    nearest = src[:, :, ::2, ::2]
    # antialiased: close to the 2x2 block average, closer than plain subsampling
    assert np.abs(half - block).mean() < 4 and np.abs(half - block).mean() < 0.5 * np.abs(half - nearest).mean()


def test_preprocess_is_deterministic_and_atomic(raw, tmp_path):
    c = cfg("preprocess.resize=24", "preprocess.crop_size=20")
    preprocess_dataset(c, raw, tmp_path / "a")
    preprocess_dataset(c, raw, tmp_path / "b")
    for f in sorted((tmp_path / "a").rglob("*")):
        if f.is_file():
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp folders left


def test_missing_or_tampered_raw_dataset(raw, tmp_path):
    with pytest.raises(DataError, match="dvc repro data"):
        preprocess_dataset(cfg(), tmp_path / "no_such_raw", tmp_path / "pp")
    assert not (tmp_path / "pp").exists()
    copy = tmp_path / "raw_copy"
    copy.mkdir()
    for f in raw.rglob("*"):
        if f.is_file():
            (copy / f.relative_to(raw)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(raw)).write_bytes(f.read_bytes())
    labels = copy / "val" / "labels.npy"
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x07")
    with pytest.raises(DataError, match="val/labels.npy differs"):
        preprocess_dataset(cfg(), copy, tmp_path / "pp")
    assert not (tmp_path / "pp").exists()


@pytest.mark.parametrize("mode", ["half", "imagenet", "dataset", "none"])
def test_normalization_round_trips_through_denormalize(raw, tmp_path, mode):
    c = cfg("preprocess.resize=24", "preprocess.crop_size=20", f"preprocess.normalize.mode={mode}")
    record = preprocess_dataset(c, raw, tmp_path / "pp")
    ds = VideoDataset(tmp_path / "pp" / "val", c.preprocess, train=False, seed=0)
    stored = np.load(tmp_path / "pp" / "val" / "videos.npy")
    assert ds.stats["mean"] == record["modes"][mode]["mean"] and len(ds) == 4
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (8, 3, 20, 20) and item["video"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and item["index"] == i
        back = denormalize(item["video"], ds.stats).permute(0, 2, 3, 1).numpy() * 255
        np.testing.assert_allclose(back, stored[i], atol=1e-3)
    if mode == "dataset":
        train = VideoDataset(tmp_path / "pp" / "train", c.preprocess, train=False, seed=0)
        allv = torch.stack([train[i]["video"] for i in range(len(train))])
        assert allv.mean(dim=(0, 1, 3, 4)).abs().max() < 1e-4
        assert (allv.std(dim=(0, 1, 3, 4)) - 1).abs().max() < 1e-3
    if mode == "half":
        assert item["video"].min() >= -1 and item["video"].max() <= 1


def test_dataset_errors(raw, tmp_path):
    c = cfg("preprocess.resize=24", "preprocess.crop_size=20")
    with pytest.raises(DataError, match="dvc repro preprocess"):
        VideoDataset(tmp_path / "nothing" / "train", c.preprocess, train=True, seed=0)
    preprocess_dataset(c, raw, tmp_path / "pp")
    with pytest.raises(DataError, match="crop_size = 16"):  # stale: config changed since preprocessing
        VideoDataset(tmp_path / "pp" / "train", cfg("preprocess.crop_size=16").preprocess, train=True, seed=0)
    (tmp_path / "pp" / "test" / "videos.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="videos.npy"):
        VideoDataset(tmp_path / "pp" / "test", c.preprocess, train=False, seed=0)
