"""First-frame agreement: what it measures on videos whose answer is known."""

from __future__ import annotations

import pytest
import torch

from usam.eval.first_frame import first_frame_agreement

NORMALIZE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


class Brightness(torch.nn.Module):
    """A stand-in frame classifier: class 1 for frames brighter than mid-grey, else class 0."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        m = frames.mean((1, 2, 3))
        return torch.stack([-m, m], dim=-1)


def test_a_still_video_agrees_with_its_first_frame_and_a_changing_one_does_not():
    torch.manual_seed(0)
    frame = torch.rand(1, 3, 1, 8, 8) * 0.4  # dark: class 0
    still = frame.expand(-1, -1, 5, -1, -1)
    changing = still.clone()
    changing[:, :, 3:] = 1.0 - changing[:, :, 3:]  # frames 3-4 turn bright: class 1, and far in pixels
    out = first_frame_agreement(torch.cat([still, changing]), Brightness(), NORMALIZE)
    assert out["frame0_l1"][0] == 0.0 and out["frame0_class_agreement"][0] == 1.0
    assert out["frame0_class_agreement"][1] == 0.5  # 2 of the 4 later frames changed class
    expected_l1 = float((changing[0, :, 1:] - changing[0, :, :1]).abs().mean())
    assert float(out["frame0_l1"][1]) == pytest.approx(expected_l1, rel=1e-6)


def test_uint8_videos_are_read_as_pixels_in_0_1():
    torch.manual_seed(0)
    video = torch.rand(2, 3, 4, 8, 8)
    as_u8 = (video * 255).round().to(torch.uint8)
    a = first_frame_agreement(as_u8, Brightness(), NORMALIZE)
    b = first_frame_agreement(as_u8.float() / 255.0, Brightness(), NORMALIZE)
    assert torch.allclose(a["frame0_l1"], b["frame0_l1"]) and torch.equal(a["frame0_class_agreement"], b["frame0_class_agreement"])
