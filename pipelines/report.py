"""DVC stage `report`: the paper-style report (usam.report.paper) in reports/paper.{md,html}."""

from __future__ import annotations

from usam.config import load_params
from usam.errors import main_guard
from usam.paths import find_project_root
from usam.report.paper import write


@main_guard
def main(argv: list[str] | None = None) -> None:
    root = find_project_root()
    for path in write(root, load_params(root / "params.yaml")):
        print(f"report: {path.relative_to(root)}")


if __name__ == "__main__":
    main()
