"""The config tree, its schema and params.yaml."""

from __future__ import annotations

import math

import pytest
import yaml
from conftest import REPO, run

from usam.config import compose, config_hash, flatten, load_params, to_dict, write_params
from usam.config.compose import CONF_DIR, compose_dict
from usam.config.schema import Config
from usam.config.validate import describe
from usam.errors import ConfigError


def test_default_composes_and_every_schema_key_has_exactly_one_default():
    cfg = compose()
    assert isinstance(cfg, Config)
    schema_keys = {row[0] for row in describe(Config)}
    tree_keys = set(flatten(compose_dict()))
    # dict-valued knobs (e.g. source_split, eval.select.grids) flatten deeper in the tree: their longest schema prefix
    prefixes = lambda k: [".".join(k.split(".")[:i]) for i in range(k.count(".") + 1, 0, -1)]  # noqa: E731
    tree_keys = {next((p for p in prefixes(k) if p in schema_keys), k) for k in tree_keys}
    assert tree_keys == schema_keys


def test_params_yaml_is_the_composed_default():
    """params.yaml is what DVC reads; it must equal the tree's composition (regenerate on change)."""
    assert to_dict(load_params(REPO / "params.yaml")) == to_dict(compose()), (
        "params.yaml is stale: run `usam config write-params`"
    )


def test_no_hydra_runtime_interpolations_in_the_tree():
    for path in CONF_DIR.rglob("*.yaml"):
        assert "${hydra:" not in path.read_text(), f"{path} uses ${{hydra:...}}, which DVC cannot resolve"


def test_overrides_change_values_and_the_hash():
    base, changed = compose(), compose(["train.lr=3e-4", "data=bouncing_shapes"])
    assert changed.train.lr == pytest.approx(3e-4)
    assert changed.data.name == "bouncing_shapes"
    assert base.data.moving_digits == changed.data.moving_digits  # the rest is untouched
    assert config_hash(base) == config_hash(compose())
    assert config_hash(base) != config_hash(changed)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=abc", ["train.lr", "'abc'", "> 0.0"]),
        ("train.lr=5", ["train.lr", "5.0", "<= 1.0"]),
        ("train.lr=nan", ["train.lr", "nan"]),
        ("train.lrr=1", ["train.lrr", "did you mean 'train.lr'"]),
        ("data=nope", ["data/nope", "bouncing_shapes, moving_digits, video_folder"]),
        ("train.schedule=cosin", ["train.schedule", "'cosin'", "did you mean 'cosine'"]),
        ("train.runtime.deterministic=maybe", ["train.runtime.deterministic", "true or false"]),
        ("train.batch_size=2.5", ["train.batch_size", "an integer"]),
        ("preprocess.crop_size=64", ["preprocess.crop_size = 64", "crop must fit"]),
        ("data.moving_digits.speed=[3,1]", ["data.moving_digits.speed", "min <= max"]),
        ("data.name=video_folder", ["data.video_folder.root is null", "data.build"]),
        ("model.heads=5", ["model.width = 96", "not divisible"]),
    ],
)
def test_bad_overrides_name_the_key_the_value_and_what_is_allowed(override, expected):
    with pytest.raises(ConfigError) as info:
        compose([override])
    message = str(info.value)
    for text in expected:
        assert text in message, f"{text!r} missing from:\n{message}"
    assert "fix:" in message


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        compose(["train.lr=-1", "train.epochs=0", "eval.batch_size=x"])
    message = str(info.value)
    assert "3 problems" in message
    assert all(k in message for k in ("train.lr", "train.epochs", "eval.batch_size"))


def test_load_params_rejects_missing_unknown_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad_yaml)
    data = to_dict(compose())
    data["train"]["lr_typo"] = 1.0
    del data["train"]["lr"]
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_params(typo)
    assert "train.lr_typo: unknown key; did you mean 'train.lr'" in str(info.value)
    assert "train.lr: missing" in str(info.value)
    assert str(typo) in str(info.value)


def test_write_params_round_trips(tmp_path):
    out = tmp_path / "params.yaml"
    cfg = write_params(out, ["train.lr=1e-4"])
    assert math.isclose(load_params(out).train.lr, 1e-4)
    assert to_dict(load_params(out)) == to_dict(cfg)


def test_cli_config_show_prints_the_resolved_config(tmp_path):
    proc = run(["usam", "config", "show", "train.lr=2e-4", "data=bouncing_shapes"], cwd=tmp_path)
    shown = yaml.safe_load(proc.stdout)
    assert shown["train"]["lr"] == pytest.approx(2e-4)
    assert shown["data"]["name"] == "bouncing_shapes"
    assert f"# config hash: {config_hash(compose(['train.lr=2e-4', 'data=bouncing_shapes']))}" in proc.stdout


def test_cli_bad_override_is_one_clear_error_without_traceback(tmp_path):
    proc = run(["usam", "config", "show", "train.weight_decay=2"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "train.weight_decay = 2.0" in proc.stderr and "<= 1.0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_help_explains_itself(tmp_path):
    proc = run(["usam", "--help"], cwd=tmp_path)
    for command in ("config", "env", "data", "ui"):
        assert command in proc.stdout
    assert "train.lr=2e-4" in proc.stdout
    schema = run(["usam", "config", "schema"], cwd=tmp_path).stdout
    assert "train.lr: a number, > 0.0 and <= 1.0" in schema


def test_the_cli_parser_imports_no_training_stack_and_lists_every_task():
    """`usam --help` answers at once: building the parser must not import torch (it once took 3.6 s)."""
    import subprocess
    import sys

    code = ("import sys; from usam.cli import build_parser; p = build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'usam.train') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
    from usam.config.schema import TASK_NAMES
    from usam.train.baseline_tasks import BASELINE_TASKS
    from usam.train.tasks import TASKS

    assert TASKS == TASK_NAMES == ("evaluator_frame", "evaluator_clip", "tokenizer", "usam", *BASELINE_TASKS)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.moving_digits.digit_size=40", "the digit must fit in the frame"),
        ("data.bouncing_shapes.shape_size=[6,40]", "the largest shape must fit"),
        ("data.moving_digits.source_split={train: 1.0, val: 0.0, test: 0.0}", "every split needs a share > 0"),
        ("preprocess.augment.clip_frames=9", "clip_frames = 9 > data.frames = 8"),
    ],
)
def test_cross_field_rules(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        compose([override])


def test_the_paper_profile_composes_a_consistent_gpu_scale_config(tmp_path):
    from usam.artifacts.layout import Layout
    from usam.errors import DataError
    from usam.train.tasks import make_task

    cfg = compose(["profile=paper"])
    assert cfg.train.runtime.use_gpu and cfg.train.runtime.workers == 8 and cfg.model.width == 1024
    assert cfg.data.frame_size == 64 and cfg.tokenizer.quantizer.scales[-1] == 64 // cfg.tokenizer.arch.spatial_down
    task = make_task("tokenizer", cfg, Layout(tmp_path, tmp_path / "data"))
    with pytest.raises(DataError):  # the schedule tiles the frames: only the (absent) data is missing
        task.check_data()
    assert compose([]).model.width < cfg.model.width


def test_the_tiny_profile_is_what_the_tests_train_and_runs_from_the_command_line(tmp_path):
    from conftest import TINY

    assert to_dict(compose(["profile=tiny"])) == to_dict(compose(TINY))
    tiny = yaml.safe_load(run(["usam", "config", "show", "profile=tiny"], cwd=tmp_path).stdout)
    assert tiny == to_dict(compose(TINY))
    assert tiny["train"]["max_steps"] == 2 and tiny["model"]["depth"] == 1
    assert to_dict(compose()) != tiny  # the default is not tiny


def test_a_retired_key_says_what_replaced_it(tmp_path):
    proc = run(["usam", "config", "show", "model.name=usam"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.name is retired" in proc.stderr and "the task picks the model" in proc.stderr
    old = to_dict(compose())
    old["model"]["name"] = "usam"  # a params.yaml written before the key was retired
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="model.name: retired key; the task picks the model"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("old, new", [
    ("train.workers=2", "use train.runtime.workers"),
    ("tokenizer.train.checkpoint_every=5", "use tokenizer.train.runtime.checkpoint_every"),
    ("evaluator.train.fault_injection_step=3", "use debug.fault_injection_step"),
])
def test_a_moved_key_names_where_it_lives_now(tmp_path, old, new):
    proc = run(["usam", "config", "show", old], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{old.split('=')[0]} is retired; {new}" in proc.stderr
    moved = new.split()[-1]
    assert flatten(to_dict(compose([f"{moved}={old.split('=')[1]}"])))[moved] == yaml.safe_load(old.split("=")[1])


def test_the_recipe_and_where_it_runs_are_apart():
    cfg = compose()
    for recipe in (cfg.train, cfg.evaluator.train, cfg.tokenizer.train):
        assert {"lr", "batch_size", "epochs", "precision"} <= set(to_dict(recipe))
        assert not {"workers", "use_gpu", "threads_per_worker", "fault_injection_step"} & set(to_dict(recipe))
        assert {"workers", "use_gpu", "threads_per_worker", "checkpoint_every"} <= set(to_dict(recipe.runtime))
    assert cfg.debug.fault_injection_step is None


def _bad_outputs(tmp_path):
    """-o paths no file can be written to, each with what the error says about it."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    return [(tmp_path / "nodir" / "out", f"its folder {tmp_path / 'nodir'} does not exist"),
            (tmp_path / "a_file" / "out", f"{tmp_path / 'a_file'} is not a folder"),
            (tmp_path / "a_folder", f"{tmp_path / 'a_folder'} is a folder")]


@pytest.mark.parametrize("case", range(3))
def test_write_params_checks_its_output_path_before_composing(tmp_path, case):
    path, problem = _bad_outputs(tmp_path)[case]
    # a bad override as well: it would be the error if the config were composed first
    proc = run(["usam", "config", "write-params", "-o", str(path), "train.weight_decay=2"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"usam: error: cannot write {path}: {problem}\n  where: -o {path}\n" in proc.stderr
    assert "weight_decay" not in proc.stderr and proc.stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a_file", "a_folder"]
