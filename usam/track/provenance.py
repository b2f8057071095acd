"""Provenance of a run, captured in one place and read by tracking, audit and report alike.

What is captured: git state, the DVC lock entries, seeds, the command line, the
software environment (python, platform, torch/CUDA/cuDNN, every installed package,
the lock file's hash), the hardware and the determinism flags in force.

Secrets never leave this module: environment variables are copied only from an
allowlist, and credentials inside URLs are redacted.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from usam.files import sha256_file
from usam.seeding import determinism_flags

# Variables that shape a run's numerics or placement; nothing else is ever read.
ENV_ALLOWLIST = (
    "CUDA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "PYTHONHASHSEED",
    "NCCL_DEBUG",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_DISABLE",
    "NCCL_P2P_DISABLE",
    "TORCH_HOME",
    "RAY_ADDRESS",
    "MLFLOW_TRACKING_URI",
)

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """Drop ``user:password@`` from every URL inside ``text``."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)




def git(root: Path, *args: str) -> str | None:
    """stdout of ``git args`` in ``root``, or None when git fails or is missing: callers decide what a
    missing answer means (an unrecorded commit, a check that cannot run)."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(root: Path) -> dict[str, Any]:
    """Commit, branch, dirty flag and the dirty paths (capped) of the repository at ``root``."""
    commit = git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None, "dirty_files": [], "remote": None}
    # Tracked paths with uncommitted changes, staged or not (NUL-separated: no quoting, no status column).
    changed = git(root, "diff", "--name-only", "-z", "HEAD") or ""
    dirty_files = [path for path in changed.split("\0") if path]
    remote = git(root, "config", "--get", "remote.origin.url")
    return {
        "commit": commit,
        "branch": git(root, "rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(dirty_files),
        "dirty_files": dirty_files[:100],
        "remote": redact(remote) if remote else None,
    }


def dvc_lock_entries(root: Path) -> dict[str, Any]:
    """Per stage, the md5 of every dep and out recorded in ``dvc.lock`` (empty when absent)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {"sha256": None, "stages": {}}
    data = yaml.safe_load(lock.read_text()) or {}
    stages = {}
    for name, stage in (data.get("stages") or {}).items():
        stages[name] = {
            kind: {e["path"]: e.get("md5") or e.get("hash") for e in stage.get(kind, []) if "path" in e}
            for kind in ("deps", "outs")
        }
    return {"sha256": sha256_file(lock), "stages": stages}


def installed_packages() -> dict[str, str]:
    """name -> version of every distribution importable from this interpreter."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[normalize_name(name)] = dist.version
    return dict(sorted(out.items()))


def normalize_name(name: str) -> str:
    """PEP 503 normalisation, so `Pillow`, `pillow` and `PIL-low` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None,
        "machine": platform.machine(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_bytes": props.total_memory})
    return info


def software(root: Path) -> dict[str, Any]:
    import torch

    lock = root / "environment.lock"
    try:
        cudnn = torch.backends.cudnn.version()
    except Exception:  # cuDNN missing on a CPU-only build
        cudnn = None
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "lock_file_sha256": sha256_file(lock) if lock.is_file() else None,
        "packages": installed_packages(),
    }


def allowed_environ() -> dict[str, str]:
    return {k: redact(os.environ[k]) for k in ENV_ALLOWLIST if k in os.environ}


def capture(root: Path, *, seeds: dict[str, int]) -> dict[str, Any]:
    """Everything needed to say later whether this run can be replayed."""
    return {
        "command": redact(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])),
        "cwd_relative_to_project": os.path.relpath(Path.cwd(), root),
        "git": git_state(root),
        "dvc": dvc_lock_entries(root),
        "seeds": seeds,
        "software": software(root),
        "hardware": hardware(),
        "determinism": determinism_flags(),
        "environ": allowed_environ(),
    }
