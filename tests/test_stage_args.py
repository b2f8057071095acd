"""The stages' shared preamble (pipelines/__init__.py): a seed outside `seeds` is one argparse error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def parse(empty_project, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # DVC runs the stages from the project root, where `pipelines` lives
    from pipelines import SEED, parse_stage

    shutil.copy(REPO / "params.yaml", empty_project / "params.yaml")
    return lambda argv: parse_stage("doc", argv, SEED, {})


def test_a_listed_seed_becomes_the_run_seed(parse):
    from usam.config import load_params

    seeds = load_params(REPO / "params.yaml").seeds
    _, _, cfg, _ = parse([str(seeds[-1])])
    assert cfg.seed == seeds[-1] and cfg.seeds == seeds


@pytest.mark.parametrize("seed, told", [("7", "seed 7 is not in seeds"), ("x", "a seed is a non-negative integer")])
def test_a_seed_outside_seeds_is_one_clear_error(parse, capsys, seed, told):
    with pytest.raises(SystemExit) as exit_:
        parse([seed])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert told in err and "Traceback" not in err
