"""The synthetic generators: determinism, real sklearn digits, bouncing, and a visible, causal action cue."""

from __future__ import annotations

import numpy as np
import pytest

from usam.config import compose
from usam.data import generate_bouncing_shapes, generate_moving_digits, generate_split
from usam.data.bouncing_shapes import LABEL_NAMES as ACTIONS
from usam.data.bouncing_shapes import change_frame
from usam.data.moving_digits import source_digits, source_pools
from usam.errors import ConfigError

SMALL = ["data.num_videos.train=16", "data.num_videos.val=8", "data.num_videos.test=8"]


def data_cfg(*overrides: str):
    return compose([*SMALL, *overrides]).data


@pytest.mark.parametrize("name", ["moving_digits", "bouncing_shapes"])
def test_same_seed_same_bytes_other_seed_other_videos(name):
    a = generate_split(data_cfg(), name, "train")
    b = generate_split(data_cfg(), name, "train")
    c = generate_split(data_cfg("data.seed=1"), name, "train")
    val = generate_split(data_cfg(), name, "val", n=16)
    assert a.videos.tobytes() == b.videos.tobytes()
    assert a.labels.tolist() == b.labels.tolist() and a.captions == b.captions and a.items == b.items
    assert a.videos.tobytes() != c.videos.tobytes()
    assert a.videos.tobytes() != val.videos.tobytes()  # each split has its own seed


@pytest.mark.parametrize("name", ["moving_digits", "bouncing_shapes"])
def test_output_types_and_shapes(name):
    cfg = data_cfg("data.frames=6", "data.frame_size=40")
    vs = generate_split(cfg, name, "val")
    assert vs.videos.shape == (8, 6, 40, 40, 3) and vs.videos.dtype == np.uint8
    assert vs.labels.shape == (8,) and vs.labels.dtype == np.int64
    assert len(vs.captions) == len(vs.items) == 8
    assert vs.labels.min() >= 0 and vs.labels.max() < len(vs.label_names)


def test_moving_digits_source_pools_are_disjoint_and_labels_come_from_sklearn():
    cfg = data_cfg()
    images, target = source_digits()
    assert images.shape == (1797, 8, 8) and sorted(set(target.tolist())) == list(range(10))
    pools = source_pools(cfg.seed, cfg.moving_digits.source_split)
    assert sum(len(p) for p in pools.values()) == 1797
    assert len(set(pools["train"]) | set(pools["val"]) | set(pools["test"])) == 1797
    assert abs(len(pools["train"]) - 0.7 * 1797) <= 1 and abs(len(pools["test"]) - 0.2 * 1797) <= 1
    used = {}
    for split in ("train", "val", "test"):
        vs = generate_moving_digits(cfg, split)
        for label, item in zip(vs.labels, vs.items):
            src = item["source_indices"][0]
            assert src in set(pools[split].tolist())
            assert target[src] == label == item["digit_classes"][0]
        used[split] = {i for item in vs.items for i in item["source_indices"]}
    assert not (used["train"] & used["val"]) and not (used["train"] & used["test"]) and not (used["val"] & used["test"])


def test_moving_digits_pixels_are_the_labelled_sklearn_digit():
    # digit_size 16 = 2x the 8x8 source: block-averaging the rendered region recovers the source image
    cfg = data_cfg("data.moving_digits.digit_size=16")
    vs = generate_moving_digits(cfg, "train")
    images, target = source_digits()
    flat = images.reshape(len(images), -1)
    flat = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-9)
    hits = 0
    for v, item in enumerate(vs.items):
        x, y = item["positions"][0][0]
        frame = vs.videos[v, 0, :, :, 0].astype(float)
        region = frame[y : y + 16, x : x + 16]
        outside = frame.copy()
        outside[y : y + 16, x : x + 16] = 0
        assert outside.max() == 0  # nothing drawn outside the recorded digit box: black background
        small = region.reshape(8, 2, 8, 2).mean(axis=(1, 3)).reshape(-1)
        small = (small - small.mean()) / (small.std() + 1e-9)
        corr = flat @ small / small.size
        src = item["source_indices"][0]
        assert corr[src] > 0.95  # it is that very sklearn image
        corr[src] = -np.inf
        hits += target[int(np.argmax(corr))] == vs.labels[v]  # and its nearest other image has the label's class
    assert hits >= 0.8 * len(vs)


def test_moving_digits_value_range_grayscale_and_caption():
    cfg = data_cfg()
    vs = generate_moving_digits(cfg, "train")
    v = vs.videos
    assert (v[..., 0] == v[..., 1]).all() and (v[..., 0] == v[..., 2]).all()
    assert v.max() >= 200 and v.min() == 0 and (v == 0).mean() > 0.7
    mid = sum(cfg.moving_digits.speed) / 2
    for label, cap, item in zip(vs.labels, vs.captions, vs.items):
        pace = "fast" if item["speeds"][0] >= mid else "slow"
        assert cap == f"digit {label} bouncing {pace}"


def test_moving_digits_bounce_keeps_digits_inside_the_frame():
    cfg = data_cfg("data.frames=24", "data.moving_digits.speed=[6.0,12.0]", "data.moving_digits.digits_per_video=1")
    vs = generate_moving_digits(cfg, "train")
    size, frame = cfg.moving_digits.digit_size, cfg.frame_size
    mass = vs.videos[..., 0].astype(np.int64).sum(axis=(2, 3))  # (N, T)
    assert (mass == mass[:, :1]).all()  # never clipped by an edge: the whole digit is visible in every frame
    bounced = 0
    for item in vs.items:
        pos = np.array(item["positions"][0])
        assert pos.min() >= 0 and pos.max() <= frame - size
        steps = np.diff(pos, axis=0)
        bounced += bool((np.sign(steps[1:]) * np.sign(steps[:-1]) < 0).any())
    assert bounced == len(vs)  # at these speeds every digit reverses direction at a wall


def test_moving_digits_several_digits_keep_all_classes():
    cfg = data_cfg("data.moving_digits.digits_per_video=3")
    vs = generate_moving_digits(cfg, "val")
    _, target = source_digits()
    for label, item, cap in zip(vs.labels, vs.items, vs.captions):
        assert len(item["digit_classes"]) == 3 and item["digit_classes"][0] == label
        assert item["digit_classes"] == [int(target[i]) for i in item["source_indices"]]
        assert cap.startswith(f"digit {label} bouncing") and "with digits" in cap


def test_digit_larger_than_frame_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="digit_size"):
        data_cfg("data.frame_size=16", "data.moving_digits.digit_size=20")


def _centroids(video: np.ndarray, rgb: list[int]) -> np.ndarray:
    """Per-frame centroid (x, y) of pixels with the shape's colour (background never gets that close)."""
    dist = np.abs(video.astype(int) - np.array(rgb)).max(-1)
    out = []
    for mask in dist < 40:
        ys, xs = np.nonzero(mask)
        assert len(xs) > 0, "shape not visible"
        out.append([xs.mean(), ys.mean()])
    return np.array(out)


AXIS = {"right": (0, 1), "left": (0, -1), "down": (1, 1), "up": (1, -1)}


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_action_cue_direction_and_speed_change_are_visible_in_pixels(p):
    cfg = data_cfg(
        "data.frame_size=64",
        "data.bouncing_shapes.speed=[2.0,3.0]",
        "data.bouncing_shapes.shape_size=[6,8]",
        "data.bouncing_shapes.speed_change=2.0",
        f"data.bouncing_shapes.domain_randomization.p={p}",
    )
    vs = generate_bouncing_shapes(cfg, "train")
    m = change_frame(cfg.frames)
    assert sorted(set(vs.labels.tolist())) == list(range(8))
    for v, (label, item) in enumerate(zip(vs.labels, vs.items)):
        direction, profile = ACTIONS[label].split("+")
        assert item["action"] == ACTIONS[label] and item["domain_randomized"] == (p == 1.0)
        c = _centroids(vs.videos[v], item["shapes"][0]["rgb"])
        axis, sign = AXIS[direction]
        steps = np.diff(c, axis=0)
        main, perp = sign * steps[:, axis], np.abs(steps[:, 1 - axis])
        assert (main[:m] > 1.0).all(), f"video {v} ({ACTIONS[label]}) does not move {direction}: {steps}"
        assert (perp[:m] < main[:m]).all()
        ratio = np.abs(main[m:]).mean() / main[:m].mean()
        if profile == "speed_up":
            assert ratio > 1.6, (v, ratio)
        else:
            assert ratio < 0.65, (v, ratio)


def test_action_cue_first_half_direction_with_default_config():
    cfg = data_cfg()
    vs = generate_bouncing_shapes(cfg, "train")
    m = change_frame(cfg.frames)
    for v, label in enumerate(vs.labels):
        direction = ACTIONS[label].split("+")[0]
        axis, sign = AXIS[direction]
        pos = np.array(vs.items[v]["shapes"][0]["positions"])
        c = _centroids(vs.videos[v], vs.items[v]["shapes"][0]["rgb"])
        assert np.abs(c[:, axis] - pos[:, axis] - (c[0, axis] - pos[0, axis])).max() < 1.0  # recorded path = pixels
        assert (sign * np.diff(c[: m + 1, axis]) > 0.5).all()


def test_shapes_metadata_and_captions_agree_with_pixels():
    cfg = data_cfg("data.bouncing_shapes.shapes_per_video=3")
    vs = generate_bouncing_shapes(cfg, "val")
    assert vs.label_names == ACTIONS and len(ACTIONS) == 8
    for v, (cap, item) in enumerate(zip(vs.captions, vs.items)):
        first = item["shapes"][0]
        assert len(item["shapes"]) == 3 and first["kind"] in cfg.bouncing_shapes.shapes
        verb = "speeding up" if item["profile"] == "speed_up" else "slowing down"
        assert cap == f"{first['color']} {first['kind']} moving {item['direction']}, {verb}, with 2 other shapes"
        rgb = np.array(first["rgb"])
        assert rgb.max() >= 250 and rgb.max() - rgb.min() >= 0.8 * 255  # saturated
        x, y = first["positions"][0]
        s = first["size"]
        cx, cy = int(x + s / 2), int(y + s * 0.75)  # inside circle, square and triangle alike; drawn on top
        assert np.abs(vs.videos[v, 0, cy, cx].astype(int) - rgb).max() <= 2


def test_labels_are_balanced():
    vs = generate_bouncing_shapes(data_cfg("data.num_videos.val=20"), "val")
    counts = np.bincount(vs.labels, minlength=8)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 20


def test_domain_shift_between_digits_and_shapes():
    cfg = data_cfg()
    digits = generate_moving_digits(cfg, "train").videos.astype(float)
    shapes = generate_bouncing_shapes(cfg, "train").videos.astype(float)
    assert digits.mean() < 40 and shapes.mean() > 60  # black vs bright backgrounds
    assert (digits.max(-1) < 10).mean() > 0.6 and (shapes.max(-1) < 10).mean() < 0.02  # near-black pixels
    assert np.abs(digits[..., 0] - digits[..., 1]).max() == 0  # grayscale
    assert np.abs(shapes[..., 0] - shapes[..., 1]).mean() > 10  # colour


def test_domain_randomization_gives_textured_backgrounds():
    plain = generate_bouncing_shapes(data_cfg("data.bouncing_shapes.domain_randomization.p=0.0"), "train")
    rand = generate_bouncing_shapes(data_cfg("data.bouncing_shapes.domain_randomization.p=1.0"), "train")
    assert {i["background"]["kind"] for i in plain.items} <= {"solid", "gradient"}
    assert {i["background"]["kind"] for i in rand.items} == {"texture"}

    def roughness(vs):  # mean absolute difference between horizontal neighbours
        return np.abs(np.diff(vs.videos.astype(float), axis=3)).mean()

    assert roughness(rand) > 3 * roughness(plain)
    none = generate_bouncing_shapes(
        data_cfg("data.bouncing_shapes.domain_randomization={p: 1.0, noise: 0.0}"), "train"
    )
    assert roughness(rand) > 2 * roughness(none)  # the noise knob sets the texture's noise


def test_shape_larger_than_frame_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="shape_size"):
        data_cfg("data.frame_size=8", "data.bouncing_shapes.shape_size=[6,12]")
