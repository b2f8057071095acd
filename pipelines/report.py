"""DVC stage `report`: the paper-style report (usam.report.paper) in reports/paper.{md,html}."""

from __future__ import annotations

from usam.artifacts.layout import Layout
from usam.config import load_params
from usam.errors import main_guard
from usam.paths import find_project_root
from usam.report.paper import write


@main_guard
def main(argv: list[str] | None = None) -> None:
    root = find_project_root()
    cfg = load_params(root / "params.yaml")
    for path in write(Layout.of(cfg, root), cfg):
        print(f"report: {path.relative_to(root)}")


if __name__ == "__main__":
    main()
