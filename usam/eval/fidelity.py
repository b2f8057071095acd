"""Sample fidelity through torch-fidelity: FID, IS, KID and precision/recall on frames, FVD-domain on clips.

The features come from the in-project domain evaluators (``evaluators`` stage), registered as
torch-fidelity feature extractors whose name carries everything that changes the features (the
evaluator kind, the weights' sha256 and the input normalisation's mean and std), so neither a
feature cache nor an earlier registration can stand in for other weights or another
normalisation. Scores are labelled by what they were computed on: ``fid_domain``, ``is_domain``,
... on the frame evaluator; ``fvd_domain`` on the clip evaluator. None is comparable with
published Inception/I3D numbers. Standard Inception FID/IS run only when ``eval.inception_weights``
names a local file (sha256 checked); nothing is ever downloaded, and a requested metric whose
weights are missing is an error, never a silent fallback to another metric under the same name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch.utils.data import Dataset

from usam.artifacts.loaders import load_evaluator
from usam.artifacts.weights import verified_file
from usam.data.dataset import stats_tensors
from usam.errors import UsamError

FEATURES, LOGITS = "features", "logits"
_NETS: dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = {}  # extractor name -> (net, mean, std)


class Uint8Set(Dataset):
    """Frames (N, 3, H, W) or clips (N, 3, T, H, W) as the uint8 tensors torch-fidelity reads."""

    def __init__(self, items: torch.Tensor):
        if items.dtype != torch.uint8:
            items = (items.float().clamp(0, 1) * 255).round().to(torch.uint8)
        self.items = items

    def __len__(self) -> int:
        return self.items.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i]


def _extractor_class():
    from torch_fidelity import FeatureExtractorBase

    class DomainExtractor(FeatureExtractorBase):
        """A domain evaluator as a torch-fidelity extractor: penultimate features and class logits."""

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net, mean, std = _NETS[name]
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        @staticmethod
        def get_provided_features_list():
            return FEATURES, LOGITS

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return LOGITS if metric == "isc" else FEATURES

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

        def forward(self, x):
            x = (x.float() / 255.0 - self.mean) / self.std
            feats = self.net.features(x)
            out = {FEATURES: feats, LOGITS: self.net.head(feats)}
            return tuple(out[name] for name in self.features_list)

    return DomainExtractor


def extractor_name(kind: str, sha256: str, mean: torch.Tensor, std: torch.Tensor) -> str:
    """``usam-domain-<kind>-<weights sha256[:16]>-<12 hex of a sha256 over the kind, the full weights sha256 and
    the float32 mean and std>``: one name per evaluator kind, weights and normalisation."""
    digest = hashlib.sha256()
    for part in (kind.encode(), sha256.encode(), mean.float().contiguous().numpy().tobytes(),
                 std.float().contiguous().numpy().tobytes()):
        digest.update(len(part).to_bytes(8, "little") + part)
    return f"usam-domain-{kind}-{sha256[:16]}-{digest.hexdigest()[:12]}"


def register_domain_extractor(kind: str, weights: Path, sha256: str | None, normalize: dict) -> str:
    """Register the ``kind`` ("frame" or "clip") evaluator with torch-fidelity; returns the extractor name,
    which differs for other weights or another normalisation (:func:`extractor_name`)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    net, sha = load_evaluator(kind, weights, sha256)
    view = (1, -1, 1, 1) if kind == "frame" else (1, -1, 1, 1, 1)
    mean, std = stats_tensors(normalize, view)
    name = extractor_name(kind, sha, mean, std)
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        _NETS[name] = (net, mean, std)
        register_feature_extractor(name, _extractor_class())
    return name


def check_sets(real: torch.Tensor, fake: torch.Tensor, *, kid_subset: int, what: str, prc: bool) -> None:
    """Shapes that torch-fidelity would mis-handle or reject deep inside: say so first. ``prc``: whether
    precision/recall will be computed (it needs at least 4 items per set)."""
    if real.shape[1:] != fake.shape[1:]:
        raise UsamError(f"{what}: real items are {tuple(real.shape[1:])}, generated ones {tuple(fake.shape[1:])}",
                        where=what, fix="generate at the dataset's resolution and frame count (or resize both first)")
    smallest = min(real.shape[0], fake.shape[0])
    if smallest < kid_subset:
        raise UsamError(f"{what}: KID subsets of {kid_subset} need at least {kid_subset} items per set, "
                        f"got {smallest}", where=what, fix=f"sample at least {kid_subset} videos "
                        f"(eval.num_samples) or lower the KID subset size")
    if prc and smallest < 4:
        raise UsamError(f"{what}: {smallest} items are too few for precision/recall (3 nearest neighbours)",
                        where=what, fix="sample more videos (eval.num_samples)")


def fidelity(real: torch.Tensor, fake: torch.Tensor, extractor: str, *, label: str, kid_subset: int = 50,
             isc: bool = True, prc: bool = True) -> dict[str, float]:
    """Scores of ``fake`` against ``real`` (uint8 or [0, 1] float), keyed ``<metric>_<label>``."""
    from torch_fidelity import calculate_metrics

    check_sets(real, fake, kid_subset=kid_subset, what=label, prc=prc)
    raw = calculate_metrics(input1=Uint8Set(fake), input2=Uint8Set(real), cuda=False, cache=False, verbose=False,
                            save_cpu_ram=True, feature_extractor=extractor, fid=True, kid=True, isc=isc, prc=prc,
                            kid_subset_size=kid_subset, isc_splits=min(10, fake.shape[0] // 2), batch_size=64)
    names = {"frechet_inception_distance": "fid", "kernel_inception_distance_mean": "kid",
             "kernel_inception_distance_std": "kid_std", "inception_score_mean": "is", "inception_score_std": "is_std",
             "precision": "precision", "recall": "recall", "f_score": "f_score"}
    return {f"{names[k]}_{label}": float(v) for k, v in raw.items() if k in names}


def frames_of(videos: torch.Tensor) -> torch.Tensor:
    """(N, 3, T, H, W) -> (N*T, 3, H, W)."""
    n, c, t, h, w = videos.shape
    return videos.transpose(1, 2).reshape(n * t, c, h, w)


def inception_scores(real: torch.Tensor, fake: torch.Tensor, weights: str | Path, sha256: str | None,
                     *, kid_subset: int = 50) -> dict[str, float]:
    """Standard Inception-v3 FID/IS/KID on frames, from a local weights file (checked; never downloaded)."""
    from torch_fidelity import calculate_metrics

    path = verified_file(Path(weights), sha256, "Inception-v3 weights (eval.inception_weights)",
                         "point eval.inception_weights at torch-fidelity's pt_inception-2015-12-05 file, "
                         "or set it to null to report the domain metrics only")
    check_sets(real, fake, kid_subset=kid_subset, what="inception", prc=False)
    raw = calculate_metrics(input1=Uint8Set(fake), input2=Uint8Set(real), cuda=False, cache=False, verbose=False,
                            save_cpu_ram=True, feature_extractor="inception-v3-compat",
                            feature_extractor_weights_path=str(path), fid=True, isc=True, kid=True,
                            kid_subset_size=kid_subset)
    return {"fid_inception": float(raw["frechet_inception_distance"]),
            "is_inception": float(raw["inception_score_mean"]),
            "kid_inception": float(raw["kernel_inception_distance_mean"])}


def video_fidelity(real: torch.Tensor, fake: torch.Tensor, frame_extractor: str, clip_extractor: str,
                   *, kid_subset: int = 50) -> dict[str, float]:
    """Frame scores (``*_domain``) and clip scores (``fvd_domain``, ``kvd_domain``) for video sets in [0, 1]."""
    scores = fidelity(frames_of(real), frames_of(fake), frame_extractor, label="domain", kid_subset=kid_subset)
    clip = fidelity(real, fake, clip_extractor, label="clip", kid_subset=min(kid_subset, real.shape[0], fake.shape[0]),
                    isc=False, prc=False)
    scores["fvd_domain"] = clip.pop("fid_clip")
    scores["kvd_domain"] = clip.pop("kid_clip")
    return scores
