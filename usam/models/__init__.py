"""Models: torch only. The tokenizer, quantizer, USAM, the baselines and the evaluator nets; a registry maps
config names to constructors, so a model is picked by config.

May import: torch and the standard library. A model knows nothing of files, Ray, MLflow or DVC.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(cls):
        REGISTRY[name] = cls
        return cls

    return wrap


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name](**kwargs)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from usam.models import evaluators, raster_ar, tokenizer, usam  # noqa: E402,F401  (registers the models)
