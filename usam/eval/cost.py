"""What a generator costs: warm latency (median of repeats), FLOPs per sample, and the training record."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_latency(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops_of(fn: Callable[[], object]) -> int:
    """FLOPs counted by torch's FlopCounterMode while ``fn()`` runs (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def training_record(client, run_id: str) -> dict[str, float]:
    """Training seconds and peak memory (MiB; peak RSS on CPU, peak allocated on CUDA) from the MLflow run."""
    run = client.get_run(run_id)
    out = {}
    if "train_seconds" in run.data.metrics:
        out["train_seconds"] = float(run.data.metrics["train_seconds"])
    history = client.get_metric_history(run_id, "train/memory_mb")
    if history:
        out["peak_memory_mb"] = max(m.value for m in history)
    return out
