"""DVC stage `preprocess`: resize, center crop and normalisation statistics for one dataset."""

from __future__ import annotations

import argparse

from usam.config import load_params
from usam.data import dataset_hashes, preprocess_dataset
from usam.errors import main_guard
from usam.paths import find_project_root, resolve
from usam.track import tracked_run


@main_guard
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="dataset to preprocess, one of data.build")
    args = parser.parse_args(argv)
    root = find_project_root()
    cfg = load_params(root / "params.yaml")
    data_root = resolve(cfg.data.root, root)
    raw, out = data_root / "raw" / args.name, data_root / "prepared" / args.name
    with tracked_run(cfg, stage="preprocess", run_name=f"preprocess/{args.name}", root=root) as run:
        record = preprocess_dataset(cfg, raw, out)
        run.log_dict(record, f"datasets/{args.name}/preprocess.json")
        for split, sha in dataset_hashes(out).items():
            run.log_dataset(args.name, split, sha, out / split)
    print(f"preprocess/{args.name}: -> {out}")


if __name__ == "__main__":
    main()
