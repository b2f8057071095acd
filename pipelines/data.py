"""DVC stage `data`: generate (or ingest) one dataset into <data.root>/raw/<name>, with its card."""

from __future__ import annotations

from pipelines import DATASET, parse_stage
from usam.data import build_dataset, dataset_hashes
from usam.errors import main_guard
from usam.track import tracked_run


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, _ = parse_stage(__doc__, argv, DATASET, {
        "out": (lambda layout, a: layout.raw(a.name), "the dataset's folder")})
    name, out = args.name, args.out
    with tracked_run(cfg, stage="data", run_name=f"data/{name}", root=root) as run:
        card = build_dataset(cfg, name, out)
        run.log_dict(card, f"datasets/{name}/card.json")
        for split, sha in dataset_hashes(out).items():
            run.log_dataset(name, split, sha, out / split, card=out / "CARD.md")
    print(f"data/{name}: " + ", ".join(f"{s}={v['count']}" for s, v in card["splits"].items()))


if __name__ == "__main__":
    main()
