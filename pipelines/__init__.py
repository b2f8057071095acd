"""One small module per DVC stage: read params.yaml, call the usam library, write the stage's outs.

A stage gets the paths it reads and writes from its ``cmd`` in dvc.yaml; run by hand without them it
uses the ones ``usam.artifacts.layout`` names (tests/test_dvc_layout.py checks that the two agree).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from usam.artifacts.layout import Layout
from usam.config import Config, load_params
from usam.paths import find_project_root, resolve

PathDefault = Callable[[Layout, argparse.Namespace], Path]


def parse_stage(doc: str, argv: list[str] | None, positionals: dict[str, str],
                paths: dict[str, tuple[PathDefault, str]]) -> tuple[argparse.Namespace, Path, Config, Layout]:
    """The shared preamble of every stage: (arguments, project root, validated params, layout).

    ``positionals``: name -> help; ``paths``: ``--flag`` -> (its default from the layout and the other
    arguments, help). Every path comes back absolute (a relative one is the project's)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, text in positionals.items():
        parser.add_argument(name, help=text, **({"type": _seed} if name == "seed" else {}))
    for flag, (_, text) in paths.items():
        parser.add_argument(f"--{flag}", type=Path, help=f"{text} (default: where the layout keeps it)")
    args = parser.parse_args(argv)
    root = find_project_root()
    cfg = load_params(root / "params.yaml")
    if "seed" in positionals:  # a generator stage of one seed of `seeds`: its run seed
        if args.seed not in cfg.seeds:  # the table and the claims read only the seeds listed there
            parser.error(f"seed {args.seed} is not in seeds {cfg.seeds} (params.yaml): add it there, or pass one of them")
        cfg = dataclasses.replace(cfg, seed=args.seed)
    layout = Layout.of(cfg, root)
    for flag, (default, _) in paths.items():
        dest = flag.replace("-", "_")
        given = getattr(args, dest)
        setattr(args, dest, resolve(given, root) if given else default(layout, args))
    return args, root, cfg, layout


DATASET = {"name": "dataset, one of data.build"}
SEED = {"seed": "the run seed, one of seeds"}


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, not {text!r}")
    return int(text)


def record_weights(client, run_id: str, path: Path, layout: Layout) -> None:
    """Point the run's ``checkpoint.path`` tag at where the stage keeps the weights (project-relative)."""
    client.set_tag(run_id, "checkpoint.path", layout.ref(path))
