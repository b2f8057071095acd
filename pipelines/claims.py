"""DVC stage `claims`: the paper's claims (claims.yaml) graded by usam.report.claims from the per-seed evaluation
records in metrics/eval/ (of the seeds in `seeds`), written to reports/claims.{json,md,html} and the counts per grade
to metrics/claims.json."""

from __future__ import annotations

from pipelines import parse_stage
from usam.errors import main_guard
from usam.report.claims import evaluate, table_text, write


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, _ = parse_stage(__doc__, argv, {}, {
        "spec": (lambda layout, a: layout.root / "claims.yaml", "the claims spec"),
        "records": (lambda layout, a: layout.eval_metrics(), "the evaluation records (metrics/eval)"),
        "out": (lambda layout, a: layout.reports(), "the folder for claims.{json,md,html}"),
        "metrics": (lambda layout, a: layout.metrics() / "claims.json", "the counts per grade, for dvc metrics"),
    })
    spec, graded = evaluate(args.spec, args.records, cfg.seeds)
    print(table_text(graded), end="")
    for path in write(spec, graded, args.records, args.out, args.metrics, root=root):
        print(f"claims: {path.relative_to(root) if path.is_relative_to(root) else path}")


if __name__ == "__main__":
    main()
