"""Training: one harness (Ray Train + DDP) for every model; tasks say what to train."""

from usam.train.trainer import FitResult, ensure_ray, fit, load_weights, with_dataset

__all__ = ["FitResult", "ensure_ray", "fit", "load_weights", "with_dataset"]
