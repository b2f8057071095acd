"""Models: torch only. The tokenizer, quantizer, USAM, the baselines and the evaluator nets;
each a plain module built from its config.

May import: torch and the standard library. A model knows nothing of files, Ray, MLflow or DVC.
"""

from __future__ import annotations

import torch.nn as nn


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
