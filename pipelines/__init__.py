"""One small module per DVC stage: read params.yaml, call the usam library, write the stage's outs."""

from __future__ import annotations

import argparse
from pathlib import Path

from usam.config import Config, load_params
from usam.paths import find_project_root


def dataset_stage(doc: str, argv: list[str] | None = None) -> tuple[str, Path, Config]:
    """The shared preamble of the per-dataset stages: (dataset name, project root, validated params)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("name", help="dataset, one of data.build")
    name = parser.parse_args(argv).name
    root = find_project_root()
    return name, root, load_params(root / "params.yaml")


def evaluator_weights(root: Path, name: str, kind: str) -> tuple[Path, str]:
    """The ``kind`` (frame or clip) evaluator of dataset ``name`` and its recorded sha256."""
    import json

    report = json.loads((root / "metrics" / "evaluators" / f"{name}.json").read_text())
    return root / "models" / "evaluators" / name / f"{kind}.pt", report[kind]["weights_sha256"]


def record_weights(client, run_id: str, path: Path, root: Path) -> None:
    """Point the run's ``checkpoint.path`` tag at where the stage keeps the weights (project-relative)."""
    path = Path(path).resolve()
    try:
        shown = str(path.relative_to(root.resolve()))
    except ValueError:
        shown = str(path)
    client.set_tag(run_id, "checkpoint.path", shown)
