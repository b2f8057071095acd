"""Models: torch only. A registry maps config names to constructors, so a model is picked by config."""

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
