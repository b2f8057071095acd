"""Training: one harness for every model. ``fit`` (the driver) runs the loop (``loop``: a step plus hooks) in
this process or on a Ray Train worker group; tasks say what to train (model, data, loss, evaluation).

May import: every layer below it (errors ... track). Never eval, repro, report, tune or the CLI.
"""

from usam.train.trainer import FitResult, ensure_ray, fit, with_dataset

__all__ = ["FitResult", "ensure_ray", "fit", "with_dataset"]
