"""Seeding in one place: every RNG a run touches is derived from one integer.

``seed_everything`` covers python, numpy and torch (CPU and CUDA) and the
deterministic-algorithms switch; ``dataloader_generator`` and ``worker_init_fn`` make
DataLoader shuffling and worker-side augmentation follow the same seed.
``derive_seed`` gives independent, stable sub-seeds (per dataset, split, worker).
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch


def derive_seed(seed: int, *names: object) -> int:
    """A stable 63-bit seed for ``names`` under ``seed`` (independent of PYTHONHASHSEED)."""
    text = "/".join([str(seed), *map(str, names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seed_everything(seed: int, *, deterministic: bool = False) -> dict[str, object]:
    """Seed python, numpy and torch; optionally force deterministic kernels.

    Returns what was set, so the caller can record it with the run.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    set_deterministic(deterministic)
    return {"seed": seed, **determinism_flags()}


def set_deterministic(enabled: bool) -> None:
    """Deterministic algorithms, no cuDNN autotuning, no TF32: bit-exact re-runs on one machine."""
    if enabled:
        # cuBLAS needs a fixed workspace for deterministic GEMMs; it is read at CUDA init.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    # Deterministic mode also fills every new uninitialized tensor with NaN (a debugging aid that catches a
    # kernel reading memory it never wrote): a fifth of a CPU training step's time, and no kernel here reads
    # such memory, so the weights are bit-identical without it.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled and torch.backends.cudnn.benchmark
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def determinism_flags() -> dict[str, object]:
    """The flags in force now (recorded with every run and read by the audit)."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "torch_num_threads": torch.get_num_threads(),
    }


def dataloader_generator(seed: int, *names: object) -> torch.Generator:
    """A torch.Generator for DataLoader shuffling, derived from the run seed."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, "dataloader", *names))
    return g


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and python in each DataLoader worker from torch's per-worker seed.

    torch already gives each worker ``base_seed + worker_id`` (base_seed drawn from the
    DataLoader's generator), so seeding from it keeps workers distinct and reproducible.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
