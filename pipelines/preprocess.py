"""DVC stage `preprocess`: resize, center crop and normalisation statistics for one dataset."""

from __future__ import annotations

from pipelines import DATASET, parse_stage
from usam.data import dataset_hashes, preprocess_dataset
from usam.errors import main_guard
from usam.track import tracked_run


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, _ = parse_stage(__doc__, argv, DATASET, {
        "raw": (lambda layout, a: layout.raw(a.name), "the dataset as the `data` stage wrote it"),
        "out": (lambda layout, a: layout.prepared(a.name), "the prepared dataset's folder")})
    name, raw, out = args.name, args.raw, args.out
    with tracked_run(cfg, stage="preprocess", run_name=f"preprocess/{name}", root=root) as run:
        record = preprocess_dataset(cfg, raw, out)
        run.log_dict(record, f"datasets/{name}/preprocess.json")
        for split, sha in dataset_hashes(out).items():
            run.log_dataset(name, split, sha, out / split)
    print(f"preprocess/{name}: -> {out}")


if __name__ == "__main__":
    main()
