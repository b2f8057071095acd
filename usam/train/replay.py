"""Pieces of a recorded training run, replayed in this process (what ``usam audit`` checks).

``evaluate_weights`` re-evaluates exported weights on the validation split exactly as the
training loop did at the end of its last epoch; ``short_run`` trains a few optimizer steps
from the seeded initial state through the real loop (``train_worker`` on a ``LocalSession``),
logging nothing, and returns digests of the weights and optimizer state: two calls agree bit
for bit when training is deterministic here.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import torch

from usam.artifacts.layout import Layout
from usam.artifacts.weights import load_weights
from usam.config import Config, to_dict, train_section
from usam.train import checkpoint as ckpt
from usam.train.hooks import validate
from usam.train.loop import WorkerSpec, train_worker
from usam.train.session import LocalSession
from usam.train.tasks import make_task

CPU = torch.device("cpu")


def evaluate_weights(cfg: Config, task_name: str, *, root: Path, weights: Path,
                     sha256: str | None = None) -> dict[str, float]:
    """The ``val_*`` metrics of the weights in ``weights`` (sha256-checked first when given), on one CPU worker."""

    task = make_task(task_name, cfg, Layout.of(cfg, root))
    task.check_data()
    torch.set_num_threads(task.train_cfg.runtime.threads_per_worker)
    model = task.build_model()
    model.load_state_dict(load_weights(weights, sha256)["model"])
    _, val = task.datasets(CPU)
    return validate(task, model, val, task.train_cfg.batch_size, 0, 1, CPU)


def short_run(cfg: Config, task_name: str, *, root: Path, steps: int) -> dict[str, object]:
    """``steps`` optimizer steps of the recorded recipe from its seeded start, in this process on one CPU worker.

    Returns ``steps`` (taken), ``weights`` and ``optimizer`` (sha256 over every tensor, in order) and
    ``metrics`` (the validation after the last step)."""

    data = to_dict(cfg)
    recipe = data
    for part in train_section(task_name).split("."):
        recipe = recipe[part]
    recipe["max_steps"] = steps
    recipe["runtime"].update(checkpoint_every=10**9, workers=1, use_gpu=False, visuals_every=10**6)
    data["debug"]["fault_injection_step"] = None
    with tempfile.TemporaryDirectory(prefix="usam-rerun-") as tmp:
        spec = WorkerSpec(config=data, task=task_name, layout=Layout.of(cfg, root), inputs=None,
                          log_every=10**9, fault_marker=str(Path(tmp) / "fault"),
                          nonfinite_marker=str(Path(tmp) / "nonfinite.json"))
        session = LocalSession(CPU, Path(tmp) / "checkpoints")
        train_worker(spec, session)
        if session.last is None:
            raise RuntimeError("the short run saved no checkpoint")
        metrics, folder = session.last
        shared, _ = ckpt.read(folder, 0)
    return {"steps": int(shared["progress"]["step"]), "weights": ckpt.state_digest(shared["model"]),
            "optimizer": tensor_digest(shared["optimizer"]), "metrics": metrics}


def tensor_digest(obj) -> str:
    """sha256 over every tensor (and plain value) of a nested state, in key order."""
    h = hashlib.sha256()

    def visit(node, key: str) -> None:
        if isinstance(node, torch.Tensor):
            h.update(key.encode())
            h.update(node.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(node, dict):
            for k in sorted(node, key=str):
                visit(node[k], f"{key}/{k}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                visit(v, f"{key}/{i}")
        else:
            h.update(f"{key}={node!r}".encode())

    visit(obj, "")
    return h.hexdigest()
