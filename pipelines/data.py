"""DVC stage `data`: generate (or ingest) one dataset into <data.root>/raw/<name>, with its card."""

from __future__ import annotations

import argparse

from usam.config import load_params
from usam.data import build_dataset, dataset_hashes
from usam.errors import main_guard
from usam.paths import find_project_root, resolve
from usam.track import tracked_run


@main_guard
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="dataset to build, one of data.build")
    args = parser.parse_args(argv)
    root = find_project_root()
    cfg = load_params(root / "params.yaml")
    out = resolve(cfg.data.root, root) / "raw" / args.name
    with tracked_run(cfg, stage="data", run_name=f"data/{args.name}", root=root) as run:
        card = build_dataset(cfg, args.name, out)
        run.log_dict(card, f"datasets/{args.name}/card.json")
        for split, sha in dataset_hashes(out).items():
            run.log_dataset(args.name, split, sha, out / split, card=out / "CARD.md")
    print(f"data/{args.name}: " + ", ".join(f"{s}={v['count']}" for s, v in card["splits"].items()))


if __name__ == "__main__":
    main()
