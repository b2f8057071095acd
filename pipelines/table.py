"""DVC stage `table`: the comparison table (usam.report.table) from metrics/eval/, written to reports/."""

from __future__ import annotations

from usam.config import load_params
from usam.errors import main_guard
from usam.paths import find_project_root
from usam.report.table import write


@main_guard
def main(argv: list[str] | None = None) -> None:
    root = find_project_root()
    print(write(root, load_params(root / "params.yaml")))


if __name__ == "__main__":
    main()
