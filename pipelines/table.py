"""DVC stage `table`: the comparison table (usam.report.table) from metrics/eval/, written to reports/."""

from __future__ import annotations

from usam.artifacts.layout import Layout
from usam.config import load_params
from usam.errors import main_guard
from usam.paths import find_project_root
from usam.report.table import write


@main_guard
def main(argv: list[str] | None = None) -> None:
    root = find_project_root()
    cfg = load_params(root / "params.yaml")
    print(write(Layout.of(cfg, root), cfg))


if __name__ == "__main__":
    main()
