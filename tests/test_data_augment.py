"""Training-time augmentation: explicit generator, temporal consistency, fixed length, worker independence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from usam.config import compose
from usam.data import VideoDataset, augment_clip, build_dataset, preprocess_dataset
from usam.errors import DataError

STRONG = [
    "preprocess.augment.color_jitter={brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1}",
    "preprocess.augment.random_crop_padding=4",
    "preprocess.augment.hflip_p=0.5",
    "preprocess.augment.vflip_p=0.5",
    "preprocess.augment.rotation_deg=30",
    "preprocess.augment.frame_strides=[1,2,3]",
    "preprocess.augment.reverse_p=0.5",
    "preprocess.augment.clip_frames=4",
]
NO_JITTER = "preprocess.augment.color_jitter={brightness: 0, contrast: 0, saturation: 0, hue: 0}"


def aug_cfg(*overrides: str):
    return compose(list(overrides)).preprocess.augment


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def moving_clip(t: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.rand(t, 3, 16, 16, generator=g)


def test_same_generator_seed_same_output_other_seed_other_output():
    cfg = aug_cfg(*STRONG)
    clip = moving_clip()
    a, pa = augment_clip(clip, cfg, gen(1))
    b, pb = augment_clip(clip, cfg, gen(1))
    c, pc = augment_clip(clip, cfg, gen(2))
    assert torch.equal(a, b) and pa == pb
    assert not torch.equal(a, c) and pa != pc


def test_global_rng_is_untouched():
    state = torch.random.get_rng_state()
    augment_clip(moving_clip(), aug_cfg(*STRONG), gen(0))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_static_clip_stays_static_under_every_augmentation():
    frame = moving_clip(1)
    clip = frame.repeat(8, 1, 1, 1)
    cfg = aug_cfg(*STRONG)
    for seed in range(10):
        out, p = augment_clip(clip, cfg, gen(seed))
        assert out.shape == (4, 3, 16, 16)
        assert (out - out[:1]).abs().max() == 0, p  # the same transform on every frame
        assert not torch.allclose(out[0], frame[0], atol=1e-3)  # yet something was changed


def test_fixed_frame_count_and_frames_come_from_the_drawn_indices():
    clip = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 4, 4) / 10  # frame k has value k/10
    seen_strides, seen_reversed = set(), set()
    for clip_frames, strides in ((4, "[1,2,3]"), (3, "[3]"), (5, "[3]"), (8, "[2]"), ("null", "[1,2]")):
        cfg = aug_cfg(
            f"preprocess.augment.clip_frames={clip_frames}",
            f"preprocess.augment.frame_strides={strides}",
            "preprocess.augment.reverse_p=0.5",
            NO_JITTER,
            "preprocess.augment.random_crop_padding=0",
        )
        n = 8 if clip_frames == "null" else clip_frames
        for seed in range(12):
            out, p = augment_clip(clip, cfg, gen(seed))
            assert out.shape[0] == n and len(p["frames"]) == n
            assert torch.allclose(out[:, 0, 0, 0], torch.tensor(p["frames"], dtype=torch.float32) / 10)
            assert (p["frames"][-1] - p["frames"][0]) == (-1 if p["reversed"] else 1) * (n - 1) * p["stride"]
            assert max(p["frames"]) <= 7 and min(p["frames"]) >= 0
            if clip_frames in (5, 8, "null"):
                assert p["stride"] == 1  # clamped: a larger stride would not fit
            if clip_frames == "null":
                assert sorted(p["frames"]) == list(range(8))
            seen_strides.add(p["stride"])
            seen_reversed.add(p["reversed"])
    assert seen_strides == {1, 2, 3} and seen_reversed == {True, False}


def test_clip_frames_larger_than_video_is_a_data_error():
    with pytest.raises(DataError, match="clip_frames"):
        augment_clip(moving_clip(4), aug_cfg("preprocess.augment.clip_frames=6"), gen(0))


def test_disabled_is_identity_and_flip_is_applied():
    clip = moving_clip()
    out, p = augment_clip(clip, aug_cfg(*STRONG, "preprocess.augment.enabled=false"), gen(0))
    assert out is clip and p == {"enabled": False}
    only_flip = [
        NO_JITTER,
        "preprocess.augment.random_crop_padding=0",
        "preprocess.augment.hflip_p=1.0",
    ]
    out, _ = augment_clip(clip, aug_cfg(*only_flip), gen(0))
    assert torch.equal(out, clip.flip(-1))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aug")
    c = compose(["data.num_videos.train=8", "data.num_videos.val=4", "data.num_videos.test=4"])
    build_dataset(c, "moving_digits", root / "raw")
    preprocess_dataset(c, root / "raw", root / "pp")
    return root / "pp"


def test_eval_dataset_never_augments(prepared):
    pre = compose(STRONG).preprocess
    ds = VideoDataset(prepared / "train", pre, train=False, seed=0)
    off = compose(["preprocess.augment.enabled=false"]).preprocess
    plain = VideoDataset(prepared / "train", off, train=True, seed=0)
    for i in range(len(ds)):
        assert ds[i]["video"].shape == (8, 3, 32, 32)
        assert torch.equal(ds[i]["video"], plain[i]["video"])


def test_train_dataset_augments_by_seed_epoch_and_index(prepared):
    pre = compose(STRONG).preprocess
    ds = VideoDataset(prepared / "train", pre, train=True, seed=0)
    a = ds[3]["video"]
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, ds[3]["video"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[3]["video"])
    ds.set_epoch(0)
    assert torch.equal(a, ds[3]["video"])
    assert not torch.equal(a, VideoDataset(prepared / "train", pre, train=True, seed=1)[3]["video"])


def test_dataloader_workers_do_not_change_batches(prepared):
    pre = compose(STRONG).preprocess
    ds = VideoDataset(prepared / "train", pre, train=True, seed=5)
    ds.set_epoch(2)

    def batches(workers: int):
        loader = torch.utils.data.DataLoader(
            ds, batch_size=3, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(9)
        )
        return [(b["index"].tolist(), b["video"], b["label"]) for b in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 3
    for (i0, v0, l0), (i2, v2, l2) in zip(serial, parallel):
        assert i0 == i2 and torch.equal(v0, v2) and torch.equal(l0, l2)
