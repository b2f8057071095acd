"""Perceptual distances, offline: real LPIPS on local backbone weights, or the domain evaluator's.

LPIPS needs an ImageNet AlexNet, which torchvision would download: we never do. When
``eval.lpips_weights`` names a local torchvision AlexNet state dict (sha256 checked, every
key and shape checked, since lpips itself loads with ``strict=False``), the real ``lpips``
metric runs on it. Otherwise the distance is computed the LPIPS way (unit-normalized
channels, squared differences, averaged over layers) on the features of the in-project
frame evaluator: ``domain_perceptual``, which is not comparable with published LPIPS numbers
and is labelled so wherever it is logged.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from usam.artifacts.loaders import load_evaluator
from usam.artifacts.weights import load_weights
from usam.data.dataset import stats_tensors
from usam.errors import UsamError
from usam.models.evaluators import FrameClassifier

LPIPS_LABEL = "lpips_alex"
DOMAIN_LABEL = "domain_perceptual"


class LpipsDistance(nn.Module):
    """The ``lpips`` package's AlexNet LPIPS (v0.1 calibration shipped with the package) on a local backbone."""

    label = LPIPS_LABEL

    def __init__(self, weights: Path, sha256: str | None):
        super().__init__()
        import lpips
        from torchvision.models import alexnet

        fix = "point eval.lpips_weights at torchvision's alexnet state dict (e.g. alexnet-owt-7be5be79.pth)"
        state = load_weights(Path(weights), sha256, what="LPIPS backbone weights", fix=fix)
        backbone = alexnet(weights=None)
        try:
            backbone.load_state_dict(state, strict=True)  # every key and shape, unlike lpips' strict=False
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise UsamError(f"LPIPS backbone weights are not a torchvision AlexNet: {str(exc).splitlines()[0]}",
                            where=str(weights), fix=fix) from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's notice about the `pretrained` argument lpips passes
            self.metric = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
        for i, layer in enumerate(backbone.features):
            for name, slice_ in self.metric.net.named_children():
                if str(i) in slice_._modules:
                    slice_._modules[str(i)].load_state_dict(layer.state_dict())
        self.requires_grad_(False)
        self.eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: (N, 3, H, W) in [0, 1]; returns (N,)."""
        return self.metric(a.float(), b.float(), normalize=True).flatten()


class DomainDistance(nn.Module):
    """LPIPS-style distance on the frame evaluator's feature maps (stem and every residual stage)."""

    label = DOMAIN_LABEL

    def __init__(self, classifier: FrameClassifier, stats: dict):
        super().__init__()
        self.net = classifier.requires_grad_(False).eval()
        mean, std = stats_tensors(stats, (1, -1, 1, 1))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def train(self, mode: bool = True):
        return super().train(False)  # a frozen judge: never in training mode

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.net.stem((x.float() - self.mean) / self.std)  # back to the normalization it was trained on
        maps = [h]
        for block in self.net.blocks:
            h = block(h)
            maps.append(h)
        return maps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: (N, 3, H, W) in [0, 1]; returns (N,)."""
        total = torch.zeros(a.shape[0], device=a.device)
        for fa, fb in zip(self._maps(a), self._maps(b)):
            fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
            fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
            total = total + (fa - fb).pow(2).sum(1).flatten(1).mean(1)
        return total


def load_domain_distance(weights: Path, sha256: str | None, stats: dict) -> DomainDistance:
    """The frame evaluator saved by the ``evaluators`` stage, as a perceptual distance."""
    classifier, _ = load_evaluator("frame", weights, sha256)
    return DomainDistance(classifier, stats)
